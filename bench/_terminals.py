"""Load generator of the economy benchmarks: POS terminals in their own process.

Terminals are separate devices at a venue, so the benchmarks run them in
this process, apart from the box's, and keep them lean: plain paho-mqtt
clients whose network threads send the next request from the callback that
receives a reply. The requests are the same MQTT 5 requests that
``Bus.request`` sends (envelope, token, response topic, correlation data,
message expiry), so the box does exactly the work it does for real
terminals. On a small machine this leaves the box and the broker most of
the CPU.

The parent writes a JSON job to stdin; this process prints one JSON line
with the outcome of each request and its latency. Job fields: ``host``,
``port``, ``site``, ``terminals`` (a list of ``id``, ``username``,
``password`` and ``token``), ``service``, ``action``, ``requests`` (the data
of each request, sent round-robin across terminals; each needs its
``idempotency_key`` for mutating actions), and either ``in_flight``
(requests waiting per terminal, as fast as replies come) or ``rate``
(requests per second in all, evenly paced).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TIMEOUT_S = 120.0


class _Terminal:
    """One terminal's paho client and the requests it sends."""

    def __init__(self, job: dict[str, Any], spec: dict[str, Any], run: _Run) -> None:
        self.id = spec["id"]
        self.token = spec["token"]
        self.run = run
        prefix = f"nightbox/{job['site']}"
        self.topic = f"{prefix}/terminal/{self.id}/api/{job['service']}/{job['action']}"
        self.reply_topic = f"{prefix}/terminal/{self.id}/reply"
        self.src = f"terminal/{self.id}"
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{job['site']}-terminal-{self.id}-bench",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(spec["username"], spec["password"])
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(job["host"], job["port"])
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe(self.reply_topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self.subscribed.set()

    def send(self, index: int) -> None:
        """Publish request ``index`` of the job."""
        data = self.run.requests[index]
        body = {
            "v": 1,
            "id": uuid.uuid4().hex,
            "ts": round(time.time(), 3),
            "src": self.src,
            "data": data,
            "deadline": round(time.time() + 60, 3),
            "token": self.token,
        }
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = index.to_bytes(4, "big")
        properties.MessageExpiryInterval = 60
        self.run.sent_at[index] = time.perf_counter()
        self.client.publish(
            self.topic, orjson.dumps(body), qos=1, properties=properties
        )

    def _on_message(self, _client: mqtt.Client, _data: Any, message: Any) -> None:
        correlation = getattr(message.properties, "CorrelationData", b"")
        index = int.from_bytes(correlation, "big")
        self.run.answered(index, orjson.loads(message.payload), self)


class _Run:
    """The requests of a job and their outcomes, shared by the terminals."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.requests: list[dict[str, Any]] = job["requests"]
        self.sent_at = [0.0] * len(self.requests)
        self.latencies_ms = [0.0] * len(self.requests)
        self.outcomes: Counter[str] = Counter()
        self.replies: list[Any] = [None] * len(self.requests)
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._answered = 0
        self.closed_loop = "rate" not in job

    def take(self) -> int | None:
        """Return the index of the next request to send, or None when all are sent."""
        with self._lock:
            if self._next >= len(self.requests):
                return None
            self._next += 1
            return self._next - 1

    def answered(self, index: int, reply: dict[str, Any], terminal: _Terminal) -> None:
        """Record a reply; in a closed loop, send the terminal's next request."""
        latency = (time.perf_counter() - self.sent_at[index]) * 1000
        with self._lock:
            if self.replies[index] is not None:
                return
            self.replies[index] = reply
            self.latencies_ms[index] = latency
            if reply.get("ok"):
                self.outcomes["ok"] += 1
            else:
                self.outcomes[str(reply.get("error", {}).get("code", "error"))] += 1
            self._answered += 1
            if self._answered == len(self.requests):
                self.done.set()
        if self.closed_loop:
            following = self.take()
            if following is not None:
                terminal.send(following)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Send every request of ``job`` and return the outcomes."""
    run = _Run(job)
    terminals = [_Terminal(job, spec, run) for spec in job["terminals"]]
    for terminal in terminals:
        if not terminal.subscribed.wait(15):
            raise TimeoutError(f"terminal {terminal.id} did not subscribe in 15 s")
    started = time.perf_counter()
    cpu_started = time.process_time()
    if run.closed_loop:
        for _ in range(job["in_flight"]):
            for terminal in terminals:
                index = run.take()
                if index is not None:
                    terminal.send(index)
    else:
        interval = 1.0 / job["rate"]
        for index in range(len(run.requests)):
            delay = started + index * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            terminals[index % len(terminals)].send(index)
    run.done.wait(_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    for terminal in terminals:
        terminal.client.disconnect()
        terminal.client.loop_stop()
    outcomes = dict(run.outcomes)
    missing = len(run.requests) - sum(outcomes.values())
    if missing:
        outcomes["timeout"] = missing
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "outcomes": outcomes,
        "latencies_ms": [
            latency
            for latency, reply in zip(run.latencies_ms, run.replies, strict=True)
            if reply
        ],
        "replies": run.replies if job.get("keep_replies") else [],
    }


def main() -> int:
    """Read a job from stdin, run it and print its result as one JSON line."""
    job = json.loads(sys.stdin.read())
    print(json.dumps(run_job(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
