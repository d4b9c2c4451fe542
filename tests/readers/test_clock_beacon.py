"""The box's clock beacon, received by readers through mosquitto's ACL.

Readers speak MQTT 3.1.1 (umqtt), so the subscribers here do too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import orjson
import pytest

from appliance.bus.broker import BrokerHandle, start_broker
from appliance.clock import ManualClock, SystemClock
from appliance.config import BrokerConfig
from appliance.readers import CLOCK_INTERVAL_S, ClockBeacon
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.acl import Access, AccessPolicy
from provisioning.site_access import ReaderGrant, site_policy

TIMEOUT_S = 10.0


@pytest.fixture
async def reader_client(
    mosquitto: BrokerHandle, credentials: SiteCredentials
) -> AsyncIterator[aiomqtt.Client]:
    account = credentials.account("reader-exit-1")
    async with aiomqtt.Client(
        mosquitto.host,
        mosquitto.port,
        username=account.username,
        password=account.password,
        identifier="test-reader-exit-1",
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        yield client


async def first_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT_S):
        return await anext(client.messages)


async def test_clock_reader_receives_box_beacon(
    box: Box, reader_client: aiomqtt.Client
) -> None:
    # The box's own beacon, every 5 s, so this waits up to one interval.
    await reader_client.subscribe("nightbox/test/clock", qos=0)

    message = await asyncio.wait_for(
        first_message(reader_client), CLOCK_INTERVAL_S + TIMEOUT_S
    )

    body = orjson.loads(message.payload)  # type: ignore[arg-type]
    assert message.retain is False
    assert message.qos == 0
    assert body["v"] == 1
    assert body["src"] == "box/box-1"
    assert set(body["data"]) == {"t", "trusted"}
    # The test box runs on this machine's clock, vouched for as NTP.
    assert abs(body["data"]["t"] - time.time()) < 5.0
    assert body["data"]["trusted"] is True


async def test_clock_beacon_millisecond_time(
    box: Box, reader_client: aiomqtt.Client
) -> None:
    clock = ManualClock(1_780_000_000.123456)
    beacon = ClockBeacon(box.bus, clock, interval_s=0.05)
    await reader_client.subscribe("nightbox/test/clock", qos=0)
    await beacon.start()
    try:
        while True:
            message = await first_message(reader_client)
            body = orjson.loads(message.payload)  # type: ignore[arg-type]
            # The box's own 5 s beacon may come first; it has another time.
            if body["data"]["t"] == 1_780_000_000.123:
                break
    finally:
        await beacon.stop()

    assert b'"t":1780000000.123,' in message.payload  # type: ignore[operator]
    # A simulated clock counts as trusted in its own night.
    assert body["data"]["trusted"] is True


async def test_clock_beacon_calls_listeners(box: Box) -> None:
    payloads: list[bytes] = []
    three = asyncio.Event()

    def record(payload: bytes) -> None:
        payloads.append(payload)
        if len(payloads) == 3:
            three.set()

    def failing(_payload: bytes) -> None:
        raise OSError("port gone")

    beacon = ClockBeacon(box.bus, SystemClock(), interval_s=0.01)
    beacon.add_listener(failing)
    beacon.add_listener(record)
    await beacon.start()
    try:
        await asyncio.wait_for(three.wait(), TIMEOUT_S)
        beacon.remove_listener(record)
        count = len(payloads)
        await asyncio.sleep(0.05)
    finally:
        await beacon.stop()

    data = orjson.loads(payloads[0])["data"]
    assert abs(data["t"] - time.time()) < 5.0
    # Nothing has vouched for this clock.
    assert data["trusted"] is False
    # The failing listener stopped neither the beacon nor the others, and a
    # removed listener gets nothing more.
    assert count >= 3
    assert len(payloads) == count


async def test_clock_other_site_not_delivered(tmp_path: Path) -> None:
    # One mosquitto serves two sites, so the box of site "other" can publish
    # its clock where the reader of site "test" could subscribe to it.
    test_site = site_policy("test", "box-1", [ReaderGrant("exit-1", "exit")])
    other_site = site_policy("other", "box-9", [ReaderGrant("exit-9", "exit")])
    policy = AccessPolicy(
        {
            username: site.rules_for(username)
            for site in (test_site, other_site)
            for username in site.usernames
        }
    )
    credentials = SiteCredentials(tmp_path / "broker.json")
    broker = await start_broker(
        BrokerConfig(mode="mosquitto"), tmp_path / "run", credentials, policy
    )
    try:
        reader = credentials.account("reader-exit-1")
        other_box = credentials.account("box-box-9")
        async with (
            aiomqtt.Client(
                broker.host,
                broker.port,
                username=reader.username,
                password=reader.password,
                protocol=aiomqtt.ProtocolVersion.V311,
            ) as reader_client,
            aiomqtt.Client(
                broker.host,
                broker.port,
                username=other_box.username,
                password=other_box.password,
            ) as box_client,
        ):
            await reader_client.subscribe("nightbox/+/clock", qos=1)
            await box_client.publish("nightbox/other/clock", b"other", qos=1)
            await box_client.publish("nightbox/test/clock", b"forged", qos=1)
            await box_client.publish("nightbox/other/clock", b"other", qos=1)
            # The last message is the reader's own site's clock, published
            # by the box of site "test", so everything before it has arrived.
            test_box = credentials.account("box-box-1")
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                username=test_box.username,
                password=test_box.password,
            ) as own_box:
                await own_box.publish("nightbox/test/clock", b"own", qos=1)
                message = await first_message(reader_client)
    finally:
        await broker.stop()

    # mosquitto 2.0 grants the subscription but delivers only what the ACL
    # lets the reader read; the other box may not write to site "test".
    assert message.topic.value == "nightbox/test/clock"
    assert message.payload == b"own"


async def test_clock_reader_cannot_publish(
    box: Box, reader_client: aiomqtt.Client
) -> None:
    received: list[bytes] = []
    await reader_client.subscribe("nightbox/test/clock", qos=0)
    await reader_client.publish("nightbox/test/clock", b"forged", qos=1)

    async with asyncio.timeout(CLOCK_INTERVAL_S + TIMEOUT_S):
        async for message in reader_client.messages:
            received.append(message.payload)  # type: ignore[arg-type]
            break

    # mosquitto drops the denied publish, so the first message is the box's.
    assert received[0] != b"forged"
    assert orjson.loads(received[0])["src"] == "box/box-1"


@pytest.mark.parametrize("role", ["exit", "kit"])
def test_clock_policy_grants_read_only(role: str) -> None:
    policy = site_policy("test", "box-1", [ReaderGrant("r-1", role)])

    assert policy.allows("reader-r-1", "nightbox/test/clock", Access.READ)
    assert not policy.allows("reader-r-1", "nightbox/test/clock", Access.WRITE)
    assert not policy.allows("reader-r-1", "nightbox/other/clock", Access.READ)
    assert not policy.allows("reader-r-1", "nightbox/test/clock/x", Access.READ)
