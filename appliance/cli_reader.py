"""``nightbox reader``: build the reader bundle, set up ESP32 readers, list them.

``bundle`` needs a link to a mip package index, or a local copy of one, and
a MicroPython image. ``provision`` and ``list`` work on the box alone.

Exit codes:

- 0: success, for ``list`` also when the box does not run, which it prints.
- 2: an invalid argument, site file or bundle, or a port that a serial
  reader of the site uses. Nothing was changed.
- 3: the board's port does not exist or is in use, or the board responded
  neither as MicroPython nor as the ESP32 bootloader. Nothing was changed.
- 4: a step after the reader was registered failed, such as writing to the
  board. The reader is registered in the site file, so run the command
  again with ``--id`` and the id that the error names to finish that
  reader.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from appliance._cli_arguments import add_config_option, load_site_config, whole_number
from appliance.config import MAX_KIT_STOCK
from appliance.errors import ConfigError
from provisioning.readers import (
    DEFAULT_INDEX,
    BoardError,
    BoardNotFoundError,
    BoardTimeoutError,
    BundleError,
    ReaderArgumentError,
    ReaderRequest,
    build_bundle,
    default_bundle_folder,
    provision_reader,
)
from provisioning.readers.board import DEFAULT_PROBE_TIMEOUT_S
from provisioning.readers.survey import ReaderSurvey, survey_readers

EXIT_INVALID = 2
EXIT_NO_BOARD = 3
EXIT_BOARD_FAILED = 4
# Progress lines of a long step when stderr is not a terminal: one per quarter.
_PERCENT_STEP = 25
# The widest cells of `reader list`, in characters: a firmware version, a
# reader's last error, and any other text such as a reader id or fault kind.
_MAX_VERSION_CHARACTERS = 32
_MAX_ERROR_CHARACTERS = 120
_MAX_TEXT_CHARACTERS = 60
# A status field whose value has the wrong type for it or is out of range.
_WRONG_TYPE = "?"
# The largest values that `reader list` shows. A reader that has run for
# more than 10 years (in seconds), or any count above a billion, sent a
# broken status, and printing such numbers whole would widen the table by
# hundreds of digits.
_MAX_UPTIME_S = 10 * 365 * 24 * 3600
_MAX_COUNT = 10**9


def add_commands(commands: Any) -> None:
    """Add the ``reader`` command to the ``nightbox`` parser."""
    reader = commands.add_parser(
        "reader",
        help="build the reader bundle, provision ESP32 readers, list readers",
        description="Set up the site's ESP32 readers from the box. See "
        "docs/readers.md. Exit codes: 0 success, 2 invalid input (nothing "
        "changed), 3 board not found, in use or not responding (nothing "
        "changed), 4 a step after registering the reader failed, such as "
        "writing to the board (the reader is registered, so run the command "
        "again with --id and the id that the error names).",
    )
    reader_commands = reader.add_subparsers(dest="reader_command", required=True)

    bundle = reader_commands.add_parser(
        "bundle",
        help="build the reader bundle: firmware, umqtt, MicroPython image",
        description="Build the reader bundle that 'reader provision' copies to "
        "boards: the reader firmware, umqtt.simple and umqtt.robust installed "
        "with mpremote's mip from a package index, the MicroPython image and a "
        "manifest with the SHA-256 of every file. Run it where a link exists, "
        "because the index is usually on the internet.",
    )
    add_config_option(bundle)
    bundle.add_argument(
        "--index",
        default=DEFAULT_INDEX,
        metavar="URL_OR_DIR",
        help=f"mip package index, a URL or a local folder (default {DEFAULT_INDEX})",
    )
    bundle.add_argument(
        "--micropython-image",
        type=Path,
        metavar="FILE",
        help="MicroPython firmware for the ESP32: the ESP32_GENERIC .bin file "
        "downloaded from micropython.org/download wherever a link exists. "
        "Without it, the bundle can set up only boards that already run "
        "MicroPython",
    )
    bundle.add_argument(
        "--output",
        type=_folder_path,
        metavar="DIR",
        help="bundle folder: a new or empty folder, or a bundle, which is replaced "
        "whole (default: <box.data_dir>/reader-bundle)",
    )
    bundle.add_argument("--json", action="store_true", help="print one JSON object")

    provision = reader_commands.add_parser(
        "provision",
        help="flash and configure an ESP32 reader plugged into the box",
        description="Check the bundle, add the reader to the site file and the "
        "broker, flash MicroPython if the board has none, copy the firmware "
        "and write /reader.json. Progress goes to stderr.",
    )
    add_config_option(provision)
    provision.add_argument(
        "--port",
        required=True,
        metavar="DEVICE",
        help="the board's serial port, such as /dev/ttyUSB0, or a pyserial URL",
    )
    provision.add_argument(
        "--role", required=True, metavar="exit|kit", help="the reader's role"
    )
    provision.add_argument(
        "--zone",
        required=True,
        metavar="NAME",
        help="where the reader is: 1-32 lowercase letters, digits and '-' (main-door)",
    )
    provision.add_argument(
        "--id",
        dest="reader_id",
        metavar="ID",
        help="reader id (default: the next free <role>-<n>); an id already in "
        "the site file provisions that reader again",
    )
    provision.add_argument(
        "--uplink",
        default="wifi",
        metavar="wifi|serial",
        help="wifi: the reader joins [reader_network] and dials the broker; "
        "serial: it stays plugged into the box on --port (default wifi)",
    )
    provision.add_argument(
        "--kit-stock",
        type=whole_number(0, MAX_KIT_STOCK),
        metavar="N",
        help="kits at this kit station (default: as in the site file, or 0)",
    )
    provision.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="reader bundle (default: <box.data_dir>/reader-bundle)",
    )
    provision.add_argument(
        "--probe-timeout",
        type=_seconds,
        default=DEFAULT_PROBE_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to wait for MicroPython's REPL before flashing "
        f"(default {DEFAULT_PROBE_TIMEOUT_S:g})",
    )
    provision.add_argument(
        "--json", action="store_true", help="print one JSON object with the result"
    )

    listing = reader_commands.add_parser(
        "list",
        help="list the site's readers with their status from the box's broker",
        description="List every reader of the site file with its role, zone "
        "and uplink, and from the box's broker whether it is online, its "
        "firmware, uptime, free heap, scans per minute, reconnects, last "
        "error, buffered batches and open faults.",
    )
    add_config_option(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON object")


def _folder_path(text: str) -> Path:
    # Path("") is the current folder, which the bundle would replace.
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, not an empty text")
    return Path(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from err
    if not math.isfinite(value) or not 0.5 <= value <= 120:
        raise argparse.ArgumentTypeError(f"must be from 0.5 to 120, not {text}")
    return value


def run(arguments: argparse.Namespace) -> int:
    """Run a ``nightbox reader`` command; return the exit code."""
    command = f"nightbox reader {arguments.reader_command}"
    try:
        if arguments.reader_command == "bundle":
            return _bundle(arguments)
        if arguments.reader_command == "provision":
            return _provision(arguments)
        return _list(arguments)
    except (BundleError, ReaderArgumentError, ConfigError) as err:
        print(f"{command}: {err}", file=sys.stderr)
        return EXIT_INVALID
    except (BoardNotFoundError, BoardTimeoutError) as err:
        print(f"{command}: {err}", file=sys.stderr)
        return EXIT_NO_BOARD
    except BoardError as err:
        print(f"{command}: {err}", file=sys.stderr)
        if getattr(arguments, "json", False):
            failure = {"error": str(err), "reader": err.reader_id}
            print(json.dumps(failure, sort_keys=True))
        return EXIT_BOARD_FAILED


def _bundle(arguments: argparse.Namespace) -> int:
    output = arguments.output
    if output is None:
        output = default_bundle_folder(load_site_config(arguments.config))
    manifest = build_bundle(
        output, index=arguments.index, image=arguments.micropython_image
    )
    summary = {
        "bundle": str(manifest.folder),
        "firmware": manifest.firmware_version,
        "packages": manifest.packages,
        "files": len(manifest.files),
        "micropython_image": manifest.image is not None,
    }
    if arguments.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        packages = ", ".join(f"{name} {v}" for name, v in manifest.packages.items())
        print(
            f"Reader bundle in {manifest.folder}: firmware "
            f"{manifest.firmware_version}, {packages}, {len(manifest.files)} files."
        )
    if manifest.image is None:
        print(
            "nightbox reader bundle: the bundle has no MicroPython image, so it "
            "can set up only boards that already run MicroPython; add "
            "--micropython-image with the ESP32_GENERIC .bin from "
            "micropython.org/download",
            file=sys.stderr,
        )
    return 0


class _StderrProgress:
    """Progress lines on stderr: one per stage, plus percentages of long steps."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._shown: dict[tuple[str, str], int] = {}

    def stage(self, name: str, message: str) -> None:
        if self._tty:
            print("\r\033[K", end="", file=sys.stderr)
        print(f"{name}: {message}", file=sys.stderr, flush=True)

    def percent(self, name: str, label: str, done: int, total: int) -> None:
        value = 100 if total <= 0 else min(100, done * 100 // total)
        if self._tty:
            print(f"\r\033[K{name}: {label} {value}%", end="", file=sys.stderr)
            if value == 100:
                print(file=sys.stderr)
            sys.stderr.flush()
            return
        step = value - value % _PERCENT_STEP
        if self._shown.get((name, label), -1) < step:
            self._shown[(name, label)] = step
            print(f"{name}: {label} {step}%", file=sys.stderr, flush=True)


def _provision(arguments: argparse.Namespace) -> int:
    config_path = arguments.config
    load_site_config(config_path)
    request = ReaderRequest(
        role=arguments.role,
        zone=arguments.zone,
        port=arguments.port,
        reader_id=arguments.reader_id,
        uplink=arguments.uplink,
        kit_stock=arguments.kit_stock,
    )
    result = provision_reader(
        Path(config_path),
        request,
        _StderrProgress(),
        bundle=arguments.bundle,
        probe_timeout_s=arguments.probe_timeout,
    )
    if arguments.json:
        print(json.dumps(result.to_json(), sort_keys=True))
        return 0
    reader = result.reader
    flashed = f"flashed MicroPython on the {result.chip}, " if result.flashed else ""
    print(
        f"Reader {reader.id} ({reader.role}, zone {reader.zone}, {reader.uplink} "
        f"uplink) is set up on {result.port}: {flashed}firmware "
        f"{result.firmware_version}, {len(result.copied)} files copied, "
        f"{len(result.unchanged)} unchanged."
    )
    return 0


def _list(arguments: argparse.Namespace) -> int:
    config = load_site_config(arguments.config)
    survey = survey_readers(config)
    if arguments.json:
        print(json.dumps(survey.to_json(), sort_keys=True))
        return 0
    if survey.problem is not None:
        print(f"The box's broker was not asked: {survey.problem}.")
    elif survey.box_state != "online":
        print(f"The box reports itself {survey.box_state} on {survey.broker}.")
    print(_table(survey))
    for line in survey.unreadable:
        print(f"nightbox reader list: ignored {line}", file=sys.stderr)
    return 0


_COLUMNS = (
    "READER",
    "ROLE",
    "ZONE",
    "UPLINK",
    "STATE",
    "FW",
    "UPDATE",
    "UPTIME",
    "HEAP",
    "SCANS/MIN",
    "RECONNECTS",
    "RING",
    "LAST ERROR",
    "FAULTS",
)


def _table(survey: ReaderSurvey) -> str:
    rows = [list(_COLUMNS)]
    for view in survey.readers:
        status = view.status
        rows.append(
            [
                view.reader if view.configured else f"{view.reader} (not in site file)",
                view.role or "-",
                view.zone or "-",
                view.uplink or "-",
                view.state,
                _string(status.get("fw"), _MAX_VERSION_CHARACTERS),
                _update(status.get("update")),
                _uptime(status.get("uptime_s")),
                _count(status.get("heap_free")),
                _count(status.get("scan_per_min")),
                _count(status.get("reconnects")),
                _count(status.get("ring_used")),
                _string(status.get("last_error"), _MAX_ERROR_CHARACTERS),
                ", ".join(_text(fault["kind"]) for fault in view.faults) or "-",
            ]
        )
    widths = [max(len(row[index]) for row in rows) for index in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    )


def _text(value: object, limit: int = _MAX_TEXT_CHARACTERS) -> str:
    if value is None:
        return "-"
    # Reader ids and errors come from the network; control characters in
    # them would garble the terminal.
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))[:limit]


def _string(value: object, limit: int) -> str:
    """Return a text field of a reader's status, or "?" for a value of another type."""
    if value is None or isinstance(value, str):
        return _text(value, limit)
    return _WRONG_TYPE


def _update(value: object) -> str:
    """Return a reader's firmware update as ``<version>:<state>``, "-" for none.

    A download in progress shows its percentage instead of the state; the
    reason of a failure is in LAST ERROR.
    """
    if value is None:
        return "-"
    if not isinstance(value, dict):
        return _WRONG_TYPE
    version = _string(value.get("version"), _MAX_VERSION_CHARACTERS)
    state = _string(value.get("state"), _MAX_VERSION_CHARACTERS)
    done, total = value.get("done"), value.get("total")
    if (
        state == "downloading"
        and isinstance(done, int)
        and isinstance(total, int)
        and 0 <= done <= total
        and total > 0
    ):
        return f"{version}:{100 * done // total}%"
    return f"{version}:{state}"


def _count(value: object) -> str:
    """Return a count of a reader's status, or "?" for anything else."""
    if value is None:
        return "-"
    number = _number(value, _MAX_COUNT)
    if number is None:
        return _WRONG_TYPE
    return _text(number)


def _number(value: object, maximum: int) -> int | float | None:
    """Return ``value`` when it is a number from 0 to ``maximum``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if 0 <= value <= maximum else None


def _uptime(value: object) -> str:
    if value is None:
        return "-"
    seconds_up = _number(value, _MAX_UPTIME_S)
    if seconds_up is None:
        return _WRONG_TYPE
    minutes, seconds = divmod(int(seconds_up), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
