"""The check-out service: reader batches from the bus into committed check-outs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.checkout._batches import parse_batch
from appliance.checkout._health import Fault, HealthMonitor
from appliance.checkout._pipeline import CheckoutPipeline, PipelineStats
from appliance.clock import Clock
from appliance.config import SiteConfig
from appliance.errors import PayloadError
from appliance.store import Store
from appliance.wristbands import SiteBands

_LOGGER = logging.getLogger(__name__)

# Readers replay batches buffered while the box was unreachable with their
# original times, so old batches are normal for this long.
MAX_BACKLOG_S = 3600.0
# A batch from the future means the reader's clock is off.
MAX_AHEAD_S = 60.0


class CheckoutService:
    """Subscribes to every reader's sightings and watches reader health.

    Health faults are committed as ``fault_raised`` and ``fault_cleared``
    events and listed in the box status, so the dashboard shows a stalled
    reader instead of a quiet exit.
    """

    def __init__(
        self,
        bus: Bus,
        store: Store,
        config: SiteConfig,
        bands: SiteBands,
        clock: Clock,
        *,
        health_interval_s: float = 0.5,
    ) -> None:
        self._bus = bus
        self._store = store
        self._config = config
        self._clock = clock
        self._pipeline = CheckoutPipeline(config, store, bands)
        self._health = HealthMonitor(
            [reader.id for reader in config.readers],
            config.checkout.silence_s,
            config.checkout.stall_s,
        )
        self._health_interval_s = health_interval_s
        self._task: asyncio.Task[None] | None = None
        self._batch_listeners: list[Callable[[str, bytes], None]] = []

    @property
    def stats(self) -> PipelineStats:
        """Counters of the pipeline."""
        return self._pipeline.stats

    @property
    def faults(self) -> list[Fault]:
        """Open reader faults."""
        return self._health.open_faults

    def last_batch(self, reader_id: str) -> float | None:
        """Time of a reader's last batch."""
        return self._health.last_batch(reader_id)

    def add_batch_listener(self, listener: Callable[[str, bytes], None]) -> None:
        """Call ``listener(reader_id, payload)`` with every accepted batch.

        It runs on the sightings path, thousands of times a second, so it
        must only keep the payload; parse it later, when it is needed.
        """
        self._batch_listeners.append(listener)

    async def start(self) -> None:
        """Subscribe and start the health watch."""
        self._bus.subscribe(self._bus.topics.all_sightings, self._on_batch)
        self._task = asyncio.create_task(self._watch_health(), name="checkout-health")

    async def stop(self) -> None:
        """Stop the health watch."""
        await cancel_and_wait(self._task)

    async def _on_batch(self, incoming: Incoming) -> None:
        reader_id = incoming.topic.split("/")[-2]
        if self._config.reader(reader_id) is None:
            self._bus.reject(
                incoming, f"unknown reader {reader_id!r}", "unknown-reader"
            )
            self.stats.rejected["unknown-reader"] += 1
            return
        try:
            batch = parse_batch(reader_id, envelope.decode(incoming.payload).data)
        except PayloadError as err:
            self._bus.reject(incoming, str(err), "malformed-batch")
            self.stats.rejected["malformed-batch"] += 1
            return
        now = self._clock.now()
        if not now - MAX_BACKLOG_S <= batch.t <= now + MAX_AHEAD_S:
            self._bus.reject(
                incoming,
                f"batch time {batch.t} is {batch.t - now:+.0f} s from the box "
                "clock; readers must take their time from the box",
                "reader-clock",
            )
            self.stats.rejected["reader-clock"] += 1
            return
        bands, _checkouts = self._pipeline.ingest(batch)
        for listener in self._batch_listeners:
            listener(reader_id, incoming.payload)
        activity = bands if batch.heard is None else batch.heard
        cleared = self._health.record_batch(reader_id, now, activity)
        if cleared:
            self._commit_faults("fault_cleared", cleared)
        # Checking on every batch, not only on the timer, raises a stall
        # within one batch of being due however the timer task is scheduled.
        # The demo's simulated clock can pass a whole stall between two ticks.
        raised = self._health.check(self._clock.now())
        if raised:
            self._commit_faults("fault_raised", raised)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            raised = self._health.check(self._clock.now())
            if raised:
                self._commit_faults("fault_raised", raised)

    def _commit_faults(self, event_type: str, faults: list[Fault]) -> None:
        with self._store.transaction() as transaction:
            for fault in faults:
                transaction.emit(event_type, _fault_data(fault))
        for fault in faults:
            level = logging.WARNING if event_type == "fault_raised" else logging.INFO
            _LOGGER.log(level, "%s %s: %s", event_type, fault.kind, fault.message)


def _fault_data(fault: Fault) -> dict[str, Any]:
    return {
        "reader": fault.reader_id,
        "kind": fault.kind,
        "since": round(fault.since, 3),
        "message": fault.message,
    }
