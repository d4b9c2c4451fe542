"""Adding a reader to the site: its ``[[readers]]`` entry and broker account.

The site file is rewritten through :mod:`appliance.remote.site_file`, which
validates the whole changed document before it atomically replaces the
file, and keeps the old one as ``<name>.previous``. The running box learns
of the new reader when it receives SIGHUP, which makes ``nightbox run``
restart its services and broker with the new password and ACL files.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._toml_values import ID_PATTERN
from appliance.config import MAX_KIT_STOCK, ReaderConfig, SiteConfig, read_toml_file
from appliance.errors import ConfigError
from appliance.remote.site_file import (
    NotAnArrayOfTablesError,
    append_array_table,
    replace_config,
)
from provisioning.credentials import BrokerAccount, SiteCredentials
from provisioning.readers._errors import ReaderArgumentError
from provisioning.site_access import reader_username

_LOGGER = logging.getLogger(__name__)

ROLES = ("exit", "kit")
UPLINKS = ("wifi", "serial")
# The same rule as [[readers]] zone in the site file.
ZONE_PATTERN = re.compile(r"^[a-z0-9-]{1,32}\Z")
# `nightbox run` holds this lock in the data folder and writes its pid into it.
LOCK_NAME = "nightbox.lock"


@dataclass(frozen=True, slots=True)
class ReaderRequest:
    """A request for one reader: its role, zone, serial port and uplink.

    ``reader_id`` None picks the next free ``<role>-<n>``. ``kit_stock``
    None keeps the stock that the site file has.
    """

    role: str
    zone: str
    port: str
    reader_id: str | None = None
    uplink: str = "wifi"
    kit_stock: int | None = None


def validate_request(request: ReaderRequest, config: SiteConfig) -> ReaderConfig:
    """Check ``request`` against the site and return the reader it describes.

    Raises ReaderArgumentError naming the value and what to do. Nothing
    is changed.
    """
    if request.role not in ROLES:
        raise ReaderArgumentError(
            f"role {request.role!r:.40} is unknown; use --role exit or --role kit"
        )
    if not ZONE_PATTERN.match(request.zone):
        raise ReaderArgumentError(
            f"zone {request.zone!r:.60} is invalid; use 1-32 lowercase letters, "
            "digits and '-', such as main-door"
        )
    if request.uplink not in UPLINKS:
        raise ReaderArgumentError(
            f"uplink {request.uplink!r:.40} is unknown; use --uplink wifi or "
            "--uplink serial"
        )
    if not request.port or any(
        ch.isspace() or not ch.isprintable() for ch in request.port
    ):
        raise ReaderArgumentError(
            f"port {request.port!r:.60} is invalid; give the board's serial device "
            "such as /dev/ttyUSB0"
        )
    reader_id = (
        _next_free_id(config, request.role)
        if request.reader_id is None
        else request.reader_id
    )
    if not ID_PATTERN.match(reader_id):
        raise ReaderArgumentError(
            f"reader id {reader_id!r:.60} is invalid; use 1-32 lowercase letters, "
            "digits and '-', starting with a letter or digit, such as exit-3"
        )
    existing = config.reader(reader_id)
    if config.scanner != "none" and reader_id == config.box_id:
        raise ReaderArgumentError(
            f"reader id {reader_id!r} is the box's own scanner; choose another --id"
        )
    if existing is not None and existing.role != request.role:
        role = existing.role
        raise ReaderArgumentError(
            f"reader {reader_id} is already in the site file as {_article(role)} "
            f"{role} reader; give another --id, or --role {role} to provision it "
            "again"
        )
    kit_stock = _kit_stock(request, existing)
    if request.uplink == "wifi" and config.reader_network is None:
        raise ReaderArgumentError(
            "a Wi-Fi reader needs the [reader_network] table in the site file "
            "(wifi_ssid, wifi_password_file, broker_host); add it, or use "
            "--uplink serial to connect the reader to the box by USB"
        )
    serial_port = request.port if request.uplink == "serial" else None
    for other in config.readers:
        if other.id != reader_id and serial_port and other.serial_port == serial_port:
            raise ReaderArgumentError(
                f"serial port {serial_port} is already the uplink of reader "
                f"{other.id}; plug this reader into another port"
            )
    return ReaderConfig(
        id=reader_id,
        role=request.role,  # type: ignore[arg-type]
        threshold_dbm=None if existing is None else existing.threshold_dbm,
        kit_stock=kit_stock,
        zone=request.zone,
        uplink=request.uplink,  # type: ignore[arg-type]
        serial_port=serial_port,
    )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _kit_stock(request: ReaderRequest, existing: ReaderConfig | None) -> int:
    if request.kit_stock is None:
        return 0 if existing is None else existing.kit_stock
    if request.role != "kit":
        raise ReaderArgumentError(
            "--kit-stock is for kit readers only; remove it or use --role kit"
        )
    if not 0 <= request.kit_stock <= MAX_KIT_STOCK:
        raise ReaderArgumentError(
            f"kit stock {request.kit_stock} is out of range; give 0 to "
            f"{MAX_KIT_STOCK} kits"
        )
    return request.kit_stock


def _next_free_id(config: SiteConfig, role: str) -> str:
    taken = {reader.id for reader in config.readers} | {config.box_id}
    number = 1
    while f"{role}-{number}" in taken:
        number += 1
    return f"{role}-{number}"


def register_reader(
    config_path: Path, config: SiteConfig, reader: ReaderConfig
) -> tuple[SiteConfig, bool]:
    """Add ``reader`` to the site file's ``[[readers]]`` or update its entry.

    Returns the validated new configuration and whether the file changed;
    an entry with the same settings leaves the file untouched. Raises
    ReaderArgumentError when the changed file would be invalid.
    """
    document = read_toml_file(config_path)
    changed = copy.deepcopy(document)
    entries = changed.setdefault("readers", [])
    if not isinstance(entries, list):
        raise ReaderArgumentError(
            f"readers in {config_path} is not an array of tables; fix the file"
        )
    entry = next(
        (
            item
            for item in entries
            if isinstance(item, dict) and item.get("id") == reader.id
        ),
        None,
    )
    appended = entry is None
    if entry is None:
        entry = {
            "id": reader.id,
            "role": reader.role,
            "zone": reader.zone,
            "uplink": reader.uplink,
        }
        entries.append(entry)
    _set_entry(entry, reader)
    if changed == document:
        return config, False
    try:
        new_config = _write_entry(config_path, config, changed, entry, appended)
    except ConfigError as err:
        raise ReaderArgumentError(
            f"adding reader {reader.id} would make {config_path} invalid: {err}"
        ) from err
    _LOGGER.info("Added reader %s to %s", reader.id, config_path)
    return new_config, True


def _write_entry(
    config_path: Path,
    config: SiteConfig,
    document: dict[str, Any],
    entry: dict[str, Any],
    appended: bool,
) -> SiteConfig:
    if appended:
        # A new reader is added as text, so the file keeps its comments. A
        # file that lists its readers as an inline array is rewritten whole.
        try:
            return append_array_table(
                config_path,
                "readers",
                entry,
                site_id=config.site_id,
                box_id=config.box_id,
            )
        except NotAnArrayOfTablesError:
            pass
    return replace_config(
        config_path, document, site_id=config.site_id, box_id=config.box_id
    )


def _set_entry(entry: dict[str, Any], reader: ReaderConfig) -> None:
    # Only differing keys are written, so provisioning a reader again with
    # the same settings leaves the file, and its comments, as they are.
    entry["role"] = reader.role
    if entry.get("zone", "") != reader.zone:
        entry["zone"] = reader.zone
    if entry.get("uplink", "wifi") != reader.uplink:
        entry["uplink"] = reader.uplink
    if reader.serial_port is None:
        entry.pop("serial_port", None)
    else:
        entry["serial_port"] = reader.serial_port
    if reader.role == "kit" and entry.get("kit_stock", 0) != reader.kit_stock:
        entry["kit_stock"] = reader.kit_stock


def credentials_path(config: SiteConfig) -> Path:
    """Return the box's broker credentials file, as ``nightbox run`` uses it."""
    return config.data_dir / "secrets" / "broker.json"


def ensure_broker_account(config: SiteConfig, reader_id: str) -> BrokerAccount:
    """Return the reader's broker account, generating its password once.

    Raises ReaderArgumentError when the credentials file cannot be read.
    """
    try:
        credentials = SiteCredentials(credentials_path(config))
        return credentials.account(reader_username(reader_id))
    except (ValueError, OSError) as err:
        raise ReaderArgumentError(str(err)) from err


def running_box_pid(config: SiteConfig) -> int | None:
    """Return the pid of the ``nightbox run`` that uses the site's data folder.

    The box holds an exclusive lock on ``<data_dir>/nightbox.lock`` while it
    runs and writes its pid there. A shared lock that this function can
    take means that no box runs.
    """
    path = config.data_dir / LOCK_NAME
    try:
        handle = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else None
        # A box that starts while this shared lock is held finds the lock
        # taken and stops with "in use by another Nightbox process"; the
        # lock is held for microseconds only.
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def reload_box(config: SiteConfig) -> int | None:
    """Send SIGHUP to the running box so it restarts with the new site file.

    Returns the box's pid, or None when no box runs; its broker then reads
    the new reader's account at its next start.
    """
    pid = running_box_pid(config)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as err:
        if err.errno == errno.ESRCH:
            return None
        raise
    _LOGGER.info("Sent SIGHUP to the box (pid %d) to load the new reader", pid)
    return pid
