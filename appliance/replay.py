"""``nightbox replay``: recorded sightings through the live check-out pipeline.

A capture is JSON Lines, one heard advert per line::

    {"t": 1780000000.25, "reader": "exit-1", "addr": "c3:11:22:33:44:55",
     "rssi": -61, "adv": "0201061aff4c000215..."}

``t`` is Unix seconds, ``reader`` a configured reader id, ``addr`` the BLE
address, ``rssi`` in dBm and ``adv`` the advertising data (AD structures)
in hex. Lines are grouped into one batch per reader per second, exactly as
a reader would have sent them, and run through the same pipeline and store
rules as the live box, in a temporary store.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.checkout import parse_batch
from appliance.checkout._pipeline import CheckoutPipeline
from appliance.clock import ManualClock
from appliance.config import SiteConfig
from appliance.errors import PayloadError
from appliance.runtime import site_bands
from appliance.sightings import BatchBuilder
from appliance.store import Store


@dataclass(frozen=True, slots=True)
class CaptureLine:
    """One heard advert from a capture file."""

    t: float
    reader: str
    address: str
    rssi_dbm: float
    advert: bytes


def read_capture(path: Path) -> Iterator[tuple[int, CaptureLine | PayloadError]]:
    """Yield each line number with its parsed line, or a PayloadError naming
    the problem."""
    with path.open() as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield number, _parse_line(text)
            except PayloadError as err:
                yield number, err


def _parse_line(text: str) -> CaptureLine:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as err:
        raise PayloadError(f"not JSON: {err}") from err
    if not isinstance(item, dict):
        raise PayloadError("each line must be a JSON object")
    reader = item.get("reader")
    if not isinstance(reader, str) or not reader:
        raise PayloadError(f"field 'reader' must be a reader id, not {reader!r:.40}")
    t = item.get("t")
    rssi = item.get("rssi")
    for name, value in (("t", t), ("rssi", rssi)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"field {name!r} must be a number, not {value!r:.40}")
    advert = item.get("adv")
    try:
        raw = bytes.fromhex(advert) if isinstance(advert, str) else None
    except ValueError:
        raw = None
    if not raw:
        raise PayloadError(
            f"field 'adv' must be advertising data in hex, not {advert!r:.40}"
        )
    address = item.get("addr", "00:00:00:00:00:00")
    return CaptureLine(float(t), reader, str(address), float(rssi), raw)  # type: ignore[arg-type]


def replay(
    path: Path, config: SiteConfig
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Run a capture; return the check-outs, the rejected lines and the counters."""
    lines: list[CaptureLine] = []
    errors: list[str] = []
    for number, item in read_capture(path):
        if isinstance(item, PayloadError):
            errors.append(f"{path}:{number}: {item}")
        elif config.reader(item.reader) is None:
            errors.append(
                f"{path}:{number}: unknown reader {item.reader!r}; "
                "add it to [[readers]]"
            )
        else:
            lines.append(item)
    lines.sort(key=lambda line: line.t)
    checkouts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nightbox-replay-") as folder:
        clock = ManualClock(lines[0].t if lines else 0.0)
        store = Store(Path(folder) / "replay.sqlite3", clock)
        pipeline = CheckoutPipeline(config, store, site_bands(config))
        builders: dict[str, BatchBuilder] = {}
        window: dict[str, float] = {}
        for line in lines:
            builder = builders.setdefault(
                line.reader, BatchBuilder(line.reader, boot="replay")
            )
            end = window.setdefault(line.reader, float(int(line.t)) + 1.0)
            if line.t >= end:
                clock.advance_to(end)
                checkouts += _run(pipeline, builder.take(end))
                end = float(int(line.t)) + 1.0
            window[line.reader] = end
            builder.add(line.address, line.rssi_dbm, line.advert, line.t)
        for reader, builder in builders.items():
            clock.advance_to(window[reader])
            checkouts += _run(pipeline, builder.take(window[reader]))
        stats = pipeline.stats
        store.close()
    counters = {
        "lines": len(lines),
        "rejected_lines": len(errors),
        "sightings": stats.sightings,
        "band_sightings": stats.band_sightings,
        "checkouts": stats.checkouts,
        "rejected": dict(stats.rejected),
    }
    return checkouts, errors, counters


def _run(pipeline: CheckoutPipeline, data: dict[str, Any]) -> list[dict[str, Any]]:
    _bands, checkouts = pipeline.ingest(parse_batch(data["reader"], data))
    return checkouts
