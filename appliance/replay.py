"""``nightbox replay``: recorded sightings through the live check-out pipeline.

A capture is JSON Lines, one heard advert per line::

    {"t": 1780000000.25, "reader": "exit-1", "addr": "c3:11:22:33:44:55",
     "rssi": -61, "adv": "0201061aff4c000215..."}

``t`` is Unix seconds, ``reader`` a configured reader id, ``addr`` the BLE
address (optional), ``rssi`` in dBm and ``adv`` the advertising data (AD
structures) in hex. Lines are grouped into one batch per reader per second,
exactly as a reader would have sent them, and run through the same pipeline
and store rules as the live box, in a temporary store. A second in which a
reader heard more distinct adverts than one batch may carry is sent as
several batches.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from appliance.checkout import parse_batch
from appliance.checkout._batches import MAX_SIGHTINGS_PER_BATCH
from appliance.checkout._pipeline import CheckoutPipeline
from appliance.clock import ManualClock
from appliance.config import SiteConfig
from appliance.errors import NightboxError, PayloadError
from appliance.runtime import site_bands
from appliance.sightings import BatchBuilder
from appliance.store import Store

# 2100-01-01T00:00:00Z. A later or non-positive time is a corrupt line, and
# a huge one (1e308) would break the time arithmetic of the pipeline.
MAX_CAPTURE_TIME_S = 4_102_444_800
MIN_RSSI_DBM = -127
MAX_RSSI_DBM = 20
# The same limit parse_batch applies to a sighting's advertising data.
_MAX_ADVERT_BYTES = 62
# A capture line is about 200 bytes. A much longer one is not a capture
# line, and reading it whole could exhaust memory.
_MAX_LINE_BYTES = 4096
# Rejected lines returned with their reason. The counters count all of them.
MAX_REPORTED_ERRORS = 100
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_UTF8_BOM = b"\xef\xbb\xbf"


class CaptureError(NightboxError, OSError):
    """Error raised when a capture file cannot be opened or read.

    The message names the file.
    """


@dataclass(frozen=True, slots=True)
class CaptureLine:
    """One heard advert from a capture file."""

    t: float
    reader: str
    address: str
    rssi_dbm: float
    advert: bytes


def read_capture(path: Path) -> Iterator[tuple[int, CaptureLine | PayloadError]]:
    """Yield each non-blank line's number with its parsed line, or a
    PayloadError naming the problem.

    Raises CaptureError when the file cannot be opened or read.
    """
    try:
        with path.open("rb") as handle:
            for number, data in _numbered_lines(handle):
                if data is None:
                    yield (
                        number,
                        PayloadError(
                            f"line is longer than {_MAX_LINE_BYTES} bytes; "
                            "a capture line is one JSON object"
                        ),
                    )
                    continue
                if number == 1:
                    data = data.removeprefix(_UTF8_BOM)
                if not data.strip():
                    continue
                try:
                    yield number, _parse_line(data)
                except PayloadError as err:
                    yield number, err
    except FileNotFoundError as err:
        raise CaptureError(f"capture {path} not found") from err
    except IsADirectoryError as err:
        raise CaptureError(
            f"capture {path} is a directory; give a JSON Lines file"
        ) from err
    except OSError as err:
        raise CaptureError(f"cannot read capture {path}: {err.strerror}") from err


def _numbered_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    # Yields None in place of a line longer than _MAX_LINE_BYTES.
    number = 0
    while line := handle.readline(_MAX_LINE_BYTES + 1):
        number += 1
        if len(line) <= _MAX_LINE_BYTES or line.endswith(b"\n"):
            yield number, line
            continue
        while (rest := handle.readline(_MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield number, None


def _parse_line(data: bytes) -> CaptureLine:
    try:
        item = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise PayloadError(_json_problem(data, err)) from err
    if type(item) is not dict:
        raise PayloadError("each line must be a JSON object")
    reader = _required(item, "reader")
    if not isinstance(reader, str) or not reader:
        raise PayloadError(f"field 'reader' must be a reader id, not {reader!r:.40}")
    t = _number(item, "t")
    if not 0 < t < MAX_CAPTURE_TIME_S:
        raise PayloadError(
            f"field 't' = {t} is not a Unix time in seconds between 0 and "
            f"{MAX_CAPTURE_TIME_S} (the year 2100)"
        )
    rssi = _number(item, "rssi")
    if not MIN_RSSI_DBM <= rssi <= MAX_RSSI_DBM:
        raise PayloadError(
            f"field 'rssi' = {rssi} dBm is outside {MIN_RSSI_DBM}..{MAX_RSSI_DBM}"
        )
    return CaptureLine(t, reader, _address(item), rssi, _advert(item))


def _json_problem(data: bytes, err: orjson.JSONDecodeError) -> str:
    # orjson reports bad UTF-8 as a JSON error; name the byte instead.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"not UTF-8 text (byte 0x{data[bad.start]:02x} at offset {bad.start} "
            "of the line); captures must be saved as UTF-8"
        )
    return f"not JSON: {err}"


def _required(item: dict[str, Any], name: str) -> Any:
    if name not in item:
        raise PayloadError(f"missing field {name!r}")
    return item[name]


def _number(item: dict[str, Any], name: str) -> float:
    # orjson already rejects NaN, Infinity and numbers beyond a double's
    # range, and reads integers beyond 64 bits as floats.
    value = _required(item, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"field {name!r} must be a number, not {value!r:.40}")
    return float(value)


def _advert(item: dict[str, Any]) -> bytes:
    value = _required(item, "adv")
    advert = b""
    if isinstance(value, str) and len(value) <= 2 * _MAX_ADVERT_BYTES:
        try:
            advert = bytes.fromhex(value)
        except ValueError:
            advert = b""
    if not advert:
        raise PayloadError(
            f"field 'adv' must be 1-{_MAX_ADVERT_BYTES} bytes of advertising data "
            f"in hex, not {value!r:.40}"
        )
    return advert


def _address(item: dict[str, Any]) -> str:
    value = item.get("addr", "00:00:00:00:00:00")
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise PayloadError(
            "field 'addr' must be a BLE address like aa:bb:cc:dd:ee:ff, "
            f"not {value!r:.40}"
        )
    return value.lower()


def replay(
    path: Path, config: SiteConfig
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Run a capture; return the check-outs, the rejected lines and the counters.

    Only the first MAX_REPORTED_ERRORS rejected lines are returned with their
    reason; ``rejected_lines`` in the counters counts all of them, and
    ``lines`` counts every non-blank line. Raises CaptureError when the file
    cannot be opened or read.
    """
    lines: list[CaptureLine] = []
    errors: list[str] = []
    rejected = 0
    for number, item in read_capture(path):
        problem = None
        if isinstance(item, PayloadError):
            problem = str(item)
        elif config.reader(item.reader) is None:
            problem = f"unknown reader {item.reader!r:.40}; add it to [[readers]]"
        else:
            lines.append(item)
            continue
        rejected += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(f"{path}:{number}: {problem}")
    lines.sort(key=lambda line: line.t)
    with tempfile.TemporaryDirectory(prefix="nightbox-replay-") as folder:
        clock = ManualClock(lines[0].t if lines else 0.0)
        store = Store(Path(folder) / "replay.sqlite3", clock)
        try:
            batcher = _Batcher(
                CheckoutPipeline(config, store, site_bands(config)), clock
            )
            for line in lines:
                batcher.add(line)
            batcher.finish()
            stats = batcher.pipeline.stats
        finally:
            store.close()
    counters = {
        "lines": len(lines) + rejected,
        "accepted_lines": len(lines),
        "rejected_lines": rejected,
        "batches": stats.batches,
        "sightings": stats.sightings,
        "band_sightings": stats.band_sightings,
        "checkouts": stats.checkouts,
        "rejected": dict(stats.rejected),
    }
    return batcher.checkouts, errors, counters


class _Batcher:
    """Groups capture lines, in time order, into the batches readers send.

    Each reader's batch covers one second. A batch is sent early when the
    next advert would be its MAX_SIGHTINGS_PER_BATCH + 1st distinct one,
    because parse_batch rejects a larger batch whole.
    """

    def __init__(self, pipeline: CheckoutPipeline, clock: ManualClock) -> None:
        self.pipeline = pipeline
        self.checkouts: list[dict[str, Any]] = []
        self._clock = clock
        self._builders: dict[str, BatchBuilder] = {}
        self._ends: dict[str, float] = {}
        self._adverts: dict[str, set[bytes]] = {}

    def add(self, line: CaptureLine) -> None:
        """Add the next line; send the reader's batch first if it is complete."""
        reader = line.reader
        builder = self._builders.get(reader)
        if builder is None:
            builder = self._builders[reader] = BatchBuilder(reader, boot="replay")
            self._adverts[reader] = set()
            self._ends[reader] = float(int(line.t)) + 1.0
        elif line.t >= self._ends[reader]:
            self._send(reader, self._ends[reader])
            self._ends[reader] = float(int(line.t)) + 1.0
        adverts = self._adverts[reader]
        if line.advert not in adverts and len(adverts) >= MAX_SIGHTINGS_PER_BATCH:
            self._send(reader, line.t)
        adverts.add(line.advert)
        builder.add(line.address, line.rssi_dbm, line.advert, line.t)

    def finish(self) -> None:
        """Send every reader's last batch."""
        for reader in self._builders:
            self._send(reader, self._ends[reader])

    def _send(self, reader: str, t: float) -> None:
        self._clock.advance_to(t)
        data = self._builders[reader].take(t)
        self._adverts[reader].clear()
        _bands, checkouts = self.pipeline.ingest(parse_batch(reader, data))
        self.checkouts += checkouts
