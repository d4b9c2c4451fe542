"""The ``[assets]`` table of the site configuration: the asset cache's budget.

The table is optional. Without it the cache keeps up to 2 GiB of blobs and
imports no USB folder at start. Every value is checked here, so a typing
error stops ``nightbox run`` with the key, the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._toml_values import is_whole_number, reject_unknown, table
from appliance.errors import ConfigError

ASSETS_KEYS = {"budget_bytes", "preload_dir"}
DEFAULT_BUDGET_BYTES = 2 * 1024**3
# A budget under 1 MiB cannot hold one textured model, and one above 1 TiB
# is a typing error on a pocket box.
MIN_BUDGET_BYTES = 1024**2
MAX_BUDGET_BYTES = 1024**4


@dataclass(frozen=True, slots=True)
class AssetsConfig:
    """The asset cache's size budget and the USB folder imported at start.

    A manifest's own ``budget_bytes`` can lower ``budget_bytes``, never
    raise it.
    """

    budget_bytes: int = DEFAULT_BUDGET_BYTES
    preload_dir: Path | None = None


def parse_assets_config(
    raw: dict[str, Any], *, base_dir: Path | None = None
) -> AssetsConfig:
    """Return the ``[assets]`` table of a parsed site file, with defaults.

    A relative ``preload_dir`` resolves from ``base_dir`` (the folder of the
    site file), or from the working directory without one. Raises
    ConfigError naming the key, the value and the fix.
    """
    section = table(raw, "assets", required=False)
    reject_unknown(section, "assets", ASSETS_KEYS)
    return AssetsConfig(
        budget_bytes=_budget(section),
        preload_dir=_preload_dir(section, base_dir),
    )


def _budget(section: dict[str, Any]) -> int:
    value = section.get("budget_bytes", DEFAULT_BUDGET_BYTES)
    if not is_whole_number(value, MIN_BUDGET_BYTES, MAX_BUDGET_BYTES):
        raise ConfigError(
            f"assets.budget_bytes = {value!r:.40} is invalid; give a whole number "
            f"of bytes from {MIN_BUDGET_BYTES} (1 MiB) to {MAX_BUDGET_BYTES} "
            "(1 TiB), such as 2147483648 for 2 GiB"
        )
    return value


def _preload_dir(section: dict[str, Any], base_dir: Path | None) -> Path | None:
    if "preload_dir" not in section:
        return None
    value = section["preload_dir"]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"assets.preload_dir = {value!r:.60} is invalid; give the path of the "
            "USB folder that holds manifest.json as a string, or remove the key"
        )
    if "\x00" in value:
        raise ConfigError(
            f"assets.preload_dir = {value!r:.60} contains a NUL character; give "
            "a plain path"
        )
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path
