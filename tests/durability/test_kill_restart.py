"""``nightbox run`` killed with SIGKILL and restarted: nothing lost, nothing twice.

The box runs as a real subprocess against the test's mosquitto (``[broker]
mode = "external"``) and keeps its store and broker passwords in the test
site's data folder. Readers, the kit station, the desk and an observer are
bus clients in the test. After each restart the test replays what a reader
or a kit station would resend, then reads the SQLite file directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SITE_UUID, ClientFactory

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig
from appliance.sim import _adverts
from appliance.store import Store
from appliance.tokens import box_tokens

TIMEOUT_S = 15.0
STOCK = 5  # kit-1 in the test site
PASSING_BAND = "ib-1-1"
KIT_BAND = "ib-1-2"
EMAIL = "night.owl@example.org"

Predicate = Callable[[str, bytes], bool]


class Inbox:
    """Every message the observer received, in order, with bounded waits."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        self.messages.append((incoming.topic, incoming.payload))
        self._arrived.set()

    def mark(self) -> int:
        """Return the current position, so that a later wait skips earlier messages."""
        return len(self.messages)

    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(payload)
            for topic, payload in self.messages
            if "/events/" in topic
        ]

    async def wait_until(self, condition: Callable[[], bool], description: str) -> None:
        """Wait, bounded, until ``condition()`` is true after a message."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not condition():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            topics = [topic for topic, _payload in self.messages]
            pytest.fail(f"no {description} within {TIMEOUT_S} s; received: {topics}")

    async def wait_for(
        self, predicate: Predicate, description: str, since: int = 0
    ) -> bytes:
        """Wait for a matching message from position ``since`` on and return it."""
        found: list[bytes] = []

        def arrived() -> bool:
            found[:] = [p for t, p in self.messages[since:] if predicate(t, p)]
            return bool(found)

        await self.wait_until(arrived, description)
        return found[0]


def availability(value: bytes) -> Predicate:
    def matches(topic: str, payload: bytes) -> bool:
        return topic.endswith("/box/box-1/availability") and payload == value

    return matches


def event(event_type: str, band: str) -> Predicate:
    def matches(topic: str, payload: bytes) -> bool:
        if not topic.endswith(f"/events/{event_type}"):
            return False
        return bool(json.loads(payload)["data"].get("band") == band)

    return matches


def status(condition: Callable[[dict[str, Any]], bool]) -> Predicate:
    def matches(topic: str, payload: bytes) -> bool:
        if not topic.endswith("/box/box-1/status"):
            return False
        return condition(json.loads(payload)["data"])

    return matches


class BoxProcess:
    """``nightbox run`` as a subprocess that the test starts, kills and restarts."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self._config_path = config_path
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self._log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            command = [sys.executable, "-m", "appliance", "-v", "run"]
            self._process = subprocess.Popen(
                [*command, "--config", str(self._config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def kill(self) -> None:
        """Send SIGKILL and reap the process: no clean shutdown of any kind."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]


def write_config(path: Path, site: SiteConfig, broker: BrokerHandle) -> None:
    readers = "".join(
        f'\n[[readers]]\nid = "{reader.id}"\nrole = "{reader.role}"\n'
        f"kit_stock = {reader.kit_stock}\n"
        for reader in site.readers
    )
    uuid_hex = site.ibeacon_uuid.hex() if site.ibeacon_uuid else ""
    path.write_text(
        f'[site]\nid = "{site.site_id}"\nname = "{site.site_name}"\n\n'
        f'[box]\nid = "{site.box_id}"\ndata_dir = "{site.data_dir}"\n\n'
        f'[broker]\nmode = "external"\nhost = "{broker.host}"\n'
        f"port = {broker.port}\n\n"
        f'[bands]\nibeacon_uuid = "{uuid_hex}"\n\n'
        # Long health timeouts: the readers here fall quiet on purpose.
        "[checkout]\nsilence_s = 3600\nstall_s = 3600\n" + readers
    )


@pytest.fixture
def box_process(
    tmp_path: Path, site_config: SiteConfig, mosquitto: BrokerHandle
) -> Iterator[BoxProcess]:
    config_path = tmp_path / "site.toml"
    write_config(config_path, site_config, mosquitto)
    process = BoxProcess(config_path, tmp_path / "box.log")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
async def inbox(make_client: ClientFactory) -> AsyncIterator[Inbox]:
    received = Inbox()
    async with make_client(
        "observer", "observer", "durability", announce=False, wait=False
    ) as observer:
        topics = observer.topics
        # Subscribed before connecting, so nothing published later is missed.
        observer.subscribe(topics.all_events, received.on_message)
        observer.subscribe(topics.availability("box", "box-1"), received.on_message)
        observer.subscribe(topics.status("box", "box-1"), received.on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield received


async def start_box(box: BoxProcess, inbox: Inbox) -> None:
    """Start the box and wait until it announces itself, after subscribing."""
    mark = inbox.mark()
    box.start()
    try:
        await inbox.wait_for(availability(b"online"), "box online", since=mark)
    except BaseException:
        print(box.log(), file=sys.stderr)
        raise


async def kill_box(box: BoxProcess, inbox: Inbox) -> None:
    """SIGKILL the box and wait for the broker to publish its last will."""
    mark = inbox.mark()
    box.kill()
    await inbox.wait_for(availability(b"offline"), "box last will", since=mark)


def pass_batches(start_s: float, first_seq: int, count: int) -> list[dict[str, Any]]:
    """Batches of exit-1 with PASSING_BAND close by, one every 0.5 s."""
    advert = _adverts.ibeacon(SITE_UUID, 1, 1, -59).hex()
    batches = []
    for index in range(count):
        t = round(start_s + 0.5 * index, 3)
        sighting = {"t": t, "rssi": -55, "n": 2, "adv": advert}
        batches.append(
            {
                "reader": "exit-1",
                "boot": "boot-a",
                "seq": first_seq + index,
                "t": t,
                "heard": 2,
                "sightings": [sighting],
            }
        )
    return batches


async def publish_batches(reader: Bus, batches: list[dict[str, Any]]) -> None:
    topic = reader.topics.sightings("exit-1")
    for batch in batches:
        await reader.publish_json(topic, {"data": batch})


def kit_request(key: str) -> dict[str, Any]:
    return {"band": KIT_BAND, "station": "kit-1", "idempotency_key": key}


def issue_token(site: SiteConfig, subject: str, *scopes: str) -> str:
    """Issue an edge token with the box's own key and store, as the box would.

    Call it before the box starts. The box then publishes the
    ``token_issued`` event from its outbox when it starts, whereas a commit
    from another process does not wake a running box's publisher.
    """
    clock = SystemClock(TimeSource.NTP)
    store = Store(site.data_dir / "nightbox.sqlite3", clock)
    try:
        return box_tokens(site, store, clock).issue(subject, scopes, 3600.0).token
    finally:
        store.close()


def query(site: SiteConfig, sql: str) -> list[tuple[Any, ...]]:
    """Read the box's SQLite file directly, beside the running box."""
    connection = sqlite3.connect(site.data_dir / "nightbox.sqlite3", timeout=10)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


async def wait_until_published(site: SiteConfig, inbox: Inbox) -> set[str]:
    """Wait until the observer has seen every committed event and return the ids."""
    committed = {row[0] for row in query(site, "SELECT id FROM outbox")}

    def all_seen() -> bool:
        return committed <= {body["id"] for body in inbox.events()}

    await inbox.wait_until(all_seen, f"publication of all {len(committed)} events")
    return committed


@contextlib.asynccontextmanager
async def clients(make_client: ClientFactory) -> AsyncIterator[tuple[Bus, Bus, Bus]]:
    async with (
        make_client("reader-exit-1", "reader", "exit-1") as exit_1,
        make_client("reader-kit-1", "reader", "kit-1") as station,
        make_client("terminal-desk", "terminal", "desk") as desk,
    ):
        yield exit_1, station, desk


async def test_kill_restart_no_duplicates(
    box_process: BoxProcess,
    inbox: Inbox,
    make_client: ClientFactory,
    site_config: SiteConfig,
) -> None:
    desk_token = issue_token(site_config, "desk", "optin:register")

    async with clients(make_client) as (exit_1, station, desk):
        await start_box(box_process, inbox)
        optin = {
            "band": KIT_BAND,
            "email": EMAIL,
            "consent": True,
            "consent_text": "One follow-up offer after tonight.",
            "idempotency_key": str(uuid.uuid4()),
        }
        await desk.request(
            desk.topics.api("optin", "register"),
            optin,
            timeout_s=TIMEOUT_S,
            token=desk_token,
        )
        batches = pass_batches(time.time(), first_seq=1, count=4)
        await publish_batches(exit_1, batches)
        await inbox.wait_for(event("checkout", PASSING_BAND), "check-out")
        key = str(uuid.uuid4())
        topic = station.topics.api("kits", "issue")
        first = await station.request(topic, kit_request(key), timeout_s=TIMEOUT_S)
        await kill_box(box_process, inbox)

        restarted = inbox.mark()
        await start_box(box_process, inbox)
        # A reader that lost its PUBACKs sends the batches again, then the pass
        # goes on.
        continuation = pass_batches(batches[-1]["t"] + 0.5, first_seq=5, count=1)
        await publish_batches(exit_1, batches + continuation)
        processed = await inbox.wait_for(
            status(lambda data: data["batches"] >= len(batches) + 1),
            "status after the replayed batches",
            since=restarted,
        )
        retry = await station.request(topic, kit_request(key), timeout_s=TIMEOUT_S)
        committed = await wait_until_published(site_config, inbox)

    counters = json.loads(processed)["data"]
    assert counters["checkouts"] == 0
    # The tracker fired again on the replay, and the store rejected it.
    assert counters["repeat_crossings"] >= 1
    assert first["coupon"] is not None
    assert retry == first
    assert first["remaining"] == STOCK - 1

    observed = inbox.events()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for body in observed:
        by_id.setdefault(body["id"], []).append(body)
    assert set(by_id) <= committed  # nothing announced that was not committed
    for copies in by_id.values():
        assert all(copy == copies[0] for copy in copies)
    for event_type, band in (
        ("checkout", PASSING_BAND),
        ("kit_issued", KIT_BAND),
        ("coupon_issued", KIT_BAND),
        ("optin_recorded", KIT_BAND),
    ):
        ids = {
            body["id"]
            for body in observed
            if body["type"] == event_type and body["data"]["band"] == band
        }
        assert len(ids) == 1, (event_type, ids)

    assert query(site_config, "SELECT band FROM checkouts") == [(PASSING_BAND,)]
    assert query(site_config, "SELECT band FROM kits") == [(KIT_BAND,)]
    assert query(site_config, "SELECT remaining FROM kit_stock") == [(STOCK - 1,)]
    assert query(site_config, "SELECT code FROM coupons") == [
        (first["coupon"]["code"],)
    ]
    assert query(site_config, "SELECT COUNT(*) FROM requests") == [(2,)]


@pytest.mark.parametrize("delay_s", [0.0, 0.02], ids=["at-once", "after-20ms"])
async def test_kill_during_kit_request(
    box_process: BoxProcess,
    inbox: Inbox,
    make_client: ClientFactory,
    site_config: SiteConfig,
    delay_s: float,
) -> None:
    async with clients(make_client) as (_exit_1, station, _desk):
        await start_box(box_process, inbox)
        key = str(uuid.uuid4())
        topic = station.topics.api("kits", "issue")
        body = {"data": kit_request(key), "deadline": time.time() + TIMEOUT_S}
        # Sent by hand so the test returns at the broker's PUBACK, whether
        # or not the box has replied yet. Bus.publish, unlike Bus.request,
        # sends to the topic as given, so it is the station's own.
        await station.publish(
            station.topics.device_api("reader", "kit-1", "kits", "issue"),
            envelope.encode(station.settings.src, body),
            response_topic=station.topics.reply("reader", "kit-1"),
            correlation=uuid.uuid4().bytes,
            timeout_s=TIMEOUT_S,
        )
        await asyncio.sleep(delay_s)
        await kill_box(box_process, inbox)
        answered_before = query(site_config, "SELECT key FROM requests")

        await start_box(box_process, inbox)
        retry = await station.request(topic, kit_request(key), timeout_s=TIMEOUT_S)
        again = await station.request(topic, kit_request(key), timeout_s=TIMEOUT_S)
        await wait_until_published(site_config, inbox)

    assert answered_before in ([], [(key,)])
    assert retry["band"] == KIT_BAND
    assert retry["remaining"] == STOCK - 1
    assert again == retry
    assert query(site_config, "SELECT band FROM kits") == [(KIT_BAND,)]
    assert query(site_config, "SELECT remaining FROM kit_stock") == [(STOCK - 1,)]
    kit_events = {body["id"] for body in inbox.events() if body["type"] == "kit_issued"}
    assert len(kit_events) == 1
