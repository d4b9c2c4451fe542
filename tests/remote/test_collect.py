"""The upstream collector against a TLS mosquitto and a real PostgreSQL.

Fleet boxes are paho clients that log in with their own upstream accounts
and publish events as the sync service does. The tests run the Collector
class that ``nightbox collect`` runs, in a thread of the test process.
Every wait is on a condition with a generous timeout, and nothing asserts
a speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from postgres import Postgres, postgres  # noqa: F401
from upstream_broker import Upstream, upstream  # noqa: F401

from appliance.bus.url import client_tls_context, parse_broker_url
from appliance.remote._collect_database import SCHEMA_VERSION, CollectorDatabase
from appliance.remote.collect import (
    Collector,
    CollectorSettings,
    DatabaseUnavailableError,
    load_login,
)

TIMEOUT_S = 60.0


def make_event(
    box: str = "box-1", seq: int = 1, event_type: str = "checkout", **changes: Any
) -> dict[str, Any]:
    """Return an upstream event body as a box's outbox sends it."""
    body: dict[str, Any] = {
        "v": 1,
        "id": str(uuid.uuid4()),
        "ts": round(time.time(), 3),
        "src": f"box/{box}",
        "type": event_type,
        "seq": seq,
        "clock_trusted": True,
        "data": {"band": f"ib-1-{seq}", "reader": "exit-1"},
    }
    body.update(changes)
    return body


def event_topic(site: str, box: str, event_type: str = "checkout") -> str:
    """Return the upstream topic of one box's events of ``event_type``."""
    return f"nightbox/{site}/box/{box}/events/{event_type}"


class FleetBox:
    """A box of the fleet, publishing on the upstream broker with its account."""

    def __init__(self, upstream: Upstream, site: str = "club", box: str = "box-1"):  # noqa: F811
        self.site = site
        self.box = box
        login = load_login(upstream.box_credentials(site, box))
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{site}-{box}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(login.username, login.password)
        self.client.tls_set_context(client_tls_context(upstream.ca.ca_certificate))
        self.client.connect("127.0.0.1", upstream.broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and return after the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def send_events(self, events: list[dict[str, Any]]) -> None:
        """Publish events on this box's topics, each after the previous PUBACK."""
        for body in events:
            topic = event_topic(self.site, self.box, body["type"])
            self.publish(topic, orjson.dumps(body))

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def fleet_box(
    upstream: Upstream,  # noqa: F811
    site: str = "club",
    box: str = "box-1",
) -> Iterator[FleetBox]:
    """A connected fleet box for the duration of a ``with`` block."""
    publisher = FleetBox(upstream, site, box)
    try:
        yield publisher
    finally:
        publisher.close()


def collector_settings(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
    **changes: Any,
) -> CollectorSettings:
    """Return settings for a collector with the fleet's collector account."""
    values: dict[str, Any] = {
        "broker": parse_broker_url(upstream.url),
        "database_url": postgres.dsn,
        "tls": client_tls_context(upstream.ca.ca_certificate),
        "login": load_login(upstream.collector_credentials()),
        "retry_max_s": 0.5,
    }
    values.update(changes)
    return CollectorSettings(**values)


class RunningCollector:
    """A collector running in a thread; ``stop()`` joins it and re-raises."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.collector = Collector(settings)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-collector")
        self._thread.start()

    @property
    def stats(self) -> Any:
        """The collector's counters."""
        return self.collector.stats

    def _run(self) -> None:
        try:
            self.collector.run()
        except BaseException as err:
            self.error = err

    def stop(self) -> None:
        """Stop the collector and wait for its thread."""
        self.collector.stop()
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive(), "the collector did not stop"
        if self.error is not None:
            raise self.error


@contextlib.asynccontextmanager
async def collecting(settings: CollectorSettings) -> Any:
    """Run a collector until the block ends, once it has subscribed."""
    running = RunningCollector(settings)
    try:
        await eventually(
            lambda: running.stats.subscriptions >= 1 or running.error is not None,
            "the collector subscribed",
        )
        if running.error is not None:
            raise running.error
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds; fail after TIMEOUT_S naming ``what``."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT_S} s waiting until {what}")
        await asyncio.sleep(0.05)


def count_rows(postgres: Postgres, table: str) -> int:  # noqa: F811
    """Return the number of rows in ``table`` (a fixed name from the test)."""
    rows = postgres.query(f"SELECT count(*) FROM {table}")
    return int(str(rows[0][0]))


def stored_ids(postgres: Postgres) -> list[str]:  # noqa: F811
    """Return the id of every stored event, in id order."""
    rows = postgres.query("SELECT event_id::text FROM events ORDER BY event_id")
    return [str(row[0]) for row in rows]


async def test_events_land_once(upstream: Upstream, postgres: Postgres) -> None:  # noqa: F811
    club = [make_event("box-1", seq) for seq in range(1, 151)]
    annex = [make_event("box-2", seq, "wallet_topup") for seq in range(1, 51)]

    async with collecting(collector_settings(upstream, postgres)) as running:
        with (
            fleet_box(upstream) as box_1,
            fleet_box(upstream, "annex", "box-2") as box_2,
        ):
            await asyncio.to_thread(box_1.send_events, club)
            await asyncio.to_thread(box_2.send_events, annex)
        await eventually(
            lambda: running.stats.acknowledged >= 200, "200 events are acknowledged"
        )

    assert stored_ids(postgres) == sorted(event["id"] for event in club + annex)
    assert running.stats.events_stored == 200
    assert running.stats.duplicates == 0
    per_box = postgres.query(
        "SELECT site, box, type, count(*), min(seq), max(seq) FROM events "
        "GROUP BY site, box, type ORDER BY site"
    )
    assert per_box == [
        ("annex", "box-2", "wallet_topup", 50, 1, 50),
        ("club", "box-1", "checkout", 150, 1, 150),
    ]


async def test_event_columns_match_payload(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    body = make_event(
        "box-1", 7, ts=1767225600.25, clock_trusted=False, data={"amount": 450}
    )

    async with collecting(collector_settings(upstream, postgres)) as running:
        with fleet_box(upstream) as box_1:
            box_1.send_events([body])
        await eventually(
            lambda: running.stats.events_stored == 1, "the event is stored"
        )

    rows = postgres.query(
        "SELECT event_id::text, site, box, seq, type, "
        "extract(epoch FROM created_at)::float8, clock_trusted, data, "
        "received_at IS NOT NULL FROM events"
    )
    assert rows == [
        (
            body["id"],
            "club",
            "box-1",
            7,
            "checkout",
            1767225600.25,
            False,
            {"amount": 450},
            True,
        )
    ]
    boxes = postgres.query(
        "SELECT site, box, last_event_at IS NOT NULL, last_seen_at IS NOT NULL "
        "FROM boxes"
    )
    assert boxes == [("club", "box-1", True, True)]


async def test_redelivered_event_changes_nothing(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    first = make_event("box-1", 1)
    altered = dict(first, data={"band": "changed"})
    marker = make_event("box-1", 2)

    async with collecting(collector_settings(upstream, postgres)) as running:
        with fleet_box(upstream) as box_1:
            box_1.send_events([first])
            await eventually(
                lambda: running.stats.events_stored == 1, "the first event is stored"
            )
            before = postgres.query("SELECT * FROM events")
            # The same bytes again, as a QoS 1 redelivery, then a copy with the
            # same id and other data, then a new event behind both.
            box_1.send_events([first, altered, marker])
            await eventually(
                lambda: running.stats.events_stored == 2, "the marker is stored"
            )

    assert running.stats.duplicates == 2
    after = postgres.query(f"SELECT * FROM events WHERE event_id = '{first['id']}'")
    assert after == before
    assert stored_ids(postgres) == sorted([first["id"], marker["id"]])


async def test_stopped_collector_gets_queued_events(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    settings = collector_settings(upstream, postgres)
    events = [make_event("box-1", seq) for seq in range(1, 101)]

    async with collecting(settings):
        pass
    # The collector is gone; its persistent session queues what boxes send.
    with fleet_box(upstream) as box_1:
        await asyncio.to_thread(box_1.send_events, events)
    assert count_rows(postgres, "events") == 0

    async with collecting(settings) as running:
        await eventually(
            lambda: running.stats.acknowledged >= 100, "the queued events are stored"
        )

    assert stored_ids(postgres) == sorted(event["id"] for event in events)


async def test_broker_restart_while_collecting(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    before = [make_event("box-1", seq) for seq in range(1, 41)]
    after = [make_event("box-1", seq) for seq in range(41, 81)]

    async with collecting(collector_settings(upstream, postgres)) as running:
        with fleet_box(upstream) as box_1:
            await asyncio.to_thread(box_1.send_events, before)
        await upstream.broker.restart()
        await eventually(
            lambda: running.stats.subscriptions >= 2,
            "the collector reconnected and subscribed again",
        )
        with fleet_box(upstream) as box_1:
            await asyncio.to_thread(box_1.send_events, after)
        await eventually(
            lambda: count_rows(postgres, "events") == 80, "all 80 events are stored"
        )

    assert stored_ids(postgres) == sorted(event["id"] for event in before + after)
    assert running.stats.connects >= 2


async def test_broker_restart_keeps_queued_events(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    settings = collector_settings(upstream, postgres)
    events = [make_event("box-1", seq) for seq in range(1, 51)]

    async with collecting(settings):
        pass
    with fleet_box(upstream) as box_1:
        await asyncio.to_thread(box_1.send_events, events)
    # mosquitto saves the collector's queue when it stops and loads it again.
    await upstream.broker.restart()

    async with collecting(settings) as running:
        await eventually(
            lambda: count_rows(postgres, "events") == 50, "the queued events are stored"
        )
        assert running.stats.events_stored == 50

    assert stored_ids(postgres) == sorted(event["id"] for event in events)


async def test_database_outage_loses_nothing(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    waves = [
        [make_event("box-1", 100 * wave + seq) for seq in range(1, 61)]
        for wave in range(3)
    ]
    settings = collector_settings(upstream, postgres)

    async with collecting(settings) as running:
        with fleet_box(upstream) as box_1:
            await asyncio.to_thread(box_1.send_events, waves[0])
            await eventually(
                lambda: running.stats.acknowledged == 60, "the first wave is stored"
            )
            await asyncio.to_thread(postgres.stop)
            await asyncio.to_thread(box_1.send_events, waves[1])
            await eventually(
                lambda: running.stats.database_failures >= 2,
                "the collector retried the database",
            )
            held = running.stats.acknowledged
            await asyncio.to_thread(postgres.start)
            await asyncio.to_thread(box_1.send_events, waves[2])
            await eventually(
                lambda: running.stats.acknowledged >= 180, "every wave is acknowledged"
            )

    assert held == 60
    assert stored_ids(postgres) == sorted(
        event["id"] for wave in waves for event in wave
    )
    assert "holding" in caplog.text.lower()
    assert postgres.password not in caplog.text


async def test_database_restart_while_events_flow(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    events = [make_event("box-1", seq) for seq in range(1, 301)]
    settings = collector_settings(upstream, postgres, batch_max=20)

    async with collecting(settings) as running:
        with fleet_box(upstream) as box_1:
            sending = asyncio.create_task(asyncio.to_thread(box_1.send_events, events))
            await eventually(
                lambda: running.stats.events_stored >= 20, "events start to arrive"
            )
            await asyncio.to_thread(postgres.restart)
            await sending
        await eventually(
            lambda: count_rows(postgres, "events") == 300, "all 300 events are stored"
        )

    assert stored_ids(postgres) == sorted(event["id"] for event in events)


async def test_group_members_share_events(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    events = [make_event("box-1", seq) for seq in range(1, 61)]
    first = collector_settings(upstream, postgres, group="fleet", client_id="c-1")
    second = collector_settings(upstream, postgres, group="fleet", client_id="c-2")

    async with collecting(first) as one, collecting(second) as two:
        with fleet_box(upstream) as box_1:
            await asyncio.to_thread(box_1.send_events, events)
        await eventually(
            lambda: count_rows(postgres, "events") == 60, "all 60 events are stored"
        )

    assert stored_ids(postgres) == sorted(event["id"] for event in events)
    assert one.stats.events_stored > 0
    assert two.stats.events_stored > 0
    assert one.stats.events_stored + two.stats.events_stored == 60


async def test_site_option_limits_boxes(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    club_event = make_event("box-1", 1)
    annex_event = make_event("box-2", 1)

    async with collecting(
        collector_settings(upstream, postgres, site="annex")
    ) as running:
        # mosquitto routes a message before its PUBACK and sends a session's
        # messages in order, so the club event would arrive before the annex one.
        with fleet_box(upstream) as box_1:
            box_1.send_events([club_event])
        with fleet_box(upstream, "annex", "box-2") as box_2:
            box_2.send_events([annex_event])
        await eventually(
            lambda: running.stats.events_stored == 1, "the annex event is stored"
        )

    assert running.stats.received == 1
    assert stored_ids(postgres) == [annex_event["id"]]


async def test_box_state_kept(upstream: Upstream, postgres: Postgres) -> None:  # noqa: F811
    base = "nightbox/club/box/box-1"
    telemetry = make_event(data={"guests_in": 12, "sync_backlog": 0})
    sync_state = make_event(data={"connected": True, "backlog": 3})

    async with collecting(collector_settings(upstream, postgres)) as running:
        with fleet_box(upstream) as box_1:
            box_1.publish(f"{base}/availability", b"online", retain=True)
            box_1.publish(f"{base}/tele/state", orjson.dumps(telemetry), retain=True)
            box_1.publish(f"{base}/tele/sync", orjson.dumps(sync_state), retain=True)
            await eventually(
                lambda: running.stats.states == 3, "three states are stored"
            )
            online = postgres.query("SELECT availability, telemetry, sync FROM boxes")
            box_1.publish(f"{base}/availability", b"offline", retain=True)
            await eventually(lambda: running.stats.states == 4, "offline is stored")

    assert online == [
        (
            "online",
            {"guests_in": 12, "sync_backlog": 0},
            {"connected": True, "backlog": 3},
        )
    ]
    rows = postgres.query(
        "SELECT availability, availability_since IS NOT NULL, last_seen_at IS NOT NULL "
        "FROM boxes"
    )
    assert rows == [("offline", True, True)]
    assert count_rows(postgres, "events") == 0


async def test_retained_availability_stored(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    with fleet_box(upstream, "annex", "box-2") as box_2:
        box_2.publish("nightbox/annex/box/box-2/availability", b"online", retain=True)

    async with collecting(collector_settings(upstream, postgres)) as running:
        await eventually(
            lambda: running.stats.states == 1, "the retained state is stored"
        )

    rows = postgres.query("SELECT site, box, availability, last_seen_at FROM boxes")
    # A retained message carries the last state but is no sign the box is up now.
    assert rows == [("annex", "box-2", "online", None)]


async def test_box_account_reads_no_events(
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    settings = collector_settings(
        upstream, postgres, login=load_login(upstream.box_credentials())
    )

    async with collecting(settings) as running:
        with (
            fleet_box(upstream, "annex", "box-2") as box_2,
            fleet_box(upstream) as box_1,
        ):
            box_2.send_events([make_event("box-2", 1)])
            box_1.send_events([make_event("box-1", 1)])
            box_2.publish(
                "nightbox/annex/box/box-2/availability", b"online", retain=True
            )
        # The broker sends a session's queued and unacknowledged messages
        # before its SUBACK to the new SUBSCRIBE, so once the collector has
        # subscribed again, every message the ACL let through has arrived.
        await upstream.broker.restart()
        await eventually(
            lambda: running.stats.subscriptions >= 2,
            "the collector subscribed again after the broker restart",
        )

    assert running.stats.received == 0
    assert count_rows(postgres, "events") == 0
    assert count_rows(postgres, "boxes") == 0


def test_schema_created_once(postgres: Postgres) -> None:  # noqa: F811
    for _ in range(2):
        database = CollectorDatabase(postgres.dsn)
        database.open()
        database.close()

    assert postgres.query("SELECT version FROM collector_schema") == [(SCHEMA_VERSION,)]
    tables = postgres.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    )
    assert tables == [
        ("boxes",),
        ("collector_schema",),
        ("events",),
        ("rejected_messages",),
    ]


def test_newer_schema_rejected(postgres: Postgres) -> None:  # noqa: F811
    database = CollectorDatabase(postgres.dsn)
    database.open()
    database.close()
    with postgres.connect() as connection:
        connection.execute("INSERT INTO collector_schema (version) VALUES (99)")

    with pytest.raises(DatabaseUnavailableError, match="schema version 99") as raised:
        CollectorDatabase(postgres.dsn).open()
    assert postgres.password not in str(raised.value)
