"""The upstream broker's ACL for clip uploads, enforced by a real TLS mosquitto.

Each box may publish clip chunks and manifests only on its own
``nightbox/<site>/box/<box>/clips/+``; operators read every box's clips
and the collector reads none. aiomqtt does not report the reason code of a
PUBACK, so the publishes here use paho-mqtt. mosquitto 2.0.11 acknowledges
a denied QoS 1 publish with reason 135 (Not authorized), drops it and then
closes the connection, so each publish here has a connection of its own.
Each test ends with a publish that is delivered, so every message sent
before it has been delivered or dropped by then.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from test_sync import TIMEOUT_S, wait_until
from upstream_broker import Upstream, upstream  # noqa: F401

from appliance._tasks import cancel_and_wait
from appliance.bus.url import client_tls_context

REASON_SUCCESS = 0
REASON_NOT_AUTHORIZED = 135
CLUB_BOX = "nightbox/club/box/box-1"
ANNEX_BOX = "nightbox/annex/box/box-2"
EVERY_BOX_CLIPS = "nightbox/+/box/+/clips/+"


def _publish_blocking(
    port: int, ca_file: Path, login: dict[str, str], topic: str, payload: bytes
) -> int:
    """Log in, publish at QoS 1 and return the PUBACK's reason code."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"test-clip-acl-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.username_pw_set(login["username"], login["password"])
    client.tls_set_context(client_tls_context(ca_file))
    codes: dict[str, int] = {}

    def on_connect(*args: Any) -> None:
        codes["connack"] = args[3].value

    def on_publish(*args: Any) -> None:
        codes["puback"] = args[3].value

    def run_until(code: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while code not in codes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {code} on {topic} for {login['username']}")
            client.loop(timeout=0.05)

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    try:
        run_until("connack")
        assert codes["connack"] == REASON_SUCCESS, f"{login['username']} login failed"
        client.publish(topic, payload, qos=1)
        run_until("puback")
        client.disconnect()
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
    return codes["puback"]


def read_login(credentials: Path) -> dict[str, str]:
    """Return the username and password in a credentials file."""
    login: dict[str, str] = json.loads(credentials.read_text())
    return login


async def publish_as(
    fleet: Upstream, credentials: Path, messages: Sequence[tuple[str, bytes]]
) -> list[int]:
    """Publish ``messages`` in order, each on its own connection; return reasons."""
    login = read_login(credentials)
    codes = []
    for topic, payload in messages:
        code = await asyncio.to_thread(
            _publish_blocking,
            fleet.broker.port,
            fleet.ca.ca_certificate,
            login,
            topic,
            payload,
        )
        codes.append(code)
    return codes


@asynccontextmanager
async def subscribed(
    fleet: Upstream, credentials: Path, filters: Sequence[str]
) -> AsyncIterator[list[str]]:
    """Subscribe to ``filters``; yield the topics of the messages, as they arrive."""
    login = read_login(credentials)
    topics: list[str] = []
    ready = asyncio.Event()

    async def receive() -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            fleet.broker.port,
            username=login["username"],
            password=login["password"],
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=client_tls_context(fleet.ca.ca_certificate),
        ) as client:
            for topic_filter in filters:
                await client.subscribe(topic_filter, qos=1)
            ready.set()
            async for message in client.messages:
                topics.append(message.topic.value)

    task = asyncio.create_task(receive())
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT_S)
        yield topics
    finally:
        await cancel_and_wait(task)


async def test_box_cannot_publish_other_box_clips(
    upstream: Upstream,  # noqa: F811
) -> None:
    annex_box = upstream.box_credentials("annex", "box-2")
    async with subscribed(
        upstream, upstream.operator_credentials(), [EVERY_BOX_CLIPS]
    ) as operator:
        codes = await publish_as(
            upstream,
            annex_box,
            [
                (f"{CLUB_BOX}/clips/chunk", b"forged chunk"),
                (f"{CLUB_BOX}/clips/manifest", b"{}"),
                (f"{ANNEX_BOX}/clips/chunk", b"own chunk"),
            ],
        )
        await wait_until(lambda: len(operator) >= 1, "the annex box's own chunk")

    assert codes == [REASON_NOT_AUTHORIZED, REASON_NOT_AUTHORIZED, REASON_SUCCESS]
    assert operator == [f"{ANNEX_BOX}/clips/chunk"]


async def test_collector_does_not_read_clips(
    upstream: Upstream,  # noqa: F811
) -> None:
    club_box = upstream.box_credentials("club", "box-1")
    event_topic = f"{CLUB_BOX}/events/clip_written"
    async with (
        subscribed(
            upstream,
            upstream.collector_credentials(),
            [EVERY_BOX_CLIPS, "nightbox/+/box/+/events/#"],
        ) as collector,
        subscribed(
            upstream, upstream.operator_credentials(), [EVERY_BOX_CLIPS]
        ) as operator,
    ):
        codes = await publish_as(
            upstream,
            club_box,
            [
                (f"{CLUB_BOX}/clips/chunk", b"chunk"),
                (f"{CLUB_BOX}/clips/manifest", b"{}"),
                (event_topic, b"{}"),
            ],
        )
        await wait_until(lambda: len(collector) >= 1, "the event at the collector")
        await wait_until(lambda: len(operator) >= 2, "the clip at the operator")

    assert codes == [REASON_SUCCESS, REASON_SUCCESS, REASON_SUCCESS]
    assert collector == [event_topic]
    assert operator == [f"{CLUB_BOX}/clips/chunk", f"{CLUB_BOX}/clips/manifest"]
