"""Relay the firmware's MQTT calls from MicroPython to a real mosquitto.

In relay mode the umqtt stand-in sends each client call (connect, publish,
subscribe, check, disconnect) as a JSON line on the Node.js process's
stdout and reads the response from its stdin. ``run_relayed`` answers those
calls with a paho-mqtt client speaking MQTT 3.1.1, as umqtt does, logged in
with the reader's account. Setting ``stop`` tells the scenario to finish:
the next ``check`` answer carries ``"stop": true``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from micropython_runner import (
    RECORD_PREFIX,
    RELAY_PREFIX,
    RUNNER,
    Results,
    node_binary,
    parse_records,
    scenario_spec,
)

_WAIT_S = 10.0


SITE_UUID_HEX = "426c7565436861726d426561636f6e73"
GREEN_PIN, RED_PIN, BUTTON_PIN = 25, 26, 0


def reader_files(
    reader: str, role: str, broker: tuple[str, int, str] | None = None
) -> dict[str, str]:
    """Return /reader.json and /contract.json for one reader of the test site.

    ``broker`` is ``(host, port, password)`` for a Wi-Fi reader. Without it
    the reader uses the serial uplink.
    """
    document: dict[str, Any] = {
        "v": 1,
        "site": "test",
        "reader": reader,
        "role": role,
        "uplink": "serial" if broker is None else "wifi",
        "bands": {"ibeacon_uuid": SITE_UUID_HEX, "eid": False},
        "batch_ms": 500,
    }
    if broker is not None:
        host, port, password = broker
        document["wifi"] = {"ssid": "nightbox", "password": "wifi-secret"}
        document["broker"] = {
            "host": host,
            "port": port,
            "username": f"reader-{reader}",
            "password": password,
        }
    if role == "kit":
        document["kit"] = {
            "button_pin": BUTTON_PIN,
            "green_pin": GREEN_PIN,
            "red_pin": RED_PIN,
            "answer_ms": 1000,
        }
    contract = {
        "role": role,
        "limit_ms": 25000,
        "button_pin": BUTTON_PIN,
        "green_pin": GREEN_PIN,
        "red_pin": RED_PIN,
    }
    return {
        "/reader.json": json.dumps(document),
        "/contract.json": json.dumps(contract),
    }


class _Session:
    """One paho client standing in for the firmware's TCP connection."""

    def __init__(self) -> None:
        self.client: mqtt.Client | None = None
        self.inbox: queue.Queue[tuple[str, str]] = queue.Queue()
        self.connected = threading.Event()
        self.connect_code: Any = None
        self.subscribed: dict[int, threading.Event] = {}
        self.granted: dict[int, list[Any]] = {}

    def connect(self, request: dict[str, Any]) -> dict[str, Any]:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=request["client_id"],
            protocol=mqtt.MQTTv311,
            clean_session=request["clean_session"],
        )
        client.username_pw_set(request["user"], request["password"])
        topic, message, retain, qos = request["will"]
        if topic:
            client.will_set(topic, message, qos, retain)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        try:
            client.connect(request["host"], request["port"], request["keepalive"] or 60)
        except OSError as err:
            return {
                "error": f"connect to {request['host']}:{request['port']} failed: {err}"
            }
        client.loop_start()
        if not self.connected.wait(_WAIT_S) or self.connect_code != 0:
            client.loop_stop()
            return {"error": f"broker refused the login: {self.connect_code}"}
        self.client = client
        return {}

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, code: Any, *rest: Any
    ) -> None:
        self.connect_code = code.value if hasattr(code, "value") else code
        self.connected.set()

    def _on_message(
        self, client: Any, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        self.inbox.put((message.topic, message.payload.decode()))

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: Any, *rest: Any
    ) -> None:
        self.granted[mid] = list(codes)
        self.subscribed.setdefault(mid, threading.Event()).set()

    def publish(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        info = self.client.publish(
            request["topic"], request["payload"], request["qos"], request["retain"]
        )
        info.wait_for_publish(_WAIT_S)
        return {} if info.is_published() else {"error": "publish not acknowledged"}

    def subscribe(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        code, mid = self.client.subscribe(request["topic"], request["qos"])
        done = self.subscribed.setdefault(mid, threading.Event())
        if code != mqtt.MQTT_ERR_SUCCESS or not done.wait(_WAIT_S):
            return {"error": f"subscribe to {request['topic']} failed"}
        if any(getattr(granted, "is_failure", False) for granted in self.granted[mid]):
            return {"error": f"subscribe to {request['topic']} was refused"}
        return {}

    def check(self) -> dict[str, Any]:
        try:
            topic, payload = self.inbox.get_nowait()
        except queue.Empty:
            return {}
        return {"message": [topic, payload]}

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


# Rewrites a message on its way from the broker to the firmware: called
# with the topic and payload, returns the payload to deliver.
Rewrite = Callable[[str, str], str]
# Decides from each relay request whether the board loses power now.
PowerCut = Callable[[dict[str, Any]], bool]


def run_relayed(
    name: str,
    files: dict[str, str],
    stop: threading.Event,
    *,
    timeout_s: float = 60.0,
    flash: Path | None = None,
    lib: dict[str, str] | None = None,
    rewrite: Rewrite | None = None,
    power_cut: PowerCut | None = None,
) -> Results:
    """Run scenario ``name`` with its MQTT calls relayed to a real broker.

    ``flash``, ``lib``: see ``scenario_spec``. ``rewrite`` changes messages
    before the firmware reads them. When ``power_cut`` returns True for a
    request, the interpreter is killed before it gets the answer, and the
    results so far are returned. Blocks until the interpreter exits; call
    it in a thread. Raises AssertionError with the interpreter's output
    when it fails.
    """
    session = _Session()

    def answer(request: dict[str, Any]) -> dict[str, Any] | None:
        if power_cut is not None and power_cut(request):
            return None
        response = _answer(session, request)
        message = response.get("message")
        if rewrite is not None and message is not None:
            response["message"] = [message[0], rewrite(message[0], message[1])]
        return response

    try:
        return run_with_relay(
            name, files, stop, answer, timeout_s=timeout_s, flash=flash, lib=lib
        )
    finally:
        session.close()


def run_with_relay(
    name: str,
    files: dict[str, str],
    stop: threading.Event,
    answer: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    timeout_s: float = 60.0,
    flash: Path | None = None,
    lib: dict[str, str] | None = None,
) -> Results:
    """Run scenario ``name``, answering each relay request with ``answer``.

    Every answer also carries ``stop``, which tells the scenario to finish.
    An answer of None kills the interpreter, as a power loss stops a board,
    and the results printed until then are returned. Blocks until the
    interpreter exits; call it in a thread. Raises AssertionError with the
    interpreter's output when it fails.
    """
    lines: list[str] = []
    killed = False
    with scenario_spec(name, files, relay=True, flash=flash, lib=lib) as spec:
        process = subprocess.Popen(
            [node_binary(), str(RUNNER), str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            for line in process.stdout:
                if time.monotonic() > deadline:
                    raise AssertionError(f"scenario {name} ran over {timeout_s} s")
                if not line.startswith(RELAY_PREFIX):
                    lines.append(line)
                    continue
                response = answer(json.loads(line[len(RELAY_PREFIX) :]))
                if response is None:
                    killed = True
                    process.kill()
                    break
                response["stop"] = stop.is_set()
                process.stdin.write(json.dumps(response) + "\n")
                process.stdin.flush()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            stderr = process.stderr.read() if process.stderr else ""
    output = "".join(lines)
    if killed:
        return Results(parse_records(output), output + stderr)
    if process.returncode != 0:
        raise AssertionError(
            f"scenario {name} failed (exit status {process.returncode}):\n"
            f"{stderr}\n{output[-4000:]}"
        )
    records = parse_records(output)
    assert records or RECORD_PREFIX in output, output
    return Results(records, output + stderr)


def _answer(session: _Session, request: dict[str, Any]) -> dict[str, Any]:
    operation = request["op"]
    if operation == "connect":
        session.close()
        session.connected.clear()
        return session.connect(request)
    if session.client is None:
        return {"error": "not connected"}
    if operation == "publish":
        return session.publish(request)
    if operation == "subscribe":
        return session.subscribe(request)
    if operation == "check":
        return session.check()
    if operation == "disconnect":
        session.close()
        return {}
    return {"error": f"unknown relay operation {operation!r}"}
