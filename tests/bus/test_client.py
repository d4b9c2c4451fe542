"""The bus client against a real mosquitto: requests, duplicates, last will.

Helper clients log in with the box's account, which may read and write every
topic of the site, so a test can play requester and responder on any topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from conftest import TokenFactory, strong_batches
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.config import SiteConfig
from appliance.errors import RequestError
from appliance.runtime import Box
from provisioning import SiteCredentials

TIMEOUT_S = 10.0
BOX_ACCOUNT = "box-box-1"
# The action name a caller passes to Bus.request. The request goes out on the
# caller's own topic, so the responder subscribes to every device's echo/run.
ECHO_ACTION = "nightbox/test/api/echo/run"
ECHO_FILTER = "nightbox/test/+/+/api/echo/run"
CALLER_ECHO_TOPIC = "nightbox/test/box/caller/api/echo/run"
RAW_REPLY_TOPIC = "nightbox/test/box/raw/reply"


@contextlib.asynccontextmanager
async def serving(
    make_client: Any, device_id: str, topic_filter: str
) -> AsyncIterator[tuple[Bus, asyncio.Queue[Incoming]]]:
    """Connect a helper client that queues every message on ``topic_filter``.

    The subscription is registered before the first connect, so the broker
    has acknowledged it by the time ``connected`` is set.
    """
    received: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        received.put_nowait(incoming)

    async with make_client(
        BOX_ACCOUNT, "box", device_id, announce=False, wait=False
    ) as bus:
        bus.subscribe(topic_filter, on_message)
        await asyncio.wait_for(bus.connected.wait(), TIMEOUT_S)
        yield bus, received


@contextlib.asynccontextmanager
async def watching(
    broker: BrokerHandle, credentials: SiteCredentials, topic: str
) -> AsyncIterator[asyncio.Queue[aiomqtt.Message]]:
    """Subscribe as the observer with the MQTT 5 Retain As Published option.

    With that option the broker keeps the retain flag on live messages, so a
    test can check whether a will or an ``offline`` was published retained.
    """
    account = credentials.account("observer")
    received: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=account.username,
        password=account.password,
        identifier=f"test-watch-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
    ) as client:
        await client.subscribe(
            topic, options=SubscribeOptions(qos=1, retainAsPublished=True)
        )

        async def pump() -> None:
            async for message in client.messages:
                received.put_nowait(message)

        task = asyncio.create_task(pump())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def next_message(queue: asyncio.Queue[Any]) -> Any:
    """Return the next queued message, failing after TIMEOUT_S."""
    return await asyncio.wait_for(queue.get(), TIMEOUT_S)


def kit_request(key: str, band: str = "ib-1-7") -> dict[str, Any]:
    """Return the ``data`` of a kit request at station kit-1."""
    return {"station": "kit-1", "band": band, "idempotency_key": key}


async def sync_with_box(
    box: Box, requester: Bus, replies: asyncio.Queue[Incoming]
) -> None:
    """Wait until the box has handled every message published before this call.

    ``requester`` comes from :func:`serving` on ``RAW_REPLY_TOPIC``. The box
    handles messages in arrival order. mosquitto 2.0 queues a QoS 1 message
    for its subscribers before it sends the PUBACK (``handle__publish``), so
    a message whose PUBACK any client has received arrives first. A request
    whose deadline has passed gets an immediate ``deadline-exceeded`` reply
    and changes nothing.
    """
    request = envelope.encode(requester.settings.src, {"data": {}, "deadline": 1.0})
    await asyncio.wait_for(
        requester.publish(
            box.bus.topics.device_api("box", "raw", "kits", "issue"),
            request,
            response_topic=RAW_REPLY_TOPIC,
            correlation=b"sync",
        ),
        TIMEOUT_S,
    )
    reply = await next_message(replies)
    assert reply.correlation == b"sync"
    assert envelope.decode(reply.payload).body["error"]["code"] == "deadline-exceeded"


async def test_bus_request_reply_round_trip(make_client: Any) -> None:
    async with (
        serving(make_client, "echo", ECHO_FILTER) as (responder, requests),
        make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller,
    ):
        pending = asyncio.create_task(
            caller.request(ECHO_ACTION, {"n": 1}, timeout_s=TIMEOUT_S)
        )
        incoming = await next_message(requests)
        await responder.respond(
            incoming, data={"echo": envelope.decode(incoming.payload).data["n"]}
        )
        result = await asyncio.wait_for(pending, TIMEOUT_S)

    request = envelope.decode(incoming.payload)
    assert result == {"echo": 1}
    assert incoming.topic == CALLER_ECHO_TOPIC
    assert incoming.response_topic == "nightbox/test/box/caller/reply"
    assert incoming.correlation is not None
    assert len(incoming.correlation) == 16
    assert request.src == "box/caller"
    assert request.body["deadline"] > time.time()
    assert caller._pending == {}


async def test_bus_request_other_topic_unchanged(make_client: Any) -> None:
    # Only names under nightbox/<site>/api/ move to the caller's own topic.
    topic = "nightbox/test/box/echo/inbox"

    async with (
        serving(make_client, "echo", topic) as (responder, requests),
        make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller,
    ):
        pending = asyncio.create_task(
            caller.request(topic, {"n": 3}, timeout_s=TIMEOUT_S)
        )
        incoming = await next_message(requests)
        await responder.respond(incoming, data={"echo": 3})
        result = await asyncio.wait_for(pending, TIMEOUT_S)

    assert result == {"echo": 3}
    assert incoming.topic == topic
    assert incoming.response_topic == "nightbox/test/box/caller/reply"


async def test_bus_request_correlation_matches_replies(make_client: Any) -> None:
    async with (
        serving(make_client, "echo", ECHO_FILTER) as (responder, requests),
        make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller,
    ):
        pending = [
            asyncio.create_task(
                caller.request(ECHO_ACTION, {"n": n}, timeout_s=TIMEOUT_S)
            )
            for n in range(4)
        ]
        received = [await next_message(requests) for _ in pending]
        # Reply in reverse order: only the correlation data pairs them up.
        for incoming in reversed(received):
            number = envelope.decode(incoming.payload).data["n"]
            await responder.respond(incoming, data={"echo": number})
        results = await asyncio.wait_for(asyncio.gather(*pending), TIMEOUT_S)

    assert results == [{"echo": n} for n in range(4)]
    assert len({incoming.correlation for incoming in received}) == 4


async def test_bus_request_error_reply_raises(make_client: Any) -> None:
    async with (
        serving(make_client, "echo", ECHO_FILTER) as (responder, requests),
        make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller,
    ):
        first = asyncio.create_task(
            caller.request(ECHO_ACTION, {}, timeout_s=TIMEOUT_S)
        )
        await responder.respond(
            await next_message(requests),
            error=("out-of-stock", "kit station kit-1 has no kits left"),
        )
        with pytest.raises(RequestError) as tuple_error:
            await asyncio.wait_for(first, TIMEOUT_S)

        second = asyncio.create_task(
            caller.request(ECHO_ACTION, {}, timeout_s=TIMEOUT_S)
        )
        await responder.respond(
            await next_message(requests),
            error={"code": "already-issued", "message": "band took a kit"},
        )
        with pytest.raises(RequestError) as dict_error:
            await asyncio.wait_for(second, TIMEOUT_S)

    assert tuple_error.value.code == "out-of-stock"
    assert tuple_error.value.message == "kit station kit-1 has no kits left"
    assert dict_error.value.code == "already-issued"
    assert dict_error.value.message == "band took a kit"


async def test_bus_request_unanswered_times_out(make_client: Any) -> None:
    async with make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller:
        started = time.monotonic()
        with pytest.raises(RequestError) as caught:
            await caller.request("nightbox/test/api/nobody/home", {}, timeout_s=0.3)
        elapsed_s = time.monotonic() - started

    assert caught.value.code == "timeout"
    assert "nightbox/test/box/caller/api/nobody/home" in caught.value.message
    assert 0.3 <= elapsed_s < 3.0
    assert caller._pending == {}


async def test_bus_request_late_reply_ignored(make_client: Any) -> None:
    async with (
        serving(make_client, "echo", ECHO_FILTER) as (responder, requests),
        make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller,
    ):
        with pytest.raises(RequestError):
            await caller.request(ECHO_ACTION, {"n": 1}, timeout_s=0.3)
        late = await next_message(requests)
        await responder.respond(late, data={"echo": "late"})

        pending = asyncio.create_task(
            caller.request(ECHO_ACTION, {"n": 2}, timeout_s=TIMEOUT_S)
        )
        await responder.respond(await next_message(requests), data={"echo": 2})
        result = await asyncio.wait_for(pending, TIMEOUT_S)

    assert result == {"echo": 2}
    assert caller.stats.handler_errors == 0


async def test_bus_request_malformed_reply_raises(make_client: Any) -> None:
    async with (
        serving(make_client, "echo", ECHO_FILTER) as (responder, requests),
        make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller,
    ):
        pending = asyncio.create_task(
            caller.request(ECHO_ACTION, {}, timeout_s=TIMEOUT_S)
        )
        incoming = await next_message(requests)
        assert incoming.response_topic is not None
        await asyncio.wait_for(
            responder.publish(
                incoming.response_topic,
                b"\xffnot json",
                correlation=incoming.correlation,
            ),
            TIMEOUT_S,
        )
        with pytest.raises(RequestError) as caught:
            await asyncio.wait_for(pending, TIMEOUT_S)

    assert caught.value.code == "bad-reply"
    assert "not UTF-8 JSON" in caught.value.message


async def test_bus_respond_without_response_topic(make_client: Any) -> None:
    async with serving(make_client, "echo", ECHO_FILTER) as (responder, requests):
        await asyncio.wait_for(
            responder.publish(CALLER_ECHO_TOPIC, envelope.encode("box/echo", {})),
            TIMEOUT_S,
        )
        incoming = await next_message(requests)
        published = responder.stats.published

        await responder.respond(incoming, data={"ignored": True})

    assert incoming.response_topic is None
    assert responder.stats.published == published


async def test_bus_duplicate_sightings_batch_processed_once(
    box: Box, make_client: Any, site_config: SiteConfig
) -> None:
    batch = strong_batches(site_config, "exit-1", 7, "dup1")[0]
    payload = envelope.encode("reader/exit-1", {"data": batch})

    async with (
        make_client("reader-exit-1", "reader", "exit-1") as reader,
        serving(make_client, "raw", RAW_REPLY_TOPIC) as (requester, replies),
    ):
        topic = reader.topics.sightings("exit-1")
        for _ in range(2):
            await asyncio.wait_for(reader.publish(topic, payload), TIMEOUT_S)
        await sync_with_box(box, requester, replies)

    assert box.checkouts.stats.batches == 1
    assert box.checkouts.stats.duplicate_batches == 1
    assert box.checkouts.stats.sightings == 1
    assert box.bus.stats.handler_errors == 0


async def test_bus_duplicate_batches_one_checkout(
    box: Box, make_client: Any, site_config: SiteConfig
) -> None:
    payloads = [
        envelope.encode("reader/exit-1", {"data": batch})
        for batch in strong_batches(site_config, "exit-1", 7, "dup2")
    ]

    async with (
        make_client("reader-exit-1", "reader", "exit-1") as reader,
        serving(make_client, "raw", RAW_REPLY_TOPIC) as (requester, replies),
    ):
        topic = reader.topics.sightings("exit-1")
        for payload in payloads:
            # A QoS 1 redelivery repeats the same bytes, envelope id included.
            for _ in range(2):
                await asyncio.wait_for(reader.publish(topic, payload), TIMEOUT_S)
        await sync_with_box(box, requester, replies)

    assert box.checkouts.stats.batches == len(payloads)
    assert box.checkouts.stats.duplicate_batches == len(payloads)
    assert box.checkouts.stats.checkouts == 1
    assert box.store.query("SELECT band, reader FROM checkouts") == [
        ("ib-1-7", "exit-1")
    ]


async def test_bus_kit_retry_same_key_one_issue(box: Box, make_client: Any) -> None:
    topic = box.bus.topics.api("kits", "issue")

    async with make_client("reader-kit-1", "reader", "kit-1") as kit_reader:
        first = await kit_reader.request(
            topic, kit_request("retry-key-1"), timeout_s=TIMEOUT_S
        )
        # Each request() builds a new envelope id and correlation data.
        again = await kit_reader.request(
            topic, kit_request("retry-key-1"), timeout_s=TIMEOUT_S
        )
        # The same key on a different request is a client bug, not a retry.
        with pytest.raises(RequestError) as reused:
            await kit_reader.request(
                topic, kit_request("retry-key-1", band="ib-1-99"), timeout_s=TIMEOUT_S
            )

    assert first == {
        "band": "ib-1-7",
        "station": "kit-1",
        "remaining": 4,
        "coupon": None,
    }
    assert again == first
    assert reused.value.code == "idempotency-key-reused"
    assert "retry-key-1" in reused.value.message
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 4}}
    assert box.store.query("SELECT band FROM kits") == [("ib-1-7",)]
    assert box.store.query("SELECT key FROM requests") == [("retry-key-1",)]
    assert box.store.query("SELECT COUNT(*) FROM outbox WHERE type = 'kit_issued'") == [
        (1,)
    ]
    assert box.requests.counts["replayed"] == 1
    assert box.requests.counts["idempotency-key-reused"] == 1


async def test_bus_kit_redelivery_same_envelope_one_issue(
    box: Box, make_client: Any, issue_token: TokenFactory
) -> None:
    # The request topic and RAW_REPLY_TOPIC both belong to device box/raw,
    # which is also the token's subject.
    topic = box.bus.topics.device_api("box", "raw", "kits", "issue")
    body = {
        "data": kit_request("redelivered-1"),
        "deadline": time.time() + 60,
        "token": issue_token("raw", "kits:issue"),
    }
    request = envelope.encode("box/raw", body, message_id="kit-request-1")

    async with serving(make_client, "raw", RAW_REPLY_TOPIC) as (requester, replies):
        for correlation in (b"first", b"second"):
            await asyncio.wait_for(
                requester.publish(
                    topic,
                    request,
                    response_topic=RAW_REPLY_TOPIC,
                    correlation=correlation,
                ),
                TIMEOUT_S,
            )
        answers = [await next_message(replies) for _ in range(2)]

    bodies = [envelope.decode(answer.payload).body for answer in answers]
    assert [answer.correlation for answer in answers] == [b"first", b"second"]
    assert bodies[0]["ok"] is True
    assert bodies[0]["data"] == bodies[1]["data"]
    assert bodies[0]["data"]["remaining"] == 4
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 4}}
    assert box.store.query("SELECT COUNT(*) FROM kits") == [(1,)]


async def test_bus_idempotency_key_reused_other_action(
    box: Box, make_client: Any, issue_token: TokenFactory
) -> None:
    token = issue_token("caller", "kits:issue", "optin:register")

    async with make_client(BOX_ACCOUNT, "box", "caller", announce=False) as caller:
        await caller.request(
            box.bus.topics.api("kits", "issue"),
            kit_request("shared-key-1"),
            timeout_s=TIMEOUT_S,
            token=token,
        )
        with pytest.raises(RequestError) as caught:
            await caller.request(
                box.bus.topics.api("optin", "register"),
                {
                    "band": "ib-1-7",
                    "email": "guest@example.org",
                    "consent": True,
                    "consent_text": "Send me one follow-up offer.",
                    "idempotency_key": "shared-key-1",
                },
                timeout_s=TIMEOUT_S,
                token=token,
            )

    assert caught.value.code == "idempotency-key-reused"
    assert "kits/issue" in caught.value.message
    assert box.store.query("SELECT COUNT(*) FROM optins") == [(0,)]


async def test_bus_last_will_on_dropped_connection(
    mosquitto: BrokerHandle, credentials: SiteCredentials, make_client: Any
) -> None:
    async with make_client("reader-exit-1", "reader", "exit-1") as reader:
        topic = reader.topics.availability("reader", "exit-1")
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        reader.on_connect(on_reconnect)
        async with watching(mosquitto, credentials, topic) as messages:
            before = await next_message(messages)
            assert reader._client is not None
            sock = reader._client._client.socket()
            assert isinstance(sock, socket.socket)
            # No DISCONNECT packet: to the broker this is a lost connection.
            sock.shutdown(socket.SHUT_RDWR)
            will = await next_message(messages)
            await asyncio.wait_for(reconnected.wait(), TIMEOUT_S)
            back = await next_message(messages)

        assert reader.stats.connects == 2

    assert (before.payload, before.retain) == (b"online", True)
    assert (will.payload, will.retain) == (b"offline", True)
    assert (back.payload, back.retain) == (b"online", True)


async def test_bus_clean_close_publishes_offline(
    mosquitto: BrokerHandle, credentials: SiteCredentials, make_client: Any
) -> None:
    topic = "nightbox/test/reader/exit-1/availability"

    async with watching(mosquitto, credentials, topic) as messages:
        async with make_client("reader-exit-1", "reader", "exit-1") as reader:
            online = await next_message(messages)
        offline = await next_message(messages)
    async with watching(mosquitto, credentials, topic) as later:
        retained = await next_message(later)

    assert reader.connected.is_set() is False
    assert (online.payload, online.retain) == (b"online", True)
    assert (offline.payload, offline.retain) == (b"offline", True)
    assert (retained.payload, retained.retain) == (b"offline", True)
