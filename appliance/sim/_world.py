"""The night's ground truth: when each guest arrives, loiters and leaves, and
what each exit reader hears every second.

Radio model: log-distance path loss, RSSI = P(1 m) - 10 n log10(d) with
n = 2.0, Gaussian shadowing of 3 dB per advert, 75 % of adverts received,
nothing heard below -95 dBm, and 8 dB through the wall once a guest is
outside. Bands advertise at 4 Hz.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from appliance.sim._bands import SimBand, make_band

ADVERTS_PER_S = 4
# A guest who would leave this close to the end of the night stays instead.
# A pass ends at most 10 s after the leave time (a pause of up to 4 s, then
# 6 s walking away), so 30 s leaves the readers and the box time to finish.
LAST_DEPARTURE_MARGIN_S = 30.0
_Window = tuple[float, float, "Guest"]
_PATH_LOSS_EXPONENT = 2.0
_SHADOWING_DB = 3.0
_RECEPTION = 0.75
_SENSITIVITY_DBM = -95.0
_WALL_LOSS_DB = 8.0


@dataclass(slots=True)
class Guest:
    """One guest and what the simulator decided they do."""

    band: SimBand
    arrive_s: float
    leave_s: float | None
    exit_index: int
    closest_m: float
    walk_m_per_s: float
    pause_s: float
    loiter: tuple[int, float, float, float] | None
    opt_in: str | None
    kit_visit_s: float | None
    asks_twice: bool
    retries_same_key: bool

    def passing(self, t: float) -> tuple[int, float, bool] | None:
        """Return (exit, distance in m, outside) while near their exit, else None."""
        if self.leave_s is None:
            return None
        start = self.leave_s - 10.0
        end = self.leave_s + self.pause_s + 6.0
        if not start <= t <= end:
            return None
        if t < self.leave_s:
            along = self.walk_m_per_s * (t - self.leave_s)
        elif t <= self.leave_s + self.pause_s:
            along = 0.0
        else:
            along = self.walk_m_per_s * (t - self.leave_s - self.pause_s)
        return self.exit_index, math.hypot(along, self.closest_m), along > 1.5


class NightPlan:
    """Every guest's schedule, drawn from one seed."""

    def __init__(
        self, guests: int, exits: int, seed: int, start_s: float, duration_s: float
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.exits = exits
        self.start_s = start_s
        self.duration_s = duration_s
        self.guests = [self._draw_guest(index) for index in range(guests)]
        self._radio = random.Random(seed * 7919 + 1)
        # Per exit: windows not yet started (latest first) and those running.
        self._near: list[tuple[list[_Window], list[_Window]]] = [
            (list(reversed(self._windows(index))), []) for index in range(exits)
        ]

    @property
    def end_s(self) -> float:
        """Simulated time when the night ends."""
        return self.start_s + self.duration_s

    def _draw_guest(self, index: int) -> Guest:
        rng = self.rng
        band = make_band(index, rng, self.start_s)
        arrive = self.start_s + rng.uniform(0, 0.35 * self.duration_s)
        leave: float | None = None
        if rng.random() >= 0.03:  # a few stay past the end of the simulation
            leave = rng.uniform(arrive + 0.15 * self.duration_s, self.end_s - 60.0)
            leave = max(leave, arrive + 60.0)
            if leave >= self.end_s - LAST_DEPARTURE_MARGIN_S:
                leave = None
        loiter = None
        if rng.random() < 0.15:
            last = (leave or self.end_s) - 300.0
            if last > arrive + 60.0:
                start = rng.uniform(arrive + 30.0, last)
                loiter = (
                    rng.randrange(self.exits),
                    start,
                    rng.uniform(30, 180),
                    rng.uniform(4.5, 8.0),
                )
        opt_in = None
        if rng.random() < 0.4:
            opt_in = (
                f"guest{index}@example.org"
                if rng.random() < 0.7
                else f"wallet:{index:06d}"
            )
        kit_visit = None
        if leave is not None and rng.random() < 0.85:
            kit_visit = leave + rng.uniform(20.0, 120.0)
        return Guest(
            band=band,
            arrive_s=arrive,
            leave_s=leave,
            exit_index=rng.randrange(self.exits),
            closest_m=rng.uniform(0.3, 1.2),
            walk_m_per_s=rng.uniform(0.8, 1.4),
            pause_s=rng.choice((0.0, 0.0, 1.0, 2.0, 4.0)),
            loiter=loiter,
            opt_in=opt_in,
            kit_visit_s=kit_visit,
            asks_twice=rng.random() < 0.05,
            retries_same_key=rng.random() < 0.1,
        )

    def _windows(self, exit_index: int) -> list[tuple[float, float, Guest]]:
        windows: list[tuple[float, float, Guest]] = []
        for guest in self.guests:
            if guest.leave_s is not None and guest.exit_index == exit_index:
                windows.append(
                    (guest.leave_s - 10.0, guest.leave_s + guest.pause_s + 6.0, guest)
                )
            if guest.loiter is not None and guest.loiter[0] == exit_index:
                _exit, start, length, _distance = guest.loiter
                windows.append((start, start + length, guest))
        windows.sort(key=lambda window: (window[0], window[2].band.index))
        return windows

    def hear(
        self, exit_index: int, t: float, interval_s: float
    ) -> list[tuple[str, float, bytes, float]]:
        """Return what exit ``exit_index`` hears in the ``interval_s`` ending at ``t``.

        Each item is (address, RSSI in dBm, advert bytes, time heard).
        """
        pending, active = self._near[exit_index]
        while pending and pending[-1][0] <= t:
            active.append(pending.pop())
        active[:] = [window for window in active if window[1] >= t - interval_s]
        near = sorted(
            {window[2].band.index: window[2] for window in active}.values(),
            key=lambda g: g.band.index,
        )
        far = self._far_away(exit_index, t)
        heard: list[tuple[str, float, bytes, float]] = []
        for guest in near + far:
            distance, loss_db = self._distance(guest, exit_index, t)
            if distance is not None:
                self._transmit(guest, distance, loss_db, t, interval_s, heard)
        return heard

    def background_adverts(self, exit_index: int, t: float) -> int:
        """Return how many adverts of phones and other tags a reader hears."""
        return 4 + (exit_index * 13 + int(t * 2)) % 9

    def _far_away(self, exit_index: int, t: float) -> list[Guest]:
        # Inside the venue, now and then a band deep in the crowd reaches a
        # reader: each second, one guest in 17 per reader, 12-31 m away.
        second = int(t)
        return [
            guest
            for guest in self.guests[(exit_index - second) % 17 :: 17]
            if guest.arrive_s <= t
            and (guest.leave_s is None or t < guest.leave_s - 10.0)
        ]

    def _transmit(
        self,
        guest: Guest,
        distance: float,
        loss_db: float,
        t: float,
        interval_s: float,
        heard: list[tuple[str, float, bytes, float]],
    ) -> None:
        radio = self._radio
        slots = max(1, round(ADVERTS_PER_S * interval_s))
        for slot in range(slots):
            if radio.random() > _RECEPTION:
                continue
            moment = t - interval_s + (slot + radio.random()) * interval_s / slots
            rssi = (
                guest.band.true_power_dbm
                - 10 * _PATH_LOSS_EXPONENT * math.log10(max(distance, 0.1))
                - loss_db
                + radio.gauss(0.0, _SHADOWING_DB)
            )
            if rssi >= _SENSITIVITY_DBM:
                band = guest.band
                heard.append(
                    (
                        band.current_address(moment),
                        round(rssi),
                        band.advert(moment),
                        moment,
                    )
                )

    def _distance(
        self, guest: Guest, exit_index: int, t: float
    ) -> tuple[float | None, float]:
        passing = guest.passing(t)
        if passing is not None:
            at_exit, distance, outside = passing
            if at_exit == exit_index:
                return distance, _WALL_LOSS_DB if outside else 0.0
            return None, 0.0
        if guest.leave_s is not None and t > guest.leave_s:
            return None, 0.0
        if guest.loiter is not None:
            at_exit, start, length, distance = guest.loiter
            if at_exit == exit_index and start <= t <= start + length:
                return distance, 0.0
        if guest.band.index % 17 == (exit_index - int(t)) % 17:
            return 12.0 + (guest.band.index * 31 + int(t)) % 20, 0.0
        return None, 0.0
