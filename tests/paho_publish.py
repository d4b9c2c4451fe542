"""One MQTT 5 publish at QoS 1 with paho-mqtt, to read the broker's reason codes.

aiomqtt does not report the reason code of a PUBACK, so the tests of a
broker's ACL publish with paho-mqtt.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

from appliance.bus.broker import BrokerHandle

REASON_SUCCESS = 0


@dataclass(frozen=True)
class PahoResult:
    """Reason codes that paho-mqtt reported for one connect and publish."""

    connack: int
    # None when the login failed, so nothing was published.
    puback: int | None


def _publish_blocking(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    topic: str,
    payload: bytes,
    properties: Properties | None,
    timeout_s: float,
) -> PahoResult:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"test-paho-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    if username is not None:
        client.username_pw_set(username, password)
    codes: dict[str, int] = {}

    def on_connect(*args: Any) -> None:
        codes["connack"] = args[3].value

    def on_publish(*args: Any) -> None:
        codes["puback"] = args[3].value

    def run_until(code: str) -> None:
        # Driving the network loop here, without paho's background thread,
        # avoids that thread's reconnect delay after a refused login.
        deadline = time.monotonic() + timeout_s
        while code not in codes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {code} from {host}:{port} for {username}")
            client.loop(timeout=0.05)

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port)
    try:
        run_until("connack")
        if codes["connack"] == REASON_SUCCESS:
            client.publish(topic, payload, qos=1, properties=properties)
            run_until("puback")
            client.disconnect()
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
    return PahoResult(codes["connack"], codes.get("puback"))


async def publish_with_paho(
    broker: BrokerHandle,
    username: str | None,
    password: str | None,
    topic: str,
    payload: bytes,
    *,
    properties: Properties | None = None,
    timeout_s: float = 10.0,
) -> PahoResult:
    """Log in to ``broker`` and publish ``payload`` at QoS 1; return the codes.

    Each of the login and the publish may take ``timeout_s`` seconds.
    """
    return await asyncio.wait_for(
        asyncio.to_thread(
            _publish_blocking,
            broker.host,
            broker.port,
            username,
            password,
            topic,
            payload,
            properties,
            timeout_s,
        ),
        timeout=timeout_s * 2,
    )
