"""Writing a finished setup: the box's secrets in its data folder, then the site file.

The secrets come first and the site file last, and the progress file is
removed only after both, so a setup interrupted while writing resumes and
writes again. Broker passwords and the token signing key are created the
way ``nightbox run`` creates them, and kept when they already exist.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from appliance.config import SiteConfig, parse_config
from appliance.console.pin import PinFile, pin_path
from appliance.service_host import credentials_for
from appliance.tokens import load_or_create_key
from provisioning.secret_file import write_file_atomically
from provisioning.site_access import ReaderGrant, site_policy
from tui.setup._document import build_document, render_toml, zone_names
from tui.setup._progress import SetupValues, progress_path

_LOGGER = logging.getLogger(__name__)


class SetupError(ValueError):
    """The setup cannot write its files; the message states why and what to do."""


def overwrite_refusal(config_path: Path) -> str | None:
    """Return why ``config_path`` must not be written, or None when it may be.

    An existing file may be replaced only when an unfinished setup of the
    same path left its progress file, because only then did this wizard
    write it.
    """
    if config_path.is_dir():
        return f"{config_path} is a folder; give the path of the site file to write"
    if config_path.exists() and not progress_path(config_path).exists():
        return (
            f"{config_path} already exists and was not written by an unfinished "
            "setup; move it away or choose another path, so it is not overwritten"
        )
    return None


def site_file_text(values: SetupValues) -> str:
    """Return the commented TOML of the site file for ``values``."""
    return render_toml(build_document(values), zone_names(values.zones))


def write_setup(config_path: Path, values: SetupValues, pin: str) -> SiteConfig:
    """Write the data folder's secrets and the site file; remove the progress file.

    Raises SetupError when the file must not be overwritten or the values
    do not load, and OSError when a file cannot be written.
    """
    refusal = overwrite_refusal(config_path)
    if refusal is not None:
        raise SetupError(refusal)
    text = site_file_text(values)
    try:
        config = parse_config(tomllib.loads(text), base_dir=config_path.parent)
    except ValueError as err:
        raise SetupError(f"the site file would not load: {err}") from err
    _write_secrets(config, pin)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(config_path, text.encode(), 0o644)
    progress_path(config_path).unlink(missing_ok=True)
    _LOGGER.info(
        "Setup wrote site %s (box %s) to %s", config.site_id, config.box_id, config_path
    )
    return config


def _write_secrets(config: SiteConfig, pin: str) -> None:
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
        config.commerce.terminals,
    )
    credentials_for(config).ensure(policy.usernames)
    load_or_create_key(config.data_dir / "secrets" / "edge-token-key.pem")
    PinFile(pin_path(config.data_dir)).set(pin)
