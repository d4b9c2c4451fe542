"""A mosquitto restart in the middle of the night, with every client connected.

The broker runs with ``persistence false``, so the restart also drops every
retained message and subscription. Each client must reconnect, resubscribe
and publish its retained ``online`` again without help.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from conftest import strong_batches

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.config import SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials

TIMEOUT_S = 10.0


async def cross_exit(reader: Bus, batches: list[dict[str, Any]]) -> None:
    """Publish ``batches`` on the reader's sightings topic, one PUBACK at a time."""
    topic = reader.topics.sightings(reader.settings.device_id)
    for batch in batches:
        await asyncio.wait_for(reader.publish_json(topic, {"data": batch}), TIMEOUT_S)


async def next_event(events: asyncio.Queue[Incoming]) -> envelope.Envelope:
    """Return the next event the observer received, failing after TIMEOUT_S."""
    incoming = await asyncio.wait_for(events.get(), TIMEOUT_S)
    return envelope.decode(incoming.payload)


def reconnect_signal(bus: Bus) -> asyncio.Event:
    """Return an event that is set when ``bus`` has connected again.

    ``on_connect`` callbacks run after the client has resubscribed and
    published ``online``, so the event means the client is fully back.
    """
    reconnected = asyncio.Event()

    async def on_connect() -> None:
        reconnected.set()

    bus.on_connect(on_connect)
    return reconnected


@contextlib.asynccontextmanager
async def observing(
    make_client: Any, topic_filter: str
) -> AsyncIterator[tuple[Bus, asyncio.Queue[Incoming]]]:
    """Connect the observer with its subscription in place before ``connected``."""
    received: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        received.put_nowait(incoming)

    async with make_client(
        "observer", "observer", "dash", announce=False, wait=False
    ) as observer:
        observer.subscribe(topic_filter, on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield observer, received


async def retained_value(
    broker: BrokerHandle, credentials: SiteCredentials, topic: str
) -> bytes:
    """Return the retained payload of ``topic``, read by a fresh subscriber."""
    account = credentials.account("observer")
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=account.username,
        password=account.password,
        identifier=f"test-retained-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            async for message in client.messages:
                assert message.retain, f"{topic} has no retained message"
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError(f"no message on {topic}")


async def test_broker_restart_every_client_recovers(
    box: Box,
    make_client: Any,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    site_config: SiteConfig,
) -> None:
    box_availability = box.bus.topics.availability("box", "box-1")
    kits_topic = box.bus.topics.api("kits", "issue")

    async with (
        make_client("reader-exit-1", "reader", "exit-1") as exit_reader,
        make_client("reader-kit-1", "reader", "kit-1") as kit_reader,
        observing(make_client, box.bus.topics.all_events) as (observer, events),
    ):
        await cross_exit(
            exit_reader, strong_batches(site_config, "exit-1", 6, "night1", 1)
        )
        before = await next_event(events)
        clients = [box.bus, exit_reader, kit_reader, observer]
        signals = [reconnect_signal(client) for client in clients]

        await asyncio.wait_for(mosquitto.restart(), TIMEOUT_S)
        await asyncio.wait_for(
            asyncio.gather(*(signal.wait() for signal in signals)), TIMEOUT_S
        )

        await cross_exit(
            exit_reader, strong_batches(site_config, "exit-1", 7, "night1", 6)
        )
        after = await next_event(events)
        kit = await kit_reader.request(
            kits_topic,
            {"station": "kit-1", "band": "ib-1-7", "idempotency_key": "after-restart"},
            timeout_s=TIMEOUT_S,
        )
        box_online = await retained_value(mosquitto, credentials, box_availability)
        reader_online = await retained_value(
            mosquitto, credentials, exit_reader.topics.availability("reader", "exit-1")
        )

        assert [client.connected.is_set() for client in clients] == [True] * 4
        assert [client.stats.connects for client in clients] == [2] * 4

    assert (before.body["type"], before.data["band"]) == ("checkout", "ib-1-6")
    assert (after.body["type"], after.data["band"]) == ("checkout", "ib-1-7")
    assert after.body["seq"] > before.body["seq"]
    assert kit["remaining"] == 4
    assert box_online == b"online"
    assert reader_online == b"online"
    assert box.checkouts.stats.checkouts == 2
    assert box.checkouts.stats.batches == 10
    assert box.bus.stats.handler_errors == 0
    assert box.outbox.backlog == 0
    assert box.store.query("SELECT band FROM checkouts ORDER BY seen_at") == [
        ("ib-1-6",),
        ("ib-1-7",),
    ]


async def test_broker_restart_box_status_retained_again(
    box: Box, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    status_topic = box.bus.topics.status("box", "box-1")
    reconnected = reconnect_signal(box.bus)

    await asyncio.wait_for(mosquitto.restart(), TIMEOUT_S)
    await asyncio.wait_for(reconnected.wait(), TIMEOUT_S)
    status = envelope.decode(await retained_value(mosquitto, credentials, status_topic))

    assert status.src == "box/box-1"
    assert status.data["broker"] == "mosquitto"
    assert status.data["kit_stock"] == {"kit-1": {"initial": 5, "remaining": 5}}
