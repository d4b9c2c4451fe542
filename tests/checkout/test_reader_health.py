"""Reader health faults, through a running box, mosquitto and bus clients.

The site here times out fast (silence after 1 s, stall after 1.5 s) so each
fault is raised within a few seconds. An ``observer`` client watches the
events and the box's retained status, as the dashboard does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SITE_UUID, ClientFactory, make_site_config

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.clock import SystemClock
from appliance.config import CheckoutConfig, SiteConfig
from appliance.runtime import Box
from appliance.sim import _adverts
from provisioning import SiteCredentials

TIMEOUT_S = 10.0
BATCH_S = 0.2
# Far from the door: heard, but well under the -66 dBm threshold.
FAR_DBM = -85.0
BAND = _adverts.ibeacon(SITE_UUID, 1, 7, -59)

Predicate = Callable[[str, dict[str, Any]], bool]


@pytest.fixture
def site_config(tmp_path: Path) -> SiteConfig:
    """The test site with fault timeouts short enough for a test."""
    return make_site_config(
        tmp_path / "box", checkout=CheckoutConfig(silence_s=1.0, stall_s=1.5)
    )


class Inbox:
    """Every message an observer received, with bounded waits for one."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        self.messages.append((incoming.topic, json.loads(incoming.payload)))
        self._arrived.set()

    def matching(self, predicate: Predicate) -> list[dict[str, Any]]:
        return [body for topic, body in self.messages if predicate(topic, body)]

    async def wait_for(self, predicate: Predicate, description: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    found = self.matching(predicate)
                    if found:
                        return found[0]
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            seen = [topic for topic, _body in self.messages]
            pytest.fail(f"no {description} within {TIMEOUT_S} s; topics seen: {seen}")


def event(event_type: str, **fields: Any) -> Predicate:
    """Match an event of ``event_type`` whose data has ``fields``."""

    def matches(topic: str, body: dict[str, Any]) -> bool:
        data = body.get("data", {})
        return topic.endswith(f"/events/{event_type}") and all(
            data.get(key) == value for key, value in fields.items()
        )

    return matches


def status_with_fault(reader: str, kind: str) -> Predicate:
    def matches(topic: str, body: dict[str, Any]) -> bool:
        faults = body.get("data", {}).get("faults", [])
        return topic.endswith("/box/box-1/status") and any(
            fault["reader"] == reader and fault["kind"] == kind for fault in faults
        )

    return matches


@pytest.fixture
async def inbox(make_client: ClientFactory) -> AsyncIterator[Inbox]:
    """An observer subscribed to every event and the box status."""
    received = Inbox()
    async with make_client(
        "observer", "observer", "health", announce=False, wait=False
    ) as observer:
        # Subscribed before connecting, so no event can slip past.
        observer.subscribe(observer.topics.all_events, received.on_message)
        observer.subscribe(observer.topics.status("box", "box-1"), received.on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield received


async def send_batch(
    reader: Bus, seq: int, heard: int, sightings: list[dict[str, Any]]
) -> float:
    """Publish one batch stamped with the current time and return its ``t``."""
    t = round(time.time(), 3)
    batch = {
        "reader": reader.settings.device_id,
        "boot": "boot-a",
        "seq": seq,
        "t": t,
        "heard": heard,
        "sightings": sightings,
    }
    topic = reader.topics.sightings(reader.settings.device_id)
    await asyncio.wait_for(reader.publish_json(topic, {"data": batch}), TIMEOUT_S)
    return t


def far_band() -> list[dict[str, Any]]:
    return [{"t": time.time(), "rssi": FAR_DBM, "n": 3, "adv": BAND.hex()}]


class BatchSender:
    """Sends a batch every BATCH_S in the context. Setting ``heard`` to 0 stalls it."""

    def __init__(self, reader: Bus, heard: int) -> None:
        self.reader = reader
        self.heard = heard
        self.last_heard_t: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        seq = 0
        while True:
            seq += 1
            heard = self.heard
            t = await send_batch(self.reader, seq, heard, far_band() if heard else [])
            if heard:
                self.last_heard_t = t
            await asyncio.sleep(BATCH_S)

    async def __aenter__(self) -> BatchSender:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def checkout_count(box: Box) -> int:
    return len(box.store.query("SELECT band FROM checkouts"))


async def test_health_silent_reader_raises_fault(
    box: Box, make_client: ClientFactory, inbox: Inbox
) -> None:
    async with make_client("reader-exit-1", "reader", "exit-1") as exit_1:
        for seq in range(1, 4):
            await asyncio.sleep(BATCH_S)
            last_t = await send_batch(exit_1, seq, 3, far_band())

        raised = await inbox.wait_for(
            event("fault_raised", reader="exit-1", kind="reader-silent"),
            "reader-silent fault",
        )
        status = await inbox.wait_for(
            status_with_fault("exit-1", "reader-silent"), "box status with the fault"
        )

        # Fault times are rounded to 1 ms in the event.
        assert raised["data"]["since"] - last_t >= 1.0 - 0.001
        assert "exit-1" in raised["data"]["message"]
        assert [(f["reader"], f["kind"]) for f in box.status()["faults"]] == [
            ("exit-1", "reader-silent")
        ]
        assert len(status["data"]["faults"]) == 1
        # Readers that never sent a batch are not installed yet, not silent.
        assert len(inbox.matching(event("fault_raised"))) == 1
        assert inbox.matching(event("checkout")) == []
        assert checkout_count(box) == 0


async def test_health_silent_fault_clears(
    box: Box, make_client: ClientFactory, inbox: Inbox
) -> None:
    async with make_client("reader-exit-1", "reader", "exit-1") as exit_1:
        await send_batch(exit_1, 1, 3, far_band())
        await inbox.wait_for(
            event("fault_raised", reader="exit-1", kind="reader-silent"),
            "reader-silent fault",
        )

        await send_batch(exit_1, 2, 3, far_band())
        cleared = await inbox.wait_for(
            event("fault_cleared", reader="exit-1", kind="reader-silent"),
            "fault_cleared event",
        )

        assert cleared["data"]["reader"] == "exit-1"
        assert box.status()["faults"] == []
        assert inbox.matching(event("checkout")) == []
        assert checkout_count(box) == 0


async def test_health_stalled_scan_raises_fault(
    box: Box, make_client: ClientFactory, inbox: Inbox
) -> None:
    async with (
        make_client("reader-exit-1", "reader", "exit-1") as exit_1,
        make_client("reader-exit-2", "reader", "exit-2") as exit_2,
        BatchSender(exit_1, heard=5),
        BatchSender(exit_2, heard=4) as stalling,
    ):
        await asyncio.sleep(3 * BATCH_S)
        stalling.heard = 0

        raised = await inbox.wait_for(
            event("fault_raised", reader="exit-2", kind="scan-stalled"),
            "scan-stalled fault",
        )
        await inbox.wait_for(
            status_with_fault("exit-2", "scan-stalled"), "box status with the fault"
        )
        faults = [(f["reader"], f["kind"]) for f in box.status()["faults"]]

        last_heard_t = stalling.last_heard_t
        stalling.heard = 4
        cleared = await inbox.wait_for(
            event("fault_cleared", reader="exit-2", kind="scan-stalled"),
            "fault_cleared event",
        )

    assert last_heard_t is not None
    assert raised["data"]["since"] - last_heard_t >= 1.5 - 0.001
    assert "exit-2" in raised["data"]["message"]
    assert faults == [("exit-2", "scan-stalled")]
    assert cleared["data"]["kind"] == "scan-stalled"
    assert box.status()["faults"] == []
    # The stalled reader kept sending, so it was never silent.
    assert inbox.matching(event("fault_raised", kind="reader-silent")) == []
    assert inbox.matching(event("checkout")) == []
    assert checkout_count(box) == 0


async def test_health_all_quiet_is_not_stall(
    box: Box, make_client: ClientFactory, inbox: Inbox
) -> None:
    # With no reader hearing anything, the stall rule has nothing to
    # compare against, so it stays quiet instead of flagging every reader.
    async with (
        make_client("reader-exit-1", "reader", "exit-1") as exit_1,
        make_client("reader-exit-2", "reader", "exit-2") as exit_2,
        BatchSender(exit_1, heard=4) as first,
        BatchSender(exit_2, heard=4) as second,
    ):
        await asyncio.sleep(3 * BATCH_S)
        first.heard = second.heard = 0
        await asyncio.sleep(3.0)

    assert inbox.matching(event("fault_raised")) == []
    assert box.status()["faults"] == []


async def test_health_stall_raised_between_timer_ticks(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
    inbox: Inbox,
) -> None:
    # The timer never fires during this test, so the stall must be raised
    # by the batches themselves, as in the demo's fast simulated night.
    async with (
        Box(
            site_config,
            SystemClock(),
            credentials,
            mosquitto.host,
            mosquitto.port,
            health_interval_s=3600.0,
        ) as box,
        make_client("reader-exit-1", "reader", "exit-1") as exit_1,
        make_client("reader-exit-2", "reader", "exit-2") as exit_2,
    ):
        await asyncio.wait_for(box.bus.connected.wait(), TIMEOUT_S)
        async with (
            BatchSender(exit_1, heard=5),
            BatchSender(exit_2, heard=4) as stalling,
        ):
            await asyncio.sleep(3 * BATCH_S)
            stalling.heard = 0
            raised = await inbox.wait_for(
                event("fault_raised", reader="exit-2", kind="scan-stalled"),
                "scan-stalled fault",
            )

    assert raised["data"]["reader"] == "exit-2"
