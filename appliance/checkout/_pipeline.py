"""From a parsed batch to committed check-outs, shared by the service and replay."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from appliance.checkout._batches import Batch
from appliance.checkout._tracker import ExitTracker, Thresholds, power_correction_db
from appliance.config import SiteConfig
from appliance.store import Store
from appliance.wristbands import (
    BandMatch,
    EddystoneEid,
    SiteBands,
    decode_advert_cached,
)

_LOGGER = logging.getLogger(__name__)

# Tracks idle for this long are dropped so memory stays flat all night.
_FORGET_AFTER_S = 60.0
# Distinct adverts whose identification is cached. When the cache is full,
# the oldest entry is evicted.
_IDENTITY_CACHE_SIZE = 4096
# A band match, or None for an advert that is no site band, with the dB to
# subtract from its RSSI for the band's measured power.
_Identity = tuple[BandMatch | None, float]


@dataclass
class PipelineStats:
    """Counters of the check-out pipeline, reported in the box status."""

    batches: int = 0
    duplicate_batches: int = 0
    sightings: int = 0
    band_sightings: int = 0
    checkouts: int = 0
    repeat_crossings: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class CheckoutPipeline:
    """Decode, track and commit: one check-out per band per exit window."""

    def __init__(self, config: SiteConfig, store: Store, bands: SiteBands) -> None:
        self._config = config
        self._store = store
        self._bands = bands
        self._tracker = ExitTracker()
        self._last_seq: dict[str, tuple[str, int]] = {}
        self._last_forget_t = 0.0
        self._identities: dict[bytes, _Identity] = {}
        self.stats = PipelineStats()
        defaults = config.checkout
        self._thresholds = {
            reader.id: Thresholds(
                reader.threshold_dbm
                if reader.threshold_dbm is not None
                else defaults.threshold_dbm,
                defaults.min_dwell_s,
                defaults.window_s,
                defaults.min_adverts,
            )
            for reader in config.readers
            if reader.role == "exit"
        }

    def is_exit(self, reader_id: str) -> bool:
        """Return whether ``reader_id`` is a configured exit reader."""
        return reader_id in self._thresholds

    def ingest(self, batch: Batch) -> tuple[int, list[dict[str, Any]]]:
        """Process one batch; return its known-band count and new check-outs.

        A batch whose (boot, seq) is not newer than the reader's last one is
        a QoS 1 duplicate or a replay and is skipped.
        """
        previous = self._last_seq.get(batch.reader_id)
        if (
            previous is not None
            and previous[0] == batch.boot
            and batch.seq <= previous[1]
        ):
            self.stats.duplicate_batches += 1
            return 0, []
        self._last_seq[batch.reader_id] = (batch.boot, batch.seq)
        self.stats.batches += 1
        for reason in batch.rejected:
            self.stats.rejected["malformed-sighting"] += 1
            _LOGGER.debug("Reader %s sent a bad sighting: %s", batch.reader_id, reason)
        thresholds = self._thresholds.get(batch.reader_id)
        bands = 0
        checkouts: list[dict[str, Any]] = []
        identities = self._identities
        observe = self._tracker.observe
        for sighting in batch.sightings:
            known = identities.get(sighting.advert)
            if known is None:
                known = self._identify(sighting.advert, sighting.t)
            match, correction_db = known
            if match is None:
                continue
            bands += 1
            if thresholds is None:
                continue  # a kit reader: its sightings feed health, not exits
            crossing = observe(
                match.band_id,
                batch.reader_id,
                sighting.t,
                sighting.rssi_dbm - correction_db,
                thresholds,
                sighting.count,
            )
            if crossing is not None:
                committed = self._commit(
                    crossing.band_id,
                    crossing.reader_id,
                    crossing.seen_at,
                    crossing.rssi_dbm,
                    match,
                )
                if committed is not None:
                    checkouts.append(committed)
        self.stats.sightings += len(batch.sightings)
        self.stats.band_sightings += bands
        foreign = len(batch.sightings) - bands
        if foreign:
            self.stats.rejected["not-a-site-band"] += foreign
        if batch.t - self._last_forget_t > _FORGET_AFTER_S:
            self._tracker.forget_before(batch.t - _FORGET_AFTER_S)
            self._last_forget_t = batch.t
        return bands, checkouts

    def _identify(self, advert: bytes, t: float) -> _Identity:
        # Readers resend the same adverts all night, so a sighting usually
        # repeats an advert seen before. Without an Eddystone-EID frame the
        # result depends on the bytes and the site configuration only, so it
        # is cached with the RSSI correction of the band's measured power. An
        # EID resolves differently as its rotation period passes.
        found = self._bands.identify(advert, t)
        if isinstance(found, BandMatch):
            correction_db = power_correction_db(found.measured_power_dbm)
            identity: _Identity = (found, correction_db)
        else:
            identity = (None, 0.0)
        frames = decode_advert_cached(advert).frames
        if not any(isinstance(frame, EddystoneEid) for frame in frames):
            if len(self._identities) >= _IDENTITY_CACHE_SIZE:
                del self._identities[next(iter(self._identities))]
            self._identities[advert] = identity
        return identity

    def _commit(
        self,
        band_id: str,
        reader_id: str,
        seen_at: float,
        rssi_dbm: float,
        match: BandMatch,
    ) -> dict[str, Any] | None:
        window_s = self._config.checkout.exit_window_s
        with self._store.transaction() as transaction:
            earlier = transaction.execute(
                "SELECT reader, seen_at FROM checkouts WHERE band = ?"
                " AND seen_at > ? AND seen_at < ? LIMIT 1",
                (band_id, seen_at - window_s, seen_at + window_s),
            ).fetchone()
            if earlier is not None:
                self.stats.repeat_crossings += 1
                return None
            data = {
                "band": band_id,
                "reader": reader_id,
                "seen_at": round(seen_at, 3),
                "rssi_dbm": rssi_dbm,
                "format": match.format,
            }
            event = transaction.emit("checkout", data)
            transaction.execute(
                "INSERT INTO checkouts (event_id, band, reader, seen_at, rssi_dbm)"
                " VALUES (?, ?, ?, ?, ?)",
                (event.id, band_id, reader_id, seen_at, rssi_dbm),
            )
        self.stats.checkouts += 1
        _LOGGER.info("Band %s checked out at %s", band_id, reader_id)
        return {"event_id": event.id, "seq": event.seq, **data}
