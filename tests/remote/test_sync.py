"""SyncService against a TLS mosquitto as the fleet's upstream broker.

Each test runs the service on a real store with the box's local mosquitto
and a fresh upstream broker (``upstream`` in ``tests/upstream_broker.py``).
A collector on the upstream broker, with a persistent session as the real
collector has, records every event that reaches it. Waits are bounded by
generous timeouts; nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from conftest import ClientFactory
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.bus.topics import Topics
from appliance.bus.url import client_tls_context, parse_broker_url
from appliance.clock import SystemClock
from appliance.config import SiteConfig
from appliance.outbox import event_payload
from appliance.remote.sync import SyncService, effective_window
from appliance.runtime import Box
from appliance.store import OutboxEvent, Store
from provisioning.fleet_tls import make_fleet_ca
from provisioning.secret_file import write_secret_file
from provisioning.site_access import box_username

TIMEOUT_S = 60.0
SITE = "club"
BOX = "box-1"
TOPICS = Topics(SITE)
EVENTS_FILTER = "nightbox/+/box/+/events/#"


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream) -> SiteConfig:  # noqa: F811
    """The test site as box ``club/box-1`` of the upstream broker's fleet."""
    return fleet_site_config(tmp_path / "box", upstream)


@pytest.fixture
def store(site_config: SiteConfig) -> Iterator[Store]:
    opened = Store(site_config.data_dir / "nightbox.sqlite3", SystemClock())
    yield opened
    opened.close()


@pytest.fixture
async def local_bus(make_client: ClientFactory) -> AsyncIterator[Bus]:
    """The box's own connection to its local broker."""
    async with make_client(box_username(BOX), "box", BOX, announce=False) as bus:
        yield bus


class Collector:
    """A client on the upstream broker that records what it receives, in order.

    Its session is persistent, as the real collector's is, so messages the
    broker accepted while the collector was away (a broker restart) still
    reach it.
    """

    def __init__(self, fleet: Upstream, credentials: Path, filters: list[str]):
        self._upstream = fleet
        self._login = json.loads(credentials.read_text())
        self._filters = filters
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await wait_until(self.connected.is_set, "the collector's connection")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self._upstream.broker.port,
                    username=self._login["username"],
                    password=self._login["password"],
                    identifier=f"test-{self._login['username']}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=properties,
                    tls_context=client_tls_context(self._upstream.ca.ca_certificate),
                ) as client:
                    for topic_filter in self._filters:
                        await client.subscribe(topic_filter, qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        self.messages.append(
                            (message.topic.value, payload, message.retain)
                        )
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """Return the topic and body of every event received, in order."""
        return [
            (topic, orjson.loads(payload))
            for topic, payload, _retain in self.messages
            if "/events/" in topic
        ]

    def on_topic(self, topic: str) -> list[bytes]:
        """Return every payload received on ``topic``, in order."""
        return [payload for got, payload, _retain in self.messages if got == topic]


async def wait_until(condition: Callable[[], bool], description: str) -> None:
    """Poll ``condition`` until it holds, or fail naming ``description``."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        if condition():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {TIMEOUT_S} s waiting for {description}")
        await asyncio.sleep(0.02)


def emit_events(store: Store, count: int) -> list[OutboxEvent]:
    """Commit ``count`` events of two types in one transaction and return them."""
    with store.transaction() as transaction:
        for number in range(count):
            if number % 3:
                transaction.emit(
                    "checkout",
                    {"band": f"ib-1-{number}", "reader": "exit-1", "rssi": -51.5},
                )
            else:
                transaction.emit(
                    "wallet_charged",
                    {"band": f"ib-1-{number}", "amount": 450, "item": "beer"},
                )
        return list(transaction.events)


def stored(store: Store) -> list[OutboxEvent]:
    """Return every outbox event as the store reads it back, by seq."""
    rows = store.query(
        "SELECT seq, id, type, created_at, clock_trusted, body FROM outbox ORDER BY seq"
    )
    return [OutboxEvent.from_row(row) for row in rows]


def synced_seqs(store: Store) -> set[int]:
    rows = store.query("SELECT seq FROM outbox WHERE synced_at IS NOT NULL")
    return {int(row[0]) for row in rows}


@contextlib.asynccontextmanager
async def running(
    config: SiteConfig, store: Store, bus: Bus, **options: Any
) -> AsyncIterator[SyncService]:
    service = SyncService(config, store, bus, SystemClock(), **options)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_sync_drains_in_order(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    events = emit_events(store, 500)
    async with (
        Collector(upstream, upstream.collector_credentials(), [EVENTS_FILTER]) as seen,
        running(site_config, store, local_bus) as service,
    ):
        await wait_until(lambda: store.unsynced_count() == 0, "the backlog to drain")
        await wait_until(lambda: len(seen.events()) >= 500, "500 events upstream")
        late = emit_events(store, 20)
        await wait_until(lambda: len(seen.events()) >= 520, "the events committed late")
        await wait_until(lambda: store.unsynced_count() == 0, "the late events synced")
        state = service.state()

    every = events + late
    received = seen.events()
    seqs = [body["seq"] for _topic, body in received]
    ids = [body["id"] for _topic, body in received]
    assert seqs == [event.seq for event in every]
    assert len(set(ids)) == len(ids)
    assert ids == [event.id for event in every]
    # The body is the local outbox message's, built from the stored row.
    payloads = [payload for _topic, payload, _retain in seen.messages]
    assert payloads == [event_payload(event, f"box/{BOX}") for event in stored(store)]
    topics = [topic for topic, _body in received]
    assert topics == [TOPICS.upstream_event(BOX, event.type) for event in every]
    assert synced_seqs(store) == {event.seq for event in every}
    assert state["connected"] is True
    assert state["backlog"] == 0
    assert state["sent"] == 520
    assert state["last_error"] is None
    assert state["last_success"] is not None
    assert state["broker"] == upstream.url


async def test_sync_announces_box_upstream(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    availability = TOPICS.availability("box", BOX)
    state_topic = TOPICS.sync_state(BOX)
    emit_events(store, 3)
    async with Collector(
        upstream, upstream.collector_credentials(), [availability, state_topic]
    ) as seen:
        async with running(site_config, store, local_bus) as service:
            await wait_until(
                lambda: service.state()["sent"] == 3, "three events acknowledged"
            )
            await wait_until(
                lambda: any(
                    envelope.decode(payload).data.get("sent") == 3
                    for payload in seen.on_topic(state_topic)
                ),
                "an upstream sync state with sent 3",
            )
        await wait_until(
            lambda: seen.on_topic(availability)[-1:] == [b"offline"],
            "offline after the service stopped",
        )
    assert b"online" in seen.on_topic(availability)
    last_state = envelope.decode(seen.on_topic(state_topic)[-1])
    assert last_state.src == f"box/{BOX}"
    assert last_state.data["connected"] is False
    assert last_state.data["backlog"] == 0


async def test_sync_resends_unacknowledged_after_outage(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    events = emit_events(store, 20_000)
    config = dataclasses.replace(
        site_config, sync=dataclasses.replace(site_config.sync, window=64)
    )
    async with (
        Collector(upstream, upstream.collector_credentials(), [EVENTS_FILTER]) as seen,
        running(config, store, local_bus) as service,
    ):
        await wait_until(lambda: service.sent >= 200, "the first 200 events synced")
        await upstream.broker.stop()
        await wait_until(lambda: not service.connected, "the service to notice")
        unmarked = store.unsynced_count()
        sent_before = service.sent
        marked = synced_seqs(store)
        assert unmarked > 0
        assert len(marked) == sent_before
        assert service.state()["last_error"] is not None
        await upstream.broker.restart()
        await wait_until(lambda: store.unsynced_count() == 0, "the backlog to drain")
        await wait_until(
            lambda: (
                {body["id"] for _topic, body in seen.events()}
                >= {event.id for event in events}
            ),
            "every event at the collector",
        )
        resent = service.sent - sent_before

    assert resent == unmarked
    assert synced_seqs(store) == {event.seq for event in events}
    ids = [body["id"] for _topic, body in seen.events()]
    assert set(ids) == {event.id for event in events}


async def test_sync_resends_after_service_restart(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    events = emit_events(store, 5000)
    async with Collector(
        upstream, upstream.collector_credentials(), [EVENTS_FILTER]
    ) as seen:
        async with running(site_config, store, local_bus) as first:
            await wait_until(lambda: first.sent >= 100, "the first 100 events synced")
        left = store.unsynced_count()
        assert left > 0
        async with running(site_config, store, local_bus) as second:
            await wait_until(lambda: store.unsynced_count() == 0, "the rest synced")
            assert second.sent == left
        await wait_until(
            lambda: (
                {body["id"] for _topic, body in seen.events()}
                >= {event.id for event in events}
            ),
            "every event at the collector",
        )
    seqs = [body["seq"] for _topic, body in seen.events()]
    # In order within each run: a restart goes back to the oldest unmarked.
    restarts = [
        index for index in range(1, len(seqs)) if seqs[index] <= seqs[index - 1]
    ]
    assert len(restarts) <= 1


async def test_sync_waits_for_upstream_then_drains(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    states: list[dict[str, Any]] = []

    async def record(incoming: Incoming) -> None:
        states.append(envelope.decode(incoming.payload).data)

    local_bus.subscribe(TOPICS.sync_state(BOX), record)
    await upstream.broker.stop()
    emit_events(store, 50)
    async with running(site_config, store, local_bus) as service:
        await wait_until(
            lambda: any(state["last_error"] for state in states),
            "a local sync state with an error",
        )
        emit_events(store, 25)
        await wait_until(
            lambda: any(state["backlog"] == 75 for state in states),
            "the backlog to grow to 75",
        )
        offline = service.state()
        assert offline["connected"] is False
        assert "cannot reach upstream broker" in offline["last_error"]
        assert offline["last_success"] is None
        await upstream.broker.restart()
        await wait_until(
            lambda: any(
                state["backlog"] == 0 and state["last_success"] for state in states
            ),
            "a local sync state with the backlog drained",
        )
        online = service.state()

    assert online["connected"] is True
    assert online["sent"] == 75
    assert online["last_error"] is None
    assert online["last_success"] is not None
    first_error = next(i for i, state in enumerate(states) if state["last_error"])
    first_success = next(i for i, state in enumerate(states) if state["last_success"])
    assert first_error < first_success
    assert store.unsynced_count() == 0


def _write_login(path: Path, username: str, password: str, mode: int = 0o600) -> Path:
    write_secret_file(
        path, json.dumps({"username": username, "password": password}).encode()
    )
    os.chmod(path, mode)
    return path


def _wrong_ca(folder: Path, fleet: Upstream) -> dict[str, Any]:
    other = make_fleet_ca(folder / "other-ca", ["127.0.0.1"], name="Another fleet")
    return {"ca_file": other.ca_certificate}


def _missing_ca(folder: Path, fleet: Upstream) -> dict[str, Any]:
    return {"ca_file": folder / "absent-ca.pem"}


def _wrong_password(folder: Path, fleet: Upstream) -> dict[str, Any]:
    login = json.loads(fleet.box_credentials(SITE, BOX).read_text())
    path = _write_login(folder / "wrong.json", login["username"], "not-the-password")
    return {"credentials_file": path}


def _missing_login(folder: Path, fleet: Upstream) -> dict[str, Any]:
    return {"credentials_file": folder / "absent.json"}


def _open_login(folder: Path, fleet: Upstream) -> dict[str, Any]:
    login = json.loads(fleet.box_credentials(SITE, BOX).read_text())
    path = _write_login(
        folder / "open.json", login["username"], login["password"], 0o644
    )
    return {"credentials_file": path}


def _malformed_login(folder: Path, fleet: Upstream) -> dict[str, Any]:
    path = folder / "malformed.json"
    write_secret_file(path, b'{"username": "box-club.box-1", "password": ')
    return {"credentials_file": path}


def _login_without_password(folder: Path, fleet: Upstream) -> dict[str, Any]:
    path = folder / "partial.json"
    write_secret_file(path, b'{"username": "box-club.box-1"}')
    return {"credentials_file": path}


def _plain_to_tls_port(folder: Path, fleet: Upstream) -> dict[str, Any]:
    return {
        "broker": parse_broker_url(f"mqtt://127.0.0.1:{fleet.broker.port}"),
        "ca_file": None,
    }


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (_wrong_ca, "failed verification"),
        (_missing_ca, "absent-ca.pem not found"),
        (_wrong_password, "rejected the login of 'box-club.box-1'"),
        (_missing_login, "absent.json not found"),
        (_open_login, "chmod 600"),
        (_malformed_login, "is not valid JSON"),
        (_login_without_password, "no non-empty string 'password'"),
        (_plain_to_tls_port, "closed the connection during the MQTT handshake"),
    ],
    ids=[
        "wrong-ca",
        "missing-ca",
        "wrong-password",
        "missing-credentials",
        "credentials-readable-by-others",
        "malformed-credentials",
        "credentials-without-password",
        "plain-mqtt-to-tls-port",
    ],
)
async def test_sync_reports_setup_error(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
    tmp_path: Path,
    setup: Callable[[Path, Upstream], dict[str, Any]],
    expected: str,
) -> None:
    changes = setup(tmp_path, upstream)
    config = dataclasses.replace(
        site_config, sync=dataclasses.replace(site_config.sync, **changes)
    )
    states: list[dict[str, Any]] = []

    async def record(incoming: Incoming) -> None:
        states.append(envelope.decode(incoming.payload).data)

    local_bus.subscribe(TOPICS.sync_state(BOX), record)
    emit_events(store, 10)
    async with (
        Collector(upstream, upstream.collector_credentials(), [EVENTS_FILTER]) as seen,
        running(config, store, local_bus) as service,
    ):
        await wait_until(lambda: service.last_error is not None, "an error")
        await wait_until(
            lambda: any(state["last_error"] for state in states),
            "the error in the local sync state",
        )
        state = service.state()
        # Another attempt fails the same way and still marks nothing.
        failures = service.counts["failures"]
        await wait_until(lambda: service.counts["failures"] > failures, "a retry")

    assert expected in state["last_error"]
    assert expected in states[-1]["last_error"]
    assert state["connected"] is False
    assert state["backlog"] == 10
    assert state["sent"] == 0
    assert store.unsynced_count() == 10
    assert seen.events() == []
    assert "not-the-password" not in state["last_error"]


async def test_sync_reports_password_nowhere(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes = _wrong_password(tmp_path, upstream)
    config = dataclasses.replace(
        site_config, sync=dataclasses.replace(site_config.sync, **changes)
    )
    async with running(config, store, local_bus) as service:
        await wait_until(lambda: service.last_error is not None, "an error")
    assert "rejected the login" in caplog.text
    assert "not-the-password" not in caplog.text


async def test_sync_rejected_by_acl_marks_nothing(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    # Box club/box-1 logs in with the account of box annex/box-2, which may
    # publish only under nightbox/annex/box/box-2/.
    other_box = upstream.box_credentials("annex", "box-2")
    config = dataclasses.replace(
        site_config,
        sync=dataclasses.replace(site_config.sync, credentials_file=other_box),
    )
    emit_events(store, 10)
    async with (
        Collector(upstream, upstream.collector_credentials(), [EVENTS_FILTER]) as seen,
        running(config, store, local_bus) as service,
    ):
        await wait_until(lambda: service.counts["failures"] >= 2, "two attempts")
        state = service.state()

    assert "rejected the message on" in state["last_error"]
    assert "Not authorized" in state["last_error"]
    assert "box-club.box-1" in state["last_error"]
    assert state["sent"] == 0
    assert store.unsynced_count() == 10
    assert seen.events() == []


class RecordingManagement:
    """Remote management that records what it gets and returns fixed results."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []

    async def handle_command(self, name: str, payload: bytes) -> dict[str, Any]:
        self.received.append(("command", name, payload))
        return {
            "kind": "command",
            "type": name,
            "nonce": "c" * 32,
            "ok": True,
            "result": {"bytes": len(payload)},
        }

    async def handle_bundle(self, bundle_type: str, payload: bytes) -> dict[str, Any]:
        self.received.append(("bundle", bundle_type, payload))
        if bundle_type == "broken":
            raise RuntimeError("a bug in the bundle handler")
        return {
            "kind": "bundle",
            "type": bundle_type,
            "nonce": "b" * 32,
            "ok": False,
            "reason": "old-version",
            "message": "version 1 is not newer than 3",
        }

    def telemetry(self) -> dict[str, Any]:
        return {"guests_in": 42, "sync_backlog": 0}


@contextlib.asynccontextmanager
async def operator(
    fleet: Upstream,
) -> AsyncIterator[tuple[aiomqtt.Client, list[Any]]]:
    """An operator's client that records results and telemetry of box-1."""
    login = json.loads(fleet.operator_credentials().read_text())
    received: list[tuple[str, envelope.Envelope, bool]] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        fleet.broker.port,
        username=login["username"],
        password=login["password"],
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=client_tls_context(fleet.ca.ca_certificate),
    ) as client:
        await client.subscribe(TOPICS.command_result(BOX), qos=1)
        await client.subscribe(TOPICS.telemetry(BOX), qos=1)

        async def listen() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                received.append(
                    (message.topic.value, envelope.decode(payload), message.retain)
                )

        task = asyncio.create_task(listen())
        try:
            yield client, received
        finally:
            await cancel_and_wait(task)


def _results(received: list[Any]) -> list[dict[str, Any]]:
    return [
        body.data
        for topic, body, _retain in received
        if topic == TOPICS.command_result(BOX)
    ]


async def test_sync_routes_commands_and_bundles(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    management = RecordingManagement()
    command = b'{"type": "status", "body": {"box": "box-1"}}'
    box_bundle = b'{"type": "members", "version": 1}'
    site_bundle = b'{"type": "config", "version": 1}'
    async with (
        running(site_config, store, local_bus, management=management) as service,
        operator(upstream) as (client, received),
    ):
        await wait_until(lambda: service.connected, "the service to connect")
        await client.publish(TOPICS.command(BOX, "status"), command, qos=1)
        await wait_until(lambda: len(_results(received)) == 1, "the command's result")
        await client.publish(TOPICS.bundle(BOX, "members"), box_bundle, qos=1)
        await wait_until(
            lambda: len(_results(received)) == 2, "the box bundle's result"
        )
        await client.publish(TOPICS.bundle(None, "config"), site_bundle, qos=1)
        await wait_until(
            lambda: len(_results(received)) == 3, "the site bundle's result"
        )
        await client.publish(TOPICS.bundle(None, "broken"), b"{}", qos=1)
        await wait_until(
            lambda: len(_results(received)) == 4, "the failed bundle's result"
        )
        await wait_until(
            lambda: any(topic == TOPICS.telemetry(BOX) for topic, _b, _r in received),
            "telemetry",
        )

    assert management.received == [
        ("command", "status", command),
        ("bundle", "members", box_bundle),
        ("bundle", "config", site_bundle),
        ("bundle", "broken", b"{}"),
    ]
    results = _results(received)
    assert results[0] == {
        "kind": "command",
        "type": "status",
        "nonce": "c" * 32,
        "ok": True,
        "result": {"bytes": len(command)},
    }
    assert results[1]["type"] == "members"
    assert results[1]["reason"] == "old-version"
    assert results[2]["type"] == "config"
    assert results[3]["ok"] is False
    assert results[3]["reason"] == "error"
    envelopes = [
        body for topic, body, _r in received if topic == TOPICS.command_result(BOX)
    ]
    assert {body.src for body in envelopes} == {f"box/{BOX}"}
    telemetry = [body for topic, body, _r in received if topic == TOPICS.telemetry(BOX)]
    assert telemetry[0].data == {"guests_in": 42, "sync_backlog": 0}
    assert service.counts["commands"] == 1
    assert service.counts["bundles"] == 3


async def test_sync_without_management_answers_unavailable(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    nonce = "0123456789abcdef0123456789abcdef"
    command = json.dumps({"type": "restart", "nonce": nonce}).encode()
    async with (
        running(site_config, store, local_bus) as service,
        operator(upstream) as (client, received),
    ):
        await wait_until(lambda: service.connected, "the service to connect")
        await client.publish(TOPICS.command(BOX, "restart"), command, qos=1)
        await client.publish(TOPICS.bundle(None, "members"), b"not json", qos=1)
        await wait_until(lambda: len(_results(received)) == 2, "two results")

    command_result, bundle_result = _results(received)
    assert command_result["kind"] == "command"
    assert command_result["type"] == "restart"
    assert command_result["nonce"] == nonce
    assert command_result["ok"] is False
    assert command_result["reason"] == "unavailable"
    assert command_result["message"]
    assert bundle_result["kind"] == "bundle"
    assert bundle_result["type"] == "members"
    assert bundle_result["nonce"] is None
    assert bundle_result["reason"] == "unavailable"
    assert not any(topic == TOPICS.telemetry(BOX) for topic, _b, _r in received)


async def test_box_runs_sync_with_config(box: Box, upstream: Upstream) -> None:  # noqa: F811
    assert box.sync is not None
    async with Collector(
        upstream, upstream.collector_credentials(), [EVENTS_FILTER]
    ) as seen:
        await wait_until(lambda: box.status()["sync"]["connected"], "a connection")
        with box.store.transaction() as transaction:
            event = transaction.emit("checkout", {"band": "ib-1-7"})
        await wait_until(
            lambda: event.id in {body["id"] for _topic, body in seen.events()},
            "the box's event upstream",
        )
        await wait_until(lambda: box.status()["sync"]["backlog"] == 0, "no backlog")
    status = box.status()["sync"]
    assert status["sent"] >= 1
    assert status["last_error"] is None
    assert status["broker"] == upstream.url


@pytest.mark.parametrize(
    ("window", "receive_maximum", "expected"),
    [
        (256, None, 256),
        (16, 100, 16),
        (96, 100, 96),
        (97, 100, 96),
        (256, 100, 96),
        (256, 3, 1),
    ],
)
def test_effective_window(
    window: int, receive_maximum: int | None, expected: int
) -> None:
    assert effective_window(window, receive_maximum) == expected


async def test_sync_window_under_receive_maximum(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,
    upstream: Upstream,  # noqa: F811
) -> None:
    # The test broker sets max_inflight_messages 100, which mosquitto sends
    # as the Receive Maximum of its CONNACK.
    config = dataclasses.replace(
        site_config, sync=dataclasses.replace(site_config.sync, window=256)
    )
    emit_events(store, 300)
    async with running(config, store, local_bus) as service:
        await wait_until(lambda: store.unsynced_count() == 0, "the backlog to drain")
        window = service.window
    assert window == 96


def write_site_file(path: Path, site: SiteConfig, local: BrokerHandle) -> None:
    """Write ``site`` as a site file for ``nightbox run`` with its local broker."""
    assert site.sync is not None
    readers = "".join(
        f'\n[[readers]]\nid = "{reader.id}"\nrole = "{reader.role}"\n'
        for reader in site.readers
    )
    path.write_text(
        f'[site]\nid = "{site.site_id}"\nname = "{site.site_name}"\n\n'
        f'[box]\nid = "{site.box_id}"\ndata_dir = "{site.data_dir}"\n\n'
        f'[broker]\nmode = "external"\nhost = "{local.host}"\nport = {local.port}\n\n'
        f'[sync]\nbroker = "{site.sync.broker}"\nca_file = "{site.sync.ca_file}"\n'
        f'credentials_file = "{site.sync.credentials_file}"\n'
        f"window = {site.sync.window}\nretry_max_s = {site.sync.retry_max_s}\n\n"
        "[checkout]\nsilence_s = 3600\nstall_s = 3600\n" + readers
    )


def unsynced_in_file(path: Path) -> int:
    """Count unsynced events with a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM outbox WHERE synced_at IS NULL"
        ).fetchone()
    return int(count)


def launch(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=log)


async def test_sync_resends_after_crash(
    site_config: SiteConfig,
    mosquitto: BrokerHandle,
    upstream: Upstream,  # noqa: F811
    tmp_path: Path,
) -> None:
    store_path = site_config.data_dir / "nightbox.sqlite3"
    store = Store(store_path, SystemClock())
    events = emit_events(store, 20_000)
    store.close()
    site_file = tmp_path / "site.toml"
    write_site_file(site_file, site_config, mosquitto)
    command = [sys.executable, "-m", "appliance", "run", "--config", str(site_file)]
    log_path = tmp_path / "box.log"
    all_ids = {event.id for event in events}

    def received_ids() -> set[str]:
        return {body["id"] for _topic, body in seen.events()}

    async with Collector(
        upstream, upstream.collector_credentials(), [EVENTS_FILTER]
    ) as seen:
        box = launch(command, log_path)
        try:
            await wait_until(lambda: len(seen.events()) >= 500, "500 events upstream")
            box.send_signal(signal.SIGKILL)
            box.wait(timeout=TIMEOUT_S)
            left = unsynced_in_file(store_path)
            assert 0 < left < len(events)
            box = launch(command, log_path)
            await wait_until(
                lambda: unsynced_in_file(store_path) == 0, "the rest synced"
            )
            await wait_until(lambda: received_ids() >= all_ids, "every event")
        finally:
            box.terminate()
            box.wait(timeout=TIMEOUT_S)
    assert received_ids() == all_ids
