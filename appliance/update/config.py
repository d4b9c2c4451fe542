"""The ``[update]`` table of the site configuration: slots, key, health check.

Every key has a default that matches the box's image, so a site file needs
the table only to move the slots or to change the health check::

    [update]
    app_dir = "/var/lib/nightbox/app"
    public_key = "/etc/nightbox/update-key.pub"
    health_timeout_s = 90
    restart_command = ["systemctl", "restart", "nightbox.service"]
    updates_dir = "/var/lib/nightbox/updates"
    bundle_dirs = ["/var/lib/nightbox/updates", "/media"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance._toml_values import number, reject_unknown, string, table
from appliance.errors import ConfigError
from appliance.image.layout import (
    APP_DIR_NAME,
    STATE_DIR,
    UPDATE_KEY_FILE,
    UPDATES_DIR_NAME,
)

UPDATE_KEYS = {
    "app_dir",
    "public_key",
    "health_timeout_s",
    "restart_command",
    "updates_dir",
    "bundle_dirs",
}
DEFAULT_RESTART_COMMAND = ("systemctl", "restart", "nightbox.service")
# USB sticks are mounted under /media by udisks and by the image's
# automount rule, so a technician can hand the box a bundle on a stick.
USB_MOUNT_DIR = Path("/media")
# A box on a Raspberry Pi 4 starts in about 10 s. The health check also
# waits for the restart command, so the default leaves room for a slow card.
DEFAULT_HEALTH_TIMEOUT_S = 90.0
MAX_HEALTH_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Settings of the updater: slot and bundle folders, the key, the health check.

    ``restart_command`` runs as root after the switch to a new slot and
    after a switch back. ``bundle_dirs`` are the folders that the remote
    command ``update`` takes bundles from.
    """

    app_dir: Path = STATE_DIR / APP_DIR_NAME
    public_key: Path = UPDATE_KEY_FILE
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    restart_command: tuple[str, ...] = DEFAULT_RESTART_COMMAND
    updates_dir: Path = STATE_DIR / UPDATES_DIR_NAME
    bundle_dirs: tuple[Path, ...] = field(
        default=(STATE_DIR / UPDATES_DIR_NAME, USB_MOUNT_DIR)
    )


def parse_update(raw: dict[str, Any], *, base_dir: Path) -> UpdateConfig:
    """Return the ``[update]`` table; relative paths resolve from ``base_dir``."""
    section = table(raw, "update", required=False)
    reject_unknown(section, "update", UPDATE_KEYS)
    defaults = UpdateConfig()
    updates_dir = _path(section, "updates_dir", defaults.updates_dir, base_dir)
    bundle_dirs = defaults.bundle_dirs
    if "updates_dir" in section:
        bundle_dirs = (updates_dir, USB_MOUNT_DIR)
    if "bundle_dirs" in section:
        bundle_dirs = _bundle_dirs(section["bundle_dirs"], base_dir)
    return UpdateConfig(
        app_dir=_path(section, "app_dir", defaults.app_dir, base_dir),
        public_key=_path(section, "public_key", defaults.public_key, base_dir),
        health_timeout_s=number(
            section,
            "update.health_timeout_s",
            DEFAULT_HEALTH_TIMEOUT_S,
            minimum=1.0,
            maximum=MAX_HEALTH_TIMEOUT_S,
        ),
        restart_command=_restart_command(section),
        updates_dir=updates_dir,
        bundle_dirs=bundle_dirs,
    )


def _path(section: dict[str, Any], key: str, default: Path, base_dir: Path) -> Path:
    if key not in section:
        return default
    text = string(section, f"update.{key}")
    if not text.strip():
        raise ConfigError(f"update.{key} is empty; give a folder or remove the key")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def _restart_command(section: dict[str, Any]) -> tuple[str, ...]:
    value = section.get("restart_command", list(DEFAULT_RESTART_COMMAND))
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise ConfigError(
            f"update.restart_command = {value!r:.80} is invalid; give the command "
            'as an array of non-empty strings, such as ["systemctl", "restart", '
            '"nightbox.service"]'
        )
    return tuple(value)


def _bundle_dirs(value: Any, base_dir: Path) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item.strip() for item in value
    ):
        raise ConfigError(
            f"update.bundle_dirs = {value!r:.80} is invalid; give an array of "
            'folders, such as ["/var/lib/nightbox/updates", "/media"]'
        )
    folders = []
    for text in value:
        path = Path(text).expanduser()
        folders.append(path if path.is_absolute() else base_dir / path)
    return tuple(folders)
