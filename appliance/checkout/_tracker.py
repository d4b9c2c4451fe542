"""The check-out decision: who has crossed an exit, from summarised sightings.

A band checks out at an exit when the mean of its power-corrected RSSI over
a short window at one reader stays at or above that reader's threshold for
the minimum dwell. The window must also contain enough adverts to trust the
mean. The decision runs on the sightings' own timestamps, never on arrival
time, so a replayed capture or a reader's buffered backlog gives the same
result as the live night. Absence of sightings never checks anyone out.
"""

from __future__ import annotations

from dataclasses import dataclass

# Measured power that the RSSI is normalised to: a common 1 m calibration.
REFERENCE_POWER_DBM = -59.0
# Plausible 1 m measured powers of BLE tags. Outside this range the advert's
# own figure is ignored and the raw RSSI decides, because zero or positive is
# impossible.
_MIN_PLAUSIBLE_POWER_DBM = -100
_MAX_PLAUSIBLE_POWER_DBM = -1
# A band unseen by a reader for longer than this starts a new approach.
_TRACK_GAP_S = 4.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision parameters of one reader."""

    threshold_dbm: float
    min_dwell_s: float
    window_s: float
    min_adverts: int


@dataclass(frozen=True, slots=True)
class Crossing:
    """A band that met the check-out rule at a reader."""

    band_id: str
    reader_id: str
    seen_at: float
    rssi_dbm: float


@dataclass(slots=True)
class _Track:
    last_t: float
    # A window has a handful of samples, so a list (80 bytes for three in
    # CPython 3.11) beats a deque (760 bytes) with thousands of tracks.
    samples: list[tuple[float, float, int]]
    weighted_sum: float
    count: int
    above_since: float | None
    fired: bool


def power_correction_db(measured_power_dbm: int | None) -> float:
    """Return the dB to subtract from a band's RSSI for its measured power.

    An impossible or missing measured power gives 0, so it never decides a
    distance.
    """
    if measured_power_dbm is None or not (
        _MIN_PLAUSIBLE_POWER_DBM <= measured_power_dbm <= _MAX_PLAUSIBLE_POWER_DBM
    ):
        return 0.0
    return measured_power_dbm - REFERENCE_POWER_DBM


def corrected_rssi(rssi_dbm: float, measured_power_dbm: int | None) -> float:
    """Return the RSSI as if the band advertised at the reference 1 m power.

    An impossible or missing measured power leaves the RSSI as it is, so it
    never decides a distance.
    """
    return rssi_dbm - power_correction_db(measured_power_dbm)


class ExitTracker:
    """Windowed RSSI per band and reader, reporting bands that cross an exit.

    One band fires at most once per approach to a reader. Deduplication
    across readers and across the exit window belongs to the caller, because
    it must survive a restart and so lives in the store.
    """

    def __init__(self) -> None:
        self._tracks: dict[tuple[str, str], _Track] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def observe(
        self,
        band_id: str,
        reader_id: str,
        t: float,
        rssi_dbm: float,
        thresholds: Thresholds,
        count: int = 1,
    ) -> Crossing | None:
        """Add one summarised sighting of ``count`` adverts; return a Crossing
        when the rule is met."""
        key = (band_id, reader_id)
        track = self._tracks.get(key)
        if track is None or t - track.last_t > _TRACK_GAP_S:
            track = _Track(t, [], 0.0, 0, None, False)
            self._tracks[key] = track
        elif t < track.last_t:
            return None  # out-of-order sighting from a reader's replayed backlog
        # The mean of every advert heard in the window, weighted by count, so
        # an interval with one advert weighs less than one with four. The
        # sums are kept running; this runs for every sighting.
        samples = track.samples
        samples.append((t, rssi_dbm, count))
        weighted_sum = track.weighted_sum + rssi_dbm * count
        total = track.count + count
        horizon = t - thresholds.window_s
        # The length check keeps the new sample even when t is so large
        # (1e308) that t - window_s == t.
        while len(samples) > 1 and samples[0][0] <= horizon:
            _old_t, old_rssi, old_count = samples.pop(0)
            weighted_sum -= old_rssi * old_count
            total -= old_count
        track.weighted_sum = weighted_sum
        track.count = total
        track.last_t = t
        smoothed = weighted_sum / total
        if (
            smoothed >= thresholds.threshold_dbm
            and track.count >= thresholds.min_adverts
        ):
            if track.above_since is None:
                track.above_since = t
        else:
            # No hysteresis: a guest standing near the door must not inch
            # through the dwell on noise that dips and recovers.
            track.above_since = None
        if (
            not track.fired
            and track.above_since is not None
            and t - track.above_since >= thresholds.min_dwell_s
        ):
            track.fired = True
            return Crossing(band_id, reader_id, t, round(smoothed, 1))
        return None

    def forget_before(self, t: float) -> int:
        """Drop tracks not updated since ``t``; return how many were dropped."""
        stale = [key for key, track in self._tracks.items() if track.last_t < t]
        for key in stale:
            del self._tracks[key]
        return len(stale)

    def bands_near(self, reader_id: str, since: float) -> int:
        """Count bands that ``reader_id`` has reported since ``since``."""
        return sum(
            1
            for (_band, reader), track in self._tracks.items()
            if reader == reader_id and track.last_t >= since
        )
