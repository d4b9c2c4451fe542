"""Adding a reader to the site: its ``[[readers]]`` entry and broker account.

The site file is rewritten through :mod:`appliance.remote.site_file`, which
validates the whole changed document before it atomically replaces the
file, and keeps the old one as ``<name>.previous``. Provisioning runs hold
an exclusive lock on ``<site file>.lock`` while they read the site file,
choose the reader's id, write the file and create the broker account, so
two runs at once get two ids. The running box learns of the new reader
when it receives SIGHUP, which makes ``nightbox run`` restart its services
and broker with the new password and ACL files.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import logging
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._toml_values import ID_PATTERN
from appliance.config import (
    MAX_KIT_STOCK,
    ReaderConfig,
    SiteConfig,
    load_config,
    read_toml_file,
)
from appliance.errors import ConfigError
from appliance.remote.site_file import (
    NotAnArrayOfTablesError,
    append_array_table,
    replace_config,
)
from provisioning.credentials import BrokerAccount, SiteCredentials, verify_password
from provisioning.readers._errors import ReaderArgumentError
from provisioning.site_access import reader_username

_LOGGER = logging.getLogger(__name__)

ROLES = ("exit", "kit")
UPLINKS = ("wifi", "serial")
# The same rule as [[readers]] zone in the site file.
ZONE_PATTERN = re.compile(r"^[a-z0-9-]{1,32}\Z")
# `nightbox run` holds this lock in the data folder and writes its pid into it.
LOCK_NAME = "nightbox.lock"
# The password file that the box's mosquitto reads, written by `nightbox run`
# at every start (appliance.bus.broker._write_mosquitto_files). The embedded
# broker writes no file.
BROKER_PASSWORD_FILE = Path("run") / "mosquitto.passwd"


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
    owner = port_owner(config, request.port)
    if owner is not None and owner.id != reader_id:
        # The box keeps this port open for that reader while it runs, so
        # probing or flashing here would write into that reader's line.
        raise ReaderArgumentError(
            f"serial port {request.port} is already the uplink of reader "
            f"{owner.id} in the site file; plug this board into another port, "
            f"or give --id {owner.id} to provision that reader again"
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


def port_owner(config: SiteConfig, port: str) -> ReaderConfig | None:
    """Return the site's serial reader whose ``serial_port`` is ``port``, or None.

    Device paths are compared with their symlinks resolved, so
    ``/dev/serial/by-id/...`` matches the ``/dev/ttyUSB0`` it points to.
    pyserial URLs are compared as written.
    """
    device = _serial_device(port)
    for reader in config.readers:
        if reader.serial_port is not None and _serial_device(reader.serial_port) == (
            device
        ):
            return reader
    return None


def _serial_device(port: str) -> str:
    # pyserial's serial_for_url treats any text with "://" as a URL.
    return port if "://" in port else os.path.realpath(port)


def _next_free_id(config: SiteConfig, role: str) -> str:
    taken = {reader.id for reader in config.readers} | {config.box_id}
    number = 1
    while f"{role}-{number}" in taken:
        number += 1
    return f"{role}-{number}"


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered reader: the site configuration as written, and what changed."""

    config: SiteConfig
    reader: ReaderConfig
    reader_added: bool
    site_file_changed: bool
    account_created: bool


@contextlib.contextmanager
def site_file_lock(config_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<site file>.lock`` beside the site file.

    The lock file is beside the file that a symlinked ``config_path`` points
    to, so every path to one site file takes the same lock. Waits while
    another provisioning run holds it, which takes milliseconds.
    """
    lock_path = Path(os.path.realpath(config_path) + ".lock")
    try:
        handle = open(lock_path, "a")  # noqa: SIM115
    except OSError as err:
        raise ReaderArgumentError(
            f"cannot create the lock file {lock_path}: {err.strerror}; the "
            "folder of the site file must be writable"
        ) from err
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def register_request(config_path: Path, request: ReaderRequest) -> Registration:
    """Register the reader that ``request`` describes, in the site file as it is now.

    Under :func:`site_file_lock`, the site file is read again, the request
    is validated against it (so an automatic id that another run took
    meanwhile becomes the next free one), the reader is added or updated,
    and its broker account is created. Raises ReaderArgumentError or
    ConfigError, with nothing changed, when the request no longer fits the
    site file.
    """
    with site_file_lock(config_path):
        config = load_config(config_path)
        reader = validate_request(request, config)
        added = config.reader(reader.id) is None
        config, changed = _register_locked(config_path, config, reader)
        accounts = credentials_path(config)
        before = accounts.read_bytes() if accounts.exists() else None
        ensure_broker_account(config, reader.id)
        account_created = accounts.read_bytes() != before
    registered = config.reader(reader.id)
    if registered is None:
        raise ReaderArgumentError(
            f"reader {reader.id} is missing from {config_path} after it was "
            "written; check that no other program rewrites the file"
        )
    return Registration(config, registered, added, changed, account_created)


def register_reader(
    config_path: Path, config: SiteConfig, reader: ReaderConfig
) -> tuple[SiteConfig, bool]:
    """Add ``reader`` to the site file's ``[[readers]]`` or update its entry.

    Returns the validated new configuration and whether the file changed;
    an entry with the same settings leaves the file untouched. Raises
    ReaderArgumentError when the changed file would be invalid. ``reader``
    keeps its id even when another run took it meanwhile; use
    :func:`register_request` to choose the id under the lock.
    """
    with site_file_lock(config_path):
        return _register_locked(config_path, config, reader)


def _register_locked(
    config_path: Path, config: SiteConfig, reader: ReaderConfig
) -> tuple[SiteConfig, bool]:
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
        # The file may have changed since ``config`` was loaded.
        return load_config(config_path), False
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


def box_has_reader(config_path: Path, config: SiteConfig, reader_id: str) -> bool:
    """Return whether the running box's broker has loaded the reader's account.

    The box's mosquitto must have written its password file at the box's
    latest start (not before the lock file) and after the site file's last
    change. The file must list the reader's username with the password of
    the credentials file. The embedded broker writes no password file, so
    with it this returns False.
    """
    lock_path = config.data_dir / LOCK_NAME
    password_path = config.data_dir / BROKER_PASSWORD_FILE
    try:
        box_started_ns = lock_path.stat().st_mtime_ns
        written_ns = password_path.stat().st_mtime_ns
        site_changed_ns = config_path.stat().st_mtime_ns
        lines = password_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if written_ns < box_started_ns or site_changed_ns > written_ns:
        return False
    account = ensure_broker_account(config, reader_id)
    prefix = account.username + ":"
    return any(
        line.startswith(prefix)
        and verify_password(account.password, line[len(prefix) :])
        for line in lines
    )


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
