"""A reader that speaks MQTT 3.1.1 with paho-mqtt, as umqtt on an ESP32 does.

MQTT 3.1.1 has no Response Topic or Correlation Data property, so the
requests carry ``reply_to`` and ``corr`` in their envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import paho.mqtt.client as paho

from appliance.bus.broker import BrokerHandle
from provisioning import SiteCredentials


class Mqtt311Reader:
    """A connected paho-mqtt 3.1.1 client logged in as one reader."""

    def __init__(self, client: paho.Client, site: str, reader_id: str) -> None:
        self.client = client
        self.site = site
        self.reader_id = reader_id
        self.root = f"nightbox/{site}/reader/{reader_id}"
        self.reply_topic = f"{self.root}/reply"
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def envelope(self, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        return {
            "v": 1,
            "id": uuid.uuid4().hex,
            "ts": round(now, 3),
            "src": f"reader/{self.reader_id}",
            "deadline": round(now + 2, 3),
            **fields,
        }

    async def publish(self, topic: str, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        info = self.client.publish(topic, payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10.0)

    async def next_message(self, timeout_s: float = 10.0) -> tuple[str, bytes]:
        """Return the next message received, or raise queue.Empty."""
        return await asyncio.to_thread(self.messages.get, True, timeout_s)

    async def no_message(self, wait_s: float) -> bool:
        """Return True when nothing arrives within ``wait_s`` seconds."""
        try:
            await self.next_message(wait_s)
        except queue.Empty:
            return True
        return False


@contextlib.asynccontextmanager
async def mqtt311_reader(
    broker: BrokerHandle,
    credentials: SiteCredentials,
    site: str,
    reader_id: str,
    *,
    subscribe: tuple[str, ...] = ("reply",),
) -> AsyncIterator[Mqtt311Reader]:
    """Connect as ``reader-<reader_id>`` over MQTT 3.1.1 and subscribe.

    ``subscribe`` lists topics under the reader's own root (``reply``) or,
    with a leading ``/``, under ``nightbox/<site>``.
    """
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"{site}-reader-{reader_id}-{uuid.uuid4().hex[:6]}",
        protocol=paho.MQTTv311,
    )
    reader = Mqtt311Reader(client, site, reader_id)
    account = credentials.account(f"reader-{reader_id}")
    client.username_pw_set(account.username, account.password)
    subscribed = asyncio.Event()
    loop = asyncio.get_running_loop()
    topics = [
        f"nightbox/{site}{name}" if name.startswith("/") else f"{reader.root}/{name}"
        for name in subscribe
    ]

    def on_connect(client: paho.Client, *_args: Any) -> None:
        client.subscribe([(topic, 1) for topic in topics])

    def on_subscribe(*_args: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set)

    def on_message(_client: paho.Client, _userdata: Any, message: Any) -> None:
        reader.messages.put((message.topic, bytes(message.payload)))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10.0)
        yield reader
    finally:
        client.disconnect()
        client.loop_stop()
