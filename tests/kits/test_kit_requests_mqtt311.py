"""Kit requests from a reader that speaks MQTT 3.1.1, through mosquitto and the box.

The reader names its reply topic and a correlation id in the envelope
(``reply_to``, ``corr``) because MQTT 3.1.1 has no properties for them, and
the box's reply repeats ``corr`` in its payload.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import SITE_UUID, ClientFactory
from mqtt311_reader import Mqtt311Reader, mqtt311_reader

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Incoming
from appliance.config import SiteConfig
from appliance.runtime import Box
from appliance.sim import _adverts
from provisioning import SiteCredentials

TIMEOUT_S = 10.0
# How long a test waits for a reply that must not come.
NO_REPLY_WAIT_S = 0.5


@pytest.fixture
async def reader(
    box: Box,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    site_config: SiteConfig,
) -> AsyncIterator[Mqtt311Reader]:
    async with mqtt311_reader(
        mosquitto, credentials, site_config.site_id, "kit-1"
    ) as client:
        yield client


def advert_hex(minor: int) -> str:
    return _adverts.ibeacon(SITE_UUID, 1, minor, -59).hex()


def kit_request(
    reader: Mqtt311Reader, minor: int, *, key: str | None = None, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reply_to": reader.reply_topic,
        "corr": uuid.uuid4().hex,
        "data": {
            "station": "kit-1",
            "adv": advert_hex(minor),
            "idempotency_key": key or f"0badc0de-{minor}",
        },
    }
    body.update(fields)
    return reader.envelope(body)


async def send(reader: Mqtt311Reader, body: dict[str, Any]) -> dict[str, Any]:
    """Publish a kit request and return the body of the reply that arrives."""
    await reader.publish(f"{reader.root}/api/kits/issue", body)
    topic, payload = await reader.next_message(TIMEOUT_S)
    assert topic == reader.reply_topic
    reply: dict[str, Any] = orjson.loads(payload)
    return reply


async def rejected(box: Box, kind: str) -> int:
    """Return the box's count of ``kind`` once it is non-zero, or 0 at timeout."""
    for _ in range(int(TIMEOUT_S / 0.05)):
        if box.bus.stats.rejected[kind]:
            break
        await asyncio.sleep(0.05)
    return box.bus.stats.rejected[kind]


async def test_mqtt311_kit_issued(box: Box, reader: Mqtt311Reader) -> None:
    body = kit_request(reader, 5)

    reply = await send(reader, body)

    assert reply["ok"] is True
    assert reply["corr"] == body["corr"]
    assert reply["data"]["band"] == "ib-1-5"
    assert reply["data"]["station"] == "kit-1"
    assert reply["data"]["remaining"] == 4
    assert box.store.query("SELECT band, station FROM kits") == [("ib-1-5", "kit-1")]


async def test_mqtt311_retry_same_reply(box: Box, reader: Mqtt311Reader) -> None:
    first = await send(reader, kit_request(reader, 6, key="retry-key-6"))
    retry_body = kit_request(reader, 6, key="retry-key-6")

    retry = await send(reader, retry_body)

    assert retry["ok"] is True
    assert retry["data"] == first["data"]
    # The retry is a new message, so its reply carries the retry's corr.
    assert retry["corr"] == retry_body["corr"]
    assert retry["corr"] != first["corr"]
    assert box.kits.stock()["kit-1"]["remaining"] == 4


async def test_mqtt311_refusal_carries_corr(box: Box, reader: Mqtt311Reader) -> None:
    await send(reader, kit_request(reader, 7, key="first-key-7"))
    body = kit_request(reader, 7, key="second-key-7")

    reply = await send(reader, body)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "already-issued"
    assert reply["corr"] == body["corr"]


@pytest.mark.parametrize(
    "reply_to",
    [
        "nightbox/test/reader/exit-1/reply",
        "nightbox/test/reader/+/reply",
        "nightbox/test/terminal/desk/reply",
        None,
        17,
    ],
    ids=["other-reader", "wildcard", "terminal", "missing", "number"],
)
async def test_mqtt311_reply_to_invalid(
    box: Box, reader: Mqtt311Reader, reply_to: Any
) -> None:
    body = kit_request(reader, 8)
    if reply_to is None:
        del body["reply_to"]
    else:
        body["reply_to"] = reply_to

    await reader.publish(f"{reader.root}/api/kits/issue", body)

    assert await rejected(box, "invalid-response-topic") == 1
    assert await reader.no_message(NO_REPLY_WAIT_S)
    assert box.store.query("SELECT * FROM kits") == []
    assert box.store.query("SELECT * FROM requests") == []


def unreadable_requests() -> list[tuple[str, bytes, str]]:
    """Return requests whose envelope cannot be read, with the reason named."""

    def with_fields(**fields: Any) -> bytes:
        body = {
            "v": 1,
            "id": uuid.uuid4().hex,
            "ts": 1780000124.1,
            "src": "reader/kit-1",
            "reply_to": "nightbox/test/reader/kit-1/reply",
            "corr": "3f9a0c21",
            "data": {"station": "kit-1", "adv": advert_hex(13)},
            **fields,
        }
        # The json module writes NaN and Infinity, which orjson cannot.
        return json.dumps(body).encode()

    padding = "x" * (300 * 1024)
    return [
        ("not-utf8", b"\xff{not json", "not UTF-8 JSON"),
        ("not-json", b"{not json", "not UTF-8 JSON"),
        ("empty", b"", "not UTF-8 JSON"),
        ("list", b"[1,2,3]", "must be a JSON object, not list"),
        ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "depth limit exceeded"),
        ("too-deep-and-large", b"[" * 200_000 + b"]" * 200_000, "exceeds the limit"),
        ("too-large", with_fields(pad=padding), "exceeds the limit"),
        ("ts-nan", with_fields(ts=math.nan), "not UTF-8 JSON"),
        ("deadline-infinity", with_fields(deadline=math.inf), "not UTF-8 JSON"),
        ("offline-at-nan", with_fields(offline_at=math.nan), "not UTF-8 JSON"),
    ]


UNREADABLE_REQUESTS = unreadable_requests()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(payload, reason) for _name, payload, reason in UNREADABLE_REQUESTS],
    ids=[name for name, _payload, _reason in UNREADABLE_REQUESTS],
)
async def test_mqtt311_unreadable_unanswered(
    box: Box,
    reader: Mqtt311Reader,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    reason: str,
) -> None:
    await reader.publish(f"{reader.root}/api/kits/issue", payload)

    assert await rejected(box, "invalid-request") == 1
    assert await reader.no_message(NO_REPLY_WAIT_S)
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "appliance.bus.client"
    ]
    assert box.bus.stats.rejected["invalid-response-topic"] == 0
    assert box.requests.counts["invalid-request"] == 1
    assert box.requests.counts["invalid-response-topic"] == 0
    assert len(logged) == 1
    assert reason in logged[0]
    assert "(invalid-request)" in logged[0]
    assert box.store.query("SELECT * FROM requests") == []


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("v", 2, "schema version"),
        ("id", None, "field 'id'"),
        ("ts", "yesterday", "field 'ts'"),
        ("data", [1], "field 'data'"),
    ],
    ids=["schema-v2", "id-missing", "ts-string", "data-list"],
)
async def test_mqtt311_invalid_envelope_no_reply_to(
    box: Box,
    reader: Mqtt311Reader,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: Any,
    reason: str,
) -> None:
    body = kit_request(reader, 14)
    del body["reply_to"]
    if value is None:
        del body[field]
    else:
        body[field] = value

    await reader.publish(f"{reader.root}/api/kits/issue", body)

    assert await rejected(box, "invalid-request") == 1
    assert await reader.no_message(NO_REPLY_WAIT_S)
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "appliance.bus.client"
    ]
    assert box.bus.stats.rejected["invalid-response-topic"] == 0
    assert box.requests.counts["invalid-request"] == 1
    assert len(logged) == 1
    assert reason in logged[0]


async def test_mqtt311_invalid_envelope_replied(
    box: Box, reader: Mqtt311Reader
) -> None:
    # With a usable reply_to, an envelope error gets an invalid-request reply.
    body = kit_request(reader, 15, ts="yesterday")

    reply = await send(reader, body)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid-request"
    assert "field 'ts'" in reply["error"]["message"]
    assert reply["corr"] == body["corr"]


@pytest.mark.parametrize(
    "corr",
    ["ABCDEF", "", "g0", "a" * 65, 12, None],
    ids=["upper-case", "empty", "not-hex", "too-long", "number", "missing"],
)
async def test_mqtt311_corr_invalid(box: Box, reader: Mqtt311Reader, corr: Any) -> None:
    body = kit_request(reader, 9)
    if corr is None:
        del body["corr"]
    else:
        body["corr"] = corr

    reply = await send(reader, body)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid-request"
    assert "'corr'" in reply["error"]["message"]
    assert "corr" not in reply
    assert box.store.query("SELECT * FROM kits") == []
    assert box.requests.counts["invalid-request"] == 1


async def test_mqtt311_corr_64_digits(box: Box, reader: Mqtt311Reader) -> None:
    body = kit_request(reader, 10, corr="0123456789abcdef" * 4)

    reply = await send(reader, body)

    assert reply["ok"] is True
    assert reply["corr"] == "0123456789abcdef" * 4


async def test_mqtt311_invalid_data_carries_corr(
    box: Box, reader: Mqtt311Reader
) -> None:
    body = kit_request(reader, 11)
    body["data"]["idempotency_key"] = "short"

    reply = await send(reader, body)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid-request"
    assert "idempotency_key" in reply["error"]["message"]
    assert reply["corr"] == body["corr"]


async def test_mqtt5_property_wins_over_reply_to(
    box: Box, make_client: ClientFactory
) -> None:
    # A request with the Response Topic property is answered there, even
    # when its envelope names another reply_to, and repeats a valid corr.
    async with make_client("reader-kit-1", "reader", "kit-1") as station:
        replies: asyncio.Queue[Incoming] = asyncio.Queue()

        async def on_reply(incoming: Incoming) -> None:
            await replies.put(incoming)

        reply_topic = station.topics.reply("reader", "kit-1")
        station.subscribe(reply_topic, on_reply)
        body = {
            "reply_to": "nightbox/test/reader/exit-1/reply",
            "corr": "c0ffee",
            "data": {
                "station": "kit-1",
                "adv": advert_hex(12),
                "idempotency_key": "mqtt5-key-12",
            },
        }
        await station.publish(
            station.topics.device_api("reader", "kit-1", "kits", "issue"),
            envelope.encode(station.settings.src, body),
            response_topic=reply_topic,
            correlation=b"property",
            timeout_s=TIMEOUT_S,
        )
        incoming = await asyncio.wait_for(replies.get(), TIMEOUT_S)

    reply = envelope.decode(incoming.payload).body
    assert incoming.correlation == b"property"
    assert reply["ok"] is True
    assert reply["corr"] == "c0ffee"
    assert reply["data"]["band"] == "ib-1-12"
