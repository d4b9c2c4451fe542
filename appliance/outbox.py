"""Publishes committed events from the outbox to ``events/<type>``.

Commit, then tell: an event reaches the bus only after its transaction has
committed, and it is marked published only after the broker's PUBACK. After
a crash, anything unmarked is published again with the same id, and
consumers drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomqtt
import orjson

from appliance._tasks import cancel_and_wait
from appliance.bus.client import Bus
from appliance.store import OutboxEvent, Store

_LOGGER = logging.getLogger(__name__)

_WINDOW = 64
# Commits of this process wake the publisher at once. Those of another
# process (`nightbox token issue` on the same store) do not, so the
# publisher also looks for unpublished events this often, in seconds.
_POLL_INTERVAL_S = 1.0


class OutboxPublisher:
    """Drains the outbox in sequence order with a window of PUBACKs in flight."""

    def __init__(self, bus: Bus, store: Store, box_id: str) -> None:
        self._bus = bus
        self._store = store
        self._src = f"box/{box_id}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        store.on_commit(lambda _events: self._wake.set())
        bus.on_connect(self._on_connect)

    @property
    def backlog(self) -> int:
        """Events committed but not yet acknowledged by the broker."""
        row = self._store.query_one(
            "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"
        )
        return 0 if row is None else int(row[0])

    async def start(self) -> None:
        """Start draining; events left from before a restart go first."""
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="outbox-publisher")

    async def stop(self) -> None:
        """Stop draining; unpublished events stay in the outbox for next time."""
        await cancel_and_wait(self._task)

    async def _on_connect(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL_INTERVAL_S)
            self._wake.clear()
            try:
                while await self._publish_some():
                    pass
            except (aiomqtt.MqttError, TimeoutError) as err:
                _LOGGER.warning(
                    "Outbox publish interrupted (%s); retrying after reconnect", err
                )
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _publish_some(self) -> bool:
        events = self._store.unpublished(limit=_WINDOW)
        if not events:
            return False
        await self._bus.publish_batch([self._message(event) for event in events])
        self._store.mark_published([event.seq for event in events])
        self.published += len(events)
        return True

    def _message(self, event: OutboxEvent) -> tuple[str, bytes]:
        return self._bus.topics.event(event.type), event_payload(event, self._src)


def event_payload(event: OutboxEvent, src: str) -> bytes:
    """Encode an outbox event as its message body, on the local bus and upstream.

    ``src`` is ``box/<box id>``. The body is the same bytes wherever the
    event goes, so a consumer can compare or deduplicate copies by ``id``.
    """
    body = {
        "v": 1,
        "id": event.id,
        "ts": round(event.created_at, 3),
        "src": src,
        "type": event.type,
        "seq": event.seq,
        "clock_trusted": event.clock_trusted,
        "data": event.data,
    }
    return orjson.dumps(body)
