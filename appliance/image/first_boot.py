"""The box's first boot: its identity, keys, broker files and a grown data partition.

``nightbox image first-boot`` runs as root from ``nightbox-first-boot.service``
on every boot, before mosquitto and the box. On the first one it writes,
under the state folder (the data partition):

1. ``site.toml``: a generated box id, a placeholder site id and the system
   broker listening on every interface at port 1883 (readers reach it over
   Wi-Fi), a file that ``nightbox run`` accepts as it is.
2. ``site.toml.setup.json``: the setup wizard's progress with the box id
   filled in, so the console on tty1 opens the wizard. The wizard requests
   the site and the admin PIN, and it may replace the site file.
3. ``data/secrets/``: the broker passwords of every account of the site,
   the edge token signing key and the portal's band code key.
4. ``broker/``: mosquitto.conf, the password file and the ACL.
5. ``first-boot.json``, last, once everything above is synced to disk.

Every file is written atomically and every step keeps what an earlier run
wrote, so a run cut short is completed by the next one, and a run after
``first-boot.json`` changes nothing. No admin PIN is set: the technician
chooses it in the setup wizard, so no box ships with a known PIN.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import pwd
import secrets
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance.bus._system_broker import site_access_policy, site_broker_files
from appliance.config import SiteConfig, load_config
from appliance.errors import ConfigError, NightboxError
from appliance.image.grow import GrowError, GrowResult, grow_state_partition
from appliance.image.layout import (
    BROKER_HOST,
    BROKER_PORT,
    SERVICE_USER,
    STATE_DIR,
    BoxLayout,
)
from appliance.portal.band_codes import band_key_path, load_band_key
from appliance.tokens import load_or_create_key
from provisioning import SiteCredentials, secret_file

_LOGGER = logging.getLogger(__name__)

# The first line of a site file that first boot wrote. Only such a file gets
# the setup wizard's progress file, so a site file written by hand is kept.
SITE_FILE_HEADER = "# Written by 'nightbox image first-boot'."
PLACEHOLDER_READER = "exit-1"
_MARKER_VERSION = 1


class FirstBootError(NightboxError):
    """First boot cannot run; the message names the file or folder and the fix."""


@dataclass(slots=True)
class FirstBootResult:
    """The outcome of one first-boot run: the box's ids and the files written."""

    box_id: str
    site_id: str
    already_done: bool
    written: list[Path] = field(default_factory=list)
    grow: GrowResult | None = None
    grow_error: str | None = None
    # True while site.toml is the one first boot wrote, before the wizard ran.
    placeholder: bool = True
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """Return lines for people: what was written and the next step."""
        lines = []
        if self.grow is not None:
            lines.append(f"Data partition: {self.grow.message}")
        if self.grow_error is not None:
            lines.append(f"Data partition not grown: {self.grow_error}")
        if self.already_done:
            lines.append(
                f"First boot already done for box {self.box_id} (site "
                f"{self.site_id}); nothing to do."
            )
            return lines
        lines += [f"Wrote {path}" for path in self.written]
        lines += [f"Warning: {warning}" for warning in self.warnings]
        if self.placeholder:
            lines.append(
                f"First boot done: box {self.box_id}, placeholder site "
                f"{self.site_id}. Set the site and the admin PIN in the setup "
                "wizard on the console (tty1)."
            )
        else:
            lines.append(
                f"First boot done: box {self.box_id}, site {self.site_id}; the "
                "site file that was already set up was kept."
            )
        return lines


def run_first_boot(
    state_dir: Path = STATE_DIR, *, grow: bool = True
) -> FirstBootResult:
    """Create the box's identity, keys and broker files under ``state_dir``.

    Raises FirstBootError, before anything is written, when the state folder
    cannot be used or an existing site file or marker cannot be read. A data
    partition that cannot be grown is logged and reported in the result;
    the box runs on the smaller partition.
    """
    layout = BoxLayout(state_dir)
    _check_state_dir(state_dir)
    marker = _read_marker(layout.first_boot_file)
    if marker is not None:
        # The site file is not read: after setup it is the site's own, and
        # a mistake in it is for `nightbox run` to report.
        result = FirstBootResult(marker["box_id"], marker["site_id"], True)
        _grow(result, state_dir, enabled=grow)
        _LOGGER.info("First boot already done for box %s", result.box_id)
        return result
    config = _load_site(layout.site_file) if layout.site_file.exists() else None
    _check_secrets(layout.data_dir if config is None else config.data_dir)
    if config is None:
        config = _write_site_file(layout)
        written = [layout.site_file]
    else:
        written = []
    result = FirstBootResult(config.box_id, config.site_id, False, written)
    result.placeholder = _written_by_first_boot(layout.site_file)
    _check_service_user(result)
    _grow(result, state_dir, enabled=grow)
    try:
        _write_box_files(layout, config, result)
    except OSError as err:
        raise FirstBootError(
            f"first boot could not write in {state_dir}: {err}; free space or fix "
            "the folder's permissions and run 'nightbox image first-boot' again"
        ) from err
    _LOGGER.info(
        "First boot done for box %s (%s site %s)",
        config.box_id,
        "placeholder" if result.placeholder else "set-up",
        config.site_id,
    )
    return result


def _check_service_user(result: FirstBootResult) -> None:
    """Warn when root runs first boot on a system without the service user."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        warning = (
            f"there is no user {SERVICE_USER!r}, so the files stay owned by root "
            f"and a box running as {SERVICE_USER!r} cannot read them; on the "
            f"image the user exists. Create it (useradd --system {SERVICE_USER}), "
            "move first-boot.json away and run first boot again"
        )
        _LOGGER.warning("First boot: %s", warning)
        result.warnings.append(warning)


def _write_box_files(
    layout: BoxLayout, config: SiteConfig, result: FirstBootResult
) -> None:
    if _written_by_first_boot(layout.site_file):
        _write_setup_progress(layout, config, result)
    _own(layout.site_file)
    _make_folder(config.data_dir, 0o700, result)
    _write_secrets(config, result)
    if config.broker.mode == "system":
        files = site_broker_files(config)
        result.written.extend(files.changed)
    else:
        _LOGGER.warning(
            "%s has broker.mode = %r, so no files for the system mosquitto are "
            "written; mosquitto.service cannot start without them",
            layout.site_file,
            config.broker.mode,
        )
    _make_folder(layout.updates_dir, 0o750, result)
    # journald, NetworkManager and BlueZ run as root, so these stay root's.
    _make_folder(layout.journal_dir, 0o755, result, service_owned=False)
    _make_folder(layout.network_dir, 0o700, result, service_owned=False)
    _make_folder(layout.bluetooth_dir, 0o700, result, service_owned=False)
    # Everything above must be on disk before the marker records it as done.
    os.sync()
    _write_marker(layout, config)
    result.written.append(layout.first_boot_file)


def _check_state_dir(state_dir: Path) -> None:
    if not state_dir.exists():
        raise FirstBootError(
            f"state folder {state_dir} does not exist; mount the data partition "
            f"there (label nbdata) or pass --state-dir with an existing folder"
        )
    if not state_dir.is_dir():
        raise FirstBootError(
            f"state folder {state_dir} is not a directory; pass --state-dir with "
            "the folder the data partition is mounted on"
        )
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise FirstBootError(
            f"state folder {state_dir} is not writable by this user; run "
            "'nightbox image first-boot' as root, or check that the data "
            "partition is not mounted read-only"
        )


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise FirstBootError(
            f"cannot read {path}: {err}; move it away to run first boot again "
            "(the keys already made are kept)"
        ) from err
    try:
        marker = json.loads(text)
    except json.JSONDecodeError as err:
        raise FirstBootError(
            f"{path} is not valid JSON ({err}); move it away to run first boot "
            "again (the keys already made are kept)"
        ) from err
    if not (
        isinstance(marker, dict)
        and isinstance(marker.get("box_id"), str)
        and isinstance(marker.get("site_id"), str)
    ):
        raise FirstBootError(
            f"{path} has no box_id and site_id strings; move it away to run first "
            "boot again (the keys already made are kept)"
        )
    return marker


def _check_secrets(data_dir: Path) -> None:
    """Raise FirstBootError when a secret that is already there cannot be read.

    Each loader only reads a file that exists, so this writes nothing.
    """
    credentials_path = data_dir / "secrets" / "broker.json"
    token_key_path = data_dir / "secrets" / "edge-token-key.pem"
    try:
        if credentials_path.exists():
            SiteCredentials(credentials_path)
        if token_key_path.exists():
            load_or_create_key(token_key_path)
        if band_key_path(data_dir).exists():
            load_band_key(data_dir)
    except (NightboxError, ValueError) as err:
        raise FirstBootError(f"{err}; nothing was changed") from err


def _load_site(path: Path) -> SiteConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        raise FirstBootError(
            f"the site file is invalid: {err}. Fix it, or move it away so first "
            "boot writes a new one; nothing was changed"
        ) from err


def _write_site_file(layout: BoxLayout) -> SiteConfig:
    suffix = secrets.token_hex(3)
    text = render_site_file(f"box-{suffix}", f"site-{suffix}")
    secret_file.write_file_atomically(layout.site_file, text.encode(), 0o644)
    _LOGGER.info("Wrote the box's first site file %s", layout.site_file)
    return _load_site(layout.site_file)


def render_site_file(
    box_id: str, site_id: str, *, host: str = BROKER_HOST, port: int = BROKER_PORT
) -> str:
    """Return the site file of a box that has not been set up yet."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return f"""{SITE_FILE_HEADER}
# Generated on {now}. The setup wizard on the console (tty1) replaces it
# with the site's own settings and requests the admin PIN. Until then the box
# runs as a site with one placeholder exit reader.

[site]
id = "{site_id}"
name = "Unconfigured Nightbox"

[box]
id = "{box_id}"
# The database and the box's secrets, next to this file on the data partition.
data_dir = "data"

[broker]
# system: systemd runs mosquitto with broker/mosquitto.conf, and the box
# writes that file, its password file and ACL when the site's accounts change.
mode = "system"
host = "{host}"
port = {port}
config_dir = "broker"

[[readers]]
# A placeholder until the setup wizard lists the site's exits and kit stations.
id = "{PLACEHOLDER_READER}"
role = "exit"
"""


def _written_by_first_boot(site_file: Path) -> bool:
    try:
        with site_file.open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == SITE_FILE_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def _write_setup_progress(
    layout: BoxLayout, config: SiteConfig, result: FirstBootResult
) -> None:
    # Imported here: the wizard's package loads Textual, which no other step needs.
    from tui.setup._progress import SetupValues, progress_path, save_progress

    path = progress_path(layout.site_file)
    if path.exists():
        return
    values = SetupValues(
        box_id=config.box_id,
        generated_box_id=config.box_id,
        data_dir="data",
        broker_mode="system",
        broker_config_dir="broker",
    )
    save_progress(layout.site_file, values)
    _own(path)
    result.written.append(path)


def _write_secrets(config: SiteConfig, result: FirstBootResult) -> None:
    secrets_dir = config.data_dir / "secrets"
    credentials_path = secrets_dir / "broker.json"
    token_key_path = secrets_dir / "edge-token-key.pem"
    band_key = band_key_path(config.data_dir)
    missing = [
        path
        for path in (credentials_path, token_key_path, band_key)
        if not path.exists()
    ]
    credentials = SiteCredentials(credentials_path)
    credentials.ensure(site_access_policy(config).usernames)
    load_or_create_key(token_key_path)
    load_band_key(config.data_dir)
    _own(secrets_dir)
    for path in sorted(secrets_dir.iterdir()):
        _own(path)
    result.written.extend(missing)


def _make_folder(
    path: Path, mode: int, result: FirstBootResult, *, service_owned: bool = True
) -> None:
    if not path.is_dir():
        path.mkdir(mode=mode)
        result.written.append(path)
    # A folder the image already contains may still belong to root.
    if service_owned:
        _own(path)


def _write_marker(layout: BoxLayout, config: SiteConfig) -> None:
    document = {
        "version": _MARKER_VERSION,
        "box_id": config.box_id,
        "site_id": config.site_id,
        "completed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nightbox_version": _package_version(),
    }
    text = json.dumps(document, indent=2) + "\n"
    secret_file.write_file_atomically(layout.first_boot_file, text.encode(), 0o644)


def _package_version() -> str:
    try:
        return metadata.version("nightbox")
    except metadata.PackageNotFoundError:
        return "unknown"


def _grow(result: FirstBootResult, state_dir: Path, *, enabled: bool) -> None:
    if not enabled:
        return
    try:
        result.grow = grow_state_partition(state_dir)
    except GrowError as err:
        # A box on the image's small partition still runs a night.
        _LOGGER.error("Could not grow the data partition: %s", err)
        result.grow_error = str(err)


def _own(path: Path) -> None:
    """Give ``path`` to the service user when running as root and the user exists."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    with contextlib.suppress(FileNotFoundError):
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
