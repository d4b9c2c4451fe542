"""Wall clocks that know whether they can be trusted.

A Raspberry Pi has no battery-backed clock, so after a power cut its wall
clock may be hours or years off until NTP, an upstream link or the operator
sets it. Every event records whether the clock was trusted when it happened;
the box orders its own events by sequence number, never by wall time.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Protocol


class TimeSource(StrEnum):
    """Source that vouched for the wall clock, if any."""

    UNTRUSTED = "untrusted"
    NTP = "ntp"
    UPSTREAM = "upstream"
    OPERATOR = "operator"
    SIMULATED = "simulated"


class Clock(Protocol):
    """A wall clock in Unix seconds plus the source that vouches for it."""

    def now(self) -> float:
        """Return the current wall time in Unix seconds."""
        ...

    @property
    def source(self) -> TimeSource:
        """Who vouched for :meth:`now`."""
        ...

    @property
    def trusted(self) -> bool:
        """Whether :meth:`now` is vouched for by anything."""
        ...


class SystemClock:
    """The host's wall clock, trusted only once something vouches for it."""

    def __init__(self, source: TimeSource = TimeSource.UNTRUSTED) -> None:
        self._source = source

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    @property
    def source(self) -> TimeSource:
        """Who vouched for the clock."""
        return self._source

    @property
    def trusted(self) -> bool:
        """Whether something vouched for the clock."""
        return self._source is not TimeSource.UNTRUSTED

    def vouch(self, source: TimeSource) -> None:
        """Record that ``source`` has set or confirmed the wall clock."""
        self._source = source


class ManualClock:
    """A clock that moves only when advanced; the simulated night drives it.

    The simulator and the box share one instance, so the box judges silence
    and expiry in the night's own time however fast the night runs.
    """

    def __init__(self, start_s: float) -> None:
        self._now = start_s

    def now(self) -> float:
        """Return the simulated wall time in Unix seconds."""
        return self._now

    def advance_to(self, t: float) -> None:
        """Move the clock forward to ``t``; it never goes back."""
        self._now = max(self._now, t)

    @property
    def source(self) -> TimeSource:
        """Always :attr:`TimeSource.SIMULATED`."""
        return TimeSource.SIMULATED

    @property
    def trusted(self) -> bool:
        """A simulated clock is the truth of its own night."""
        return True
