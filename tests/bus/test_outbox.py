"""The box's outbox publisher with events that another process commits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from conftest import ClientFactory

from appliance.bus.client import Incoming
from appliance.clock import SystemClock
from appliance.runtime import Box
from appliance.store import Store
from provisioning.site_access import box_username

TIMEOUT_S = 60.0


async def wait_until(condition: Callable[[], bool], description: str) -> None:
    """Poll ``condition`` until it holds, or fail naming ``description``."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, (
            f"timed out after {TIMEOUT_S} s waiting for {description}"
        )
        await asyncio.sleep(0.05)


def published_at(box: Box, seq: int) -> float | None:
    row = box.store.query_one("SELECT published_at FROM outbox WHERE seq = ?", (seq,))
    return None if row is None else row[0]


async def test_outbox_publishes_other_commits(
    box: Box, make_client: ClientFactory
) -> None:
    ids: list[str] = []

    async def record(incoming: Incoming) -> None:
        ids.append(orjson.loads(incoming.payload)["id"])

    box_id = box.config.box_id
    async with make_client(box_username(box_id), "box", "listener") as listener:
        listener.subscribe(box.bus.topics.event("#"), record)
        # The subscription goes out in a task, so a probe that arrives shows
        # that it is in place.
        await wait_until(lambda: listener.connected.is_set(), "the listener")
        while "probe" not in ids:
            await listener.publish(box.bus.topics.event("probe"), b'{"id": "probe"}')
            await asyncio.sleep(0.1)

        # Another process, as `nightbox token issue` is, commits an event
        # that no commit listener of the running box receives.
        other = Store(box.store.path, SystemClock())
        try:
            with other.transaction() as transaction:
                event = transaction.emit("checkout", {"band": "ib-9-1"})
        finally:
            other.close()

        await wait_until(lambda: event.id in ids, "the event on the local bus")
        await wait_until(
            lambda: published_at(box, event.seq) is not None, "its published_at"
        )
