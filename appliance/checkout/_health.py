"""Reader health: a silent or stalled reader is a fault, never an empty exit.

BlueZ can de-duplicate adverts and ESP32 scans can stall without an error, so
the box watches each reader's batches. No batch for ``silence_s`` raises
``reader-silent``; batches that report no adverts for ``stall_s`` while
other readers still hear some raise ``scan-stalled``. A venue is never
radio-silent (phones advertise constantly), so a reader that hears nothing
at all is broken, not idle. A fault clears when the reader hears adverts
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Fault:
    """An open health fault of one reader."""

    reader_id: str
    kind: str
    since: float
    message: str


@dataclass(slots=True)
class _ReaderState:
    first_batch_t: float | None = None
    last_batch_t: float | None = None
    last_heard_t: float | None = None
    faults: dict[str, Fault] = field(default_factory=dict)


class HealthMonitor:
    """Tracks batches per reader and turns silence into faults."""

    def __init__(self, reader_ids: list[str], silence_s: float, stall_s: float) -> None:
        self._readers = {reader_id: _ReaderState() for reader_id in reader_ids}
        self._silence_s = silence_s
        self._stall_s = stall_s
        self._last_heard_anywhere: float | None = None

    @property
    def open_faults(self) -> list[Fault]:
        """Every fault that is open now, by reader."""
        return [
            fault for state in self._readers.values() for fault in state.faults.values()
        ]

    def last_batch(self, reader_id: str) -> float | None:
        """Time of the reader's last batch, or None before its first."""
        state = self._readers.get(reader_id)
        return None if state is None else state.last_batch_t

    def record_batch(self, reader_id: str, t: float, heard: int) -> list[Fault]:
        """Note a batch that arrived at ``t`` (box time) in which the reader
        heard ``heard`` adverts; return the faults it cleared.

        Health is judged by arrival, not by the batch's own time, so a reader
        replaying batches buffered while it was offline counts as alive.
        """
        state = self._readers.setdefault(reader_id, _ReaderState())
        if state.first_batch_t is None:
            state.first_batch_t = t
        state.last_batch_t = (
            t if state.last_batch_t is None else max(state.last_batch_t, t)
        )
        cleared: list[Fault] = []
        silent = state.faults.pop("reader-silent", None)
        if silent is not None:
            cleared.append(_cleared(silent, f"reader {reader_id} sends batches again"))
        if heard:
            state.last_heard_t = t
            self._last_heard_anywhere = max(t, self._last_heard_anywhere or t)
            stalled = state.faults.pop("scan-stalled", None)
            if stalled is not None:
                cleared.append(
                    _cleared(stalled, f"reader {reader_id} hears adverts again")
                )
        return cleared

    def check(self, now: float) -> list[Fault]:
        """Raise the faults that are due at ``now``; return only the new ones."""
        raised: list[Fault] = []
        for reader_id, state in self._readers.items():
            if state.last_batch_t is None:
                continue  # never seen: not yet installed, not a fault
            if (
                now - state.last_batch_t > self._silence_s
                and "reader-silent" not in state.faults
            ):
                fault = Fault(
                    reader_id,
                    "reader-silent",
                    now,
                    f"no sightings batch from reader {reader_id} for "
                    f"{now - state.last_batch_t:.0f} s; check its power and uplink",
                )
                state.faults[fault.kind] = fault
                raised.append(fault)
            stalled = self._stalled_fault(reader_id, state, now)
            if stalled is not None:
                state.faults[stalled.kind] = stalled
                raised.append(stalled)
        return raised

    def _stalled_fault(
        self, reader_id: str, state: _ReaderState, now: float
    ) -> Fault | None:
        # A reader that has heard nothing since its first batch counts from
        # that batch, so a scan that is stalled from boot is caught too.
        heard_t = state.last_heard_t or state.first_batch_t
        others_hear = (
            self._last_heard_anywhere is not None
            and now - self._last_heard_anywhere <= self._stall_s / 2
        )
        if (
            heard_t is None
            or state.last_batch_t is None
            or now - heard_t <= self._stall_s
            or state.last_batch_t < heard_t
            or not others_hear
            or "scan-stalled" in state.faults
        ):
            return None
        return Fault(
            reader_id,
            "scan-stalled",
            now,
            f"reader {reader_id} has heard no adverts for {now - heard_t:.0f} s "
            "while other readers do; its BLE scan may have stalled",
        )


def _cleared(fault: Fault, message: str) -> Fault:
    return Fault(fault.reader_id, fault.kind, fault.since, message)
