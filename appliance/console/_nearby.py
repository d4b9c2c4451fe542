"""The bands heard lately, for ``console/nearby``, decoded only when asked.

The sightings path carries thousands of sightings a second, so the box only
keeps the raw payloads of recent batches (bytes, which the garbage collector
never scans) in a bounded queue. A ``nearby`` request parses the batches of
its window and maps their adverts to the site's bands.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from appliance.bus import envelope
from appliance.checkout._batches import parse_batch
from appliance.errors import PayloadError
from appliance.wristbands import BandMatch, EddystoneTlm, SiteBands, decode_advert

MAX_WINDOW_S = 60.0
# 16 readers at 4 batches a second for a minute, and at most 16 MiB of
# payloads, whichever is reached first.
_MAX_BATCHES = 4096
_MAX_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class _BandSums:
    band: str
    reader: str
    format: str
    weighted_rssi: float = 0.0
    count: int = 0
    last_seen: float = 0.0
    address: str = ""
    telemetry: EddystoneTlm | None = None


class RecentBatches:
    """The raw payloads of the batches accepted lately, oldest first."""

    def __init__(self) -> None:
        self._payloads: collections.deque[tuple[str, bytes]] = collections.deque()
        self._bytes = 0

    def add(self, reader_id: str, payload: bytes) -> None:
        """Keep one accepted batch; the oldest ones go when the queue is full."""
        self._payloads.append((reader_id, payload))
        self._bytes += len(payload)
        while len(self._payloads) > _MAX_BATCHES or self._bytes > _MAX_BYTES:
            _reader, dropped = self._payloads.popleft()
            self._bytes -= len(dropped)

    def nearby(
        self,
        bands: SiteBands,
        now: float,
        window_s: float,
        reader: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the site bands heard in the last ``window_s`` seconds.

        Each band is listed once, with the reader that heard it strongest
        (the count-weighted mean RSSI), strongest band first.
        """
        since = now - window_s
        sums: dict[tuple[str, str], _BandSums] = {}
        telemetry: dict[str, EddystoneTlm] = {}
        seen_batches: set[tuple[str, str, int]] = set()
        for reader_id, payload in reversed(self._payloads):
            if reader is not None and reader_id != reader:
                continue
            try:
                batch = parse_batch(reader_id, envelope.decode(payload).data)
            except PayloadError:
                continue
            if batch.t < since:
                # Batches arrive roughly in time order, but a reader's backlog
                # may be older than newer batches of other readers.
                continue
            batch_key = (reader_id, batch.boot, batch.seq)
            if batch_key in seen_batches:
                continue  # a QoS 1 duplicate
            seen_batches.add(batch_key)
            for sighting in batch.sightings:
                if sighting.t < since:
                    continue
                match = bands.identify(sighting.advert, sighting.t)
                if not isinstance(match, BandMatch):
                    tlm = _telemetry_frame(sighting.advert)
                    if tlm is not None:
                        telemetry[sighting.address] = tlm
                    continue
                key = (match.band_id, reader_id)
                entry = sums.get(key)
                if entry is None:
                    entry = sums[key] = _BandSums(
                        match.band_id, reader_id, match.format
                    )
                entry.weighted_rssi += sighting.rssi_dbm * sighting.count
                entry.count += sighting.count
                if sighting.t >= entry.last_seen:
                    entry.last_seen = sighting.t
                    entry.address = sighting.address
                if match.telemetry is not None:
                    entry.telemetry = match.telemetry
        return _strongest_per_band(sums, telemetry)


def _telemetry_frame(advert: bytes) -> EddystoneTlm | None:
    frames = decode_advert(advert).frames
    return next((frame for frame in frames if type(frame) is EddystoneTlm), None)


def _strongest_per_band(
    sums: dict[tuple[str, str], _BandSums], telemetry: dict[str, EddystoneTlm]
) -> list[dict[str, Any]]:
    best: dict[str, _BandSums] = {}
    for entry in sums.values():
        current = best.get(entry.band)
        if current is None or _mean(entry) > _mean(current):
            best[entry.band] = entry
    result = []
    for entry in sorted(best.values(), key=lambda e: (-_mean(e), e.band)):
        tlm = entry.telemetry or telemetry.get(entry.address)
        result.append(
            {
                "band": entry.band,
                "reader": entry.reader,
                "rssi": round(_mean(entry), 1),
                "n": entry.count,
                "last_seen": round(entry.last_seen, 3),
                "format": entry.format,
                # Eddystone-TLM sends 0 mV for a battery it does not measure.
                "battery_mv": tlm.battery_mv or None if tlm is not None else None,
                "temperature_c": tlm.temperature_c if tlm is not None else None,
            }
        )
    return result


def _mean(entry: _BandSums) -> float:
    return entry.weighted_rssi / entry.count
