"""Read one retained message from a broker and print it as JSON.

The boot test runs this with the host's Python inside the booted image's
network namespace (``nsenter -n``), where the image's mosquitto listens on
127.0.0.1:1883. Usage: ``mqtt_probe.py USERNAME TOPIC TIMEOUT_S``, with the
password on standard input. Prints ``{"topic": ..., "retain": ...,
"payload": ...}`` and exits 0, or exits 1 with the reason on stderr.
"""

from __future__ import annotations

import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def main() -> int:
    username, topic, timeout_text = sys.argv[1:4]
    password = sys.stdin.readline().strip()
    received: dict[str, object] = {}
    failure: list[str] = []
    done = threading.Event()

    def on_connect(
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            failure.append(f"connect refused: {reason}")
            done.set()
            return
        client.subscribe(topic, qos=1)

    def on_message(
        client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        received["topic"] = message.topic
        received["retain"] = bool(message.retain)
        received["payload"] = json.loads(message.payload)
        done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", 1883, keepalive=30)
    client.loop_start()
    finished = done.wait(float(timeout_text))
    client.disconnect()
    client.loop_stop()
    if failure:
        print(failure[0], file=sys.stderr)
        return 1
    if not finished:
        print(f"no message on {topic} within {timeout_text} s", file=sys.stderr)
        return 1
    print(json.dumps(received))
    return 0


if __name__ == "__main__":
    sys.exit(main())
