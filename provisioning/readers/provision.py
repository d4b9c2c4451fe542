"""``nightbox reader provision``: one command from a blank ESP32 to a working reader.

The stages, in order:

1. arguments: the role, zone, id, uplink and kit stock are checked against
   the site file, and the Wi-Fi password file is read.
2. bundle: every file of the reader bundle is checked against its manifest.
3. probe: the board's raw REPL is entered, which shows whether MicroPython
   is on it.
4. register: the reader is added to the site file's ``[[readers]]`` and
   gets its broker account. This happens before anything is written to the
   board, and for a blank board only after its bootloader responded.
5. flash: a board without MicroPython gets the bundle's image.
6. copy: ``main.py`` and ``lib/`` are copied, skipping files whose SHA-256
   on the board already matches.
7. config: ``/reader.json`` is written, and the board is soft-reset.
8. broker: a running box gets SIGHUP, so its broker loads the new account,
   unless its broker's password file shows that it has the reader already.

Any error before stage 4 changes nothing. Every later one is raised as a
BoardError naming the registered reader, and running the command again
with that reader's id finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.config import ReaderConfig, SiteConfig, load_config
from provisioning.readers._errors import (
    BoardError,
    BundleError,
    ReaderArgumentError,
)
from provisioning.readers.board import (
    DEFAULT_PROBE_TIMEOUT_S,
    MicroPythonBoard,
    check_port,
    flash_micropython,
    open_micropython,
)
from provisioning.readers.bundle import (
    IMAGE_NAME,
    BundleManifest,
    read_bundle_file,
    verify_bundle,
)
from provisioning.readers.reader_file import (
    READER_FILE,
    read_wifi_password,
    reader_settings,
)
from provisioning.readers.registration import (
    ReaderRequest,
    box_has_reader,
    ensure_broker_account,
    port_owner,
    register_request,
    reload_box,
    running_box_pid,
    validate_request,
)

_LOGGER = logging.getLogger(__name__)

BUNDLE_FOLDER = "reader-bundle"
# Names the firmware folder of a board updated by the box (firmware/main.py).
FIRMWARE_BOOT_FILE = "/fw/boot.json"
# A freshly flashed ESP32 formats its file system at first boot, which takes
# a few seconds before the REPL responds.
FIRST_BOOT_TIMEOUT_S = 20.0


class Progress(Protocol):
    """A receiver of provisioning's stages and of the percentage done of long ones."""

    def stage(self, name: str, message: str) -> None:
        """Report that stage ``name`` finished or has news."""

    def percent(self, name: str, label: str, done: int, total: int) -> None:
        """Report ``done`` of ``total`` units of ``label`` in stage ``name``."""


@dataclass(slots=True)
class ProvisionResult:
    """The outcome of provisioning one board. It contains no password."""

    reader: ReaderConfig
    port: str
    firmware_version: str
    site_file_changed: bool = False
    account_created: bool = False
    chip: str | None = None
    registered: bool = False
    flashed: bool = False
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reader_file_written: bool = False
    box_pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dictionary."""
        return {
            "reader": self.reader.id,
            "role": self.reader.role,
            "zone": self.reader.zone,
            "uplink": self.reader.uplink,
            "port": self.port,
            "firmware": self.firmware_version,
            "site_file_changed": self.site_file_changed,
            "account_created": self.account_created,
            "flashed": self.flashed,
            "chip": self.chip,
            "copied": self.copied,
            "unchanged": self.unchanged,
            "reader_file_written": self.reader_file_written,
            "box_reloaded": self.box_pid is not None,
            "box_pid": self.box_pid,
        }


def default_bundle_folder(config: SiteConfig) -> Path:
    """Return ``<data_dir>/reader-bundle``, where the box keeps its bundle."""
    return config.data_dir / BUNDLE_FOLDER


def provision_reader(
    config_path: Path,
    request: ReaderRequest,
    progress: Progress,
    *,
    bundle: Path | None = None,
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
) -> ProvisionResult:
    """Run every stage of the module docstring for the board on ``request.port``.

    Raises BundleError or ReaderArgumentError (nothing changed),
    BoardNotFoundError or BoardTimeoutError (nothing changed), ConfigError
    for an invalid site file, and BoardError when writing to the board
    failed part way. Every error raised after the reader was registered is
    a BoardError that names its id in the message and in ``reader_id``, so
    the command can be run again for the same reader.
    """
    config = load_config(config_path)
    reader = validate_request(request, config)
    _check_port_not_served(config, reader, request.port)
    wifi_password = None
    if reader.uplink == "wifi" and config.reader_network is not None:
        wifi_password = read_wifi_password(config.reader_network)
    manifest = verify_bundle(bundle or default_bundle_folder(config))
    progress.stage(
        "bundle",
        f"{len(manifest.files)} files match the manifest, firmware "
        f"{manifest.firmware_version}",
    )
    check_port(request.port)
    result = ProvisionResult(reader, request.port, manifest.firmware_version)
    try:
        return _set_up_board(
            config_path,
            request,
            manifest,
            wifi_password,
            progress,
            result,
            probe_timeout_s,
        )
    except Exception as err:
        if not result.registered:
            raise
        # Exit codes 2 and 3 promise that nothing changed, so every failure
        # after registering, whatever its type, names the reader to finish.
        reader_id = result.reader.id
        raise BoardError(
            f"{err}. Reader {reader_id} is registered in {config_path}, so run "
            f"the command again with --id {reader_id} to finish it; the files "
            "already on the board are skipped",
            reader_id=reader_id,
        ) from err


def _check_port_not_served(config: SiteConfig, reader: ReaderConfig, port: str) -> None:
    """Raise ReaderArgumentError when the running box serves ``port`` for a reader.

    validate_request already rejects the port of another reader. The
    reader's own serial port is rejected only while a box runs, because the
    box keeps it open for that reader.
    """
    owner = port_owner(config, port)
    if owner is None or owner.id != reader.id:
        return
    pid = running_box_pid(config)
    if pid is None:
        return
    raise ReaderArgumentError(
        f"serial port {port} is the uplink of reader {reader.id}, which the "
        f"running box (pid {pid}) holds open; stop the box, run this command "
        "again, then start the box"
    )


def _set_up_board(
    config_path: Path,
    request: ReaderRequest,
    manifest: BundleManifest,
    wifi_password: str | None,
    progress: Progress,
    result: ProvisionResult,
    probe_timeout_s: float,
) -> ProvisionResult:
    """Run the stages from the probe on; the reader is registered on the way."""
    port = result.port
    board = open_micropython(port, probe_timeout_s)
    if board is None:
        if manifest.image is None:
            raise BundleError(
                f"the board at {port} has no MicroPython and the bundle "
                f"in {manifest.folder} has no MicroPython image; build the bundle "
                "again with --micropython-image"
            )
        progress.stage("probe", f"no MicroPython responded on {port}; flashing it")
        config = _flash(config_path, request, manifest, progress, result)
        board = open_micropython(port, FIRST_BOOT_TIMEOUT_S)
        if board is None:
            raise BoardError(
                f"MicroPython was written to the board at {port} but "
                "does not respond; press the board's EN button"
            )
    else:
        progress.stage("probe", f"MicroPython responded on {port}")
        try:
            config = _register(config_path, request, progress, result)
        except BaseException:
            board.close()
            raise

    reader = result.reader
    with board:
        _copy_files(board, manifest, progress, result)
        # A board updated over the air runs the firmware that its boot file
        # names; without the file it runs the firmware just copied to /lib.
        if board.remove_file(FIRMWARE_BOOT_FILE):
            progress.stage("copy", f"{FIRMWARE_BOOT_FILE} removed: the board runs /lib")
        _write_reader_file(board, config, reader, wifi_password, progress, result)
        board.restart()
    _reload_box(config_path, config, progress, result)
    return result


def _reload_box(
    config_path: Path, config: SiteConfig, progress: Progress, result: ProvisionResult
) -> None:
    """Send SIGHUP to a running box unless its broker has the reader already."""
    reader = result.reader
    if (
        not (result.site_file_changed or result.account_created)
        and running_box_pid(config) is not None
        and box_has_reader(config_path, config, reader.id)
    ):
        progress.stage("broker", f"the running box already has reader {reader.id}")
        return
    result.box_pid = reload_box(config)
    if result.box_pid is not None:
        progress.stage(
            "broker",
            f"the box (pid {result.box_pid}) restarts to load reader {reader.id}",
        )
    else:
        progress.stage(
            "broker",
            f"no box runs for {config.data_dir}; its broker loads reader "
            f"{reader.id} at its next start",
        )


def _register(
    config_path: Path,
    request: ReaderRequest,
    progress: Progress,
    result: ProvisionResult,
) -> SiteConfig:
    registration = register_request(config_path, request)
    result.registered = True
    result.reader = registration.reader
    result.site_file_changed = registration.site_file_changed
    result.account_created = registration.account_created
    if registration.reader_added:
        action = "added to"
    elif registration.site_file_changed:
        action = "updated in"
    else:
        action = "already in"
    account = (
        "new broker account" if registration.account_created else "broker account kept"
    )
    progress.stage(
        "register", f"reader {result.reader.id} {action} {config_path}; {account}"
    )
    return registration.config


def _flash(
    config_path: Path,
    request: ReaderRequest,
    manifest: BundleManifest,
    progress: Progress,
    result: ProvisionResult,
) -> SiteConfig:
    assert manifest.image is not None
    image = read_bundle_file(manifest.folder, manifest.image)
    registered: list[SiteConfig] = []

    def on_connected(chip: str) -> None:
        result.chip = chip
        registered.append(_register(config_path, request, progress, result))

    def on_progress(done: int, total: int) -> None:
        progress.percent("flash", IMAGE_NAME, done, total)

    result.chip = flash_micropython(result.port, image, on_progress, on_connected)
    result.flashed = True
    progress.stage("flash", f"MicroPython written to the {result.chip} and verified")
    if not registered:
        raise BoardError(
            f"MicroPython was written to the board at {result.port} before the "
            "reader was registered; run the command again"
        )
    return registered[0]


def _copy_files(
    board: MicroPythonBoard,
    manifest: BundleManifest,
    progress: Progress,
    result: ProvisionResult,
) -> None:
    for file in manifest.board_files:
        target = "/" + file.path
        if board.file_sha256(target) == file.sha256:
            result.unchanged.append(file.path)
            continue
        data = read_bundle_file(manifest.folder, file)

        def on_progress(done: int, total: int, label: str = file.path) -> None:
            progress.percent("copy", label, done, total)

        progress.percent("copy", file.path, 0, len(data))
        board.write_file(target, data, on_progress)
        progress.percent("copy", file.path, len(data), len(data))
        result.copied.append(file.path)
    progress.stage(
        "copy",
        f"{len(result.copied)} files copied, {len(result.unchanged)} already on "
        "the board",
    )


def _write_reader_file(
    board: MicroPythonBoard,
    config: SiteConfig,
    reader: ReaderConfig,
    wifi_password: str | None,
    progress: Progress,
    result: ProvisionResult,
) -> None:
    account = (
        ensure_broker_account(config, reader.id) if reader.uplink == "wifi" else None
    )
    settings = reader_settings(
        config, reader, account=account, wifi_password=wifi_password
    )
    data = (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode()
    if board.file_sha256(READER_FILE) == hashlib.sha256(data).hexdigest():
        progress.stage("config", f"{READER_FILE} on the board is up to date")
        return
    board.write_file(READER_FILE, data)
    result.reader_file_written = True
    progress.stage(
        "config",
        f"{READER_FILE} written: reader {reader.id}, {reader.role}, zone "
        f"{reader.zone}, {reader.uplink} uplink",
    )
