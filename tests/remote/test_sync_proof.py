"""Every event of a box reaches PostgreSQL exactly once, whatever fails on the way.

Two real mosquitto brokers run on loopback: the box's own and the fleet's
upstream broker with TLS from a CA made for the test. The collector writes
into a real PostgreSQL server. The box's outbox in SQLite is compared with
the ``events`` table at the end of each test: the same ids, each once, with
the same data.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from postgres import Postgres, postgres  # noqa: F401
from test_collect import collecting, collector_settings, eventually
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance.bus.broker import BrokerHandle
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig
from appliance.runtime import Box
from appliance.sim.demo import DemoOptions, run_demo
from appliance.store import Store

SITE = "club"
BOX = "box-1"
KILLS = 20
TIMEOUT_S = 60.0
BOX_COMMAND = (sys.executable, "-m", "appliance", "run")


def outbox(database: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Return every event in a box's SQLite outbox: id -> (type, data)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT id, type, body FROM outbox").fetchall()
    finally:
        connection.close()
    return {event_id: (kind, orjson.loads(body)) for event_id, kind, body in rows}


def synced_count(database: Path) -> int:
    """Return how many events the upstream broker has acknowledged."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM outbox WHERE synced_at IS NOT NULL"
        ).fetchone()
    finally:
        connection.close()
    return int(count)


def backlog(database: Path) -> int:
    """Return how many events wait for the upstream broker's acknowledgement."""
    return len(outbox(database)) - synced_count(database)


def stored(postgres: Postgres, site: str) -> dict[str, tuple[str, dict[str, Any]]]:  # noqa: F811
    """Return every event of ``site`` in PostgreSQL, asserting no id repeats."""
    rows = postgres.query(
        f"SELECT event_id::text, type, data FROM events WHERE site = '{site}'"
    )
    ids = [str(row[0]) for row in rows]
    assert len(ids) == len(set(ids)), "an event id is stored twice"
    return {str(row[0]): (str(row[1]), row[2]) for row in rows}  # type: ignore[misc]


def assert_exactly_once(
    database: Path,
    postgres: Postgres,  # noqa: F811
    site: str,
) -> int:
    """Assert that PostgreSQL has each event of the outbox once, unchanged."""
    expected = outbox(database)
    assert expected, "the box committed no events"
    assert stored(postgres, site) == expected
    return len(expected)


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream) -> SiteConfig:  # noqa: F811
    """The test site as box club/box-1 of the fleet's upstream broker."""
    return fleet_site_config(tmp_path / "box", upstream, window=64)


async def test_upstream_down_for_a_whole_demo_night(
    tmp_path: Path,
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    data_dir = tmp_path / "demo"
    backlog_at_dawn: list[int] = []

    async def bring_upstream_back(box: Box) -> None:
        assert box.sync is not None
        state = box.sync.state()
        assert not state["connected"]
        backlog_at_dawn.append(state["backlog"])
        await upstream.broker.restart()
        await eventually(
            lambda: box.sync is not None and box.sync.state()["backlog"] == 0,
            "the night's backlog drained upstream",
        )
        assert box.sync.state()["last_success"] is not None

    async with collecting(collector_settings(upstream, postgres)):
        # The collector's persistent session exists before the outage, so
        # the broker keeps the events for it across its own restart.
        await upstream.broker.stop()
        options = DemoOptions(
            guests=120,
            speed=600.0,
            seed=3,
            headless=True,
            broker_mode="mosquitto",
            data_dir=data_dir,
            sync=upstream.sync_config("demo", "box-1", window=64),
            after_night=bring_upstream_back,
        )
        results = await run_demo(options, progress=None)
        database = data_dir / "nightbox.sqlite3"
        total = len(outbox(database))
        await eventually(
            lambda: len(stored(postgres, "demo")) >= total,
            "every event of the night reached PostgreSQL",
        )

    assert results["checkouts"] > 0
    # Every event of the night waited for the broker: nothing was marked
    # synced while it was down.
    assert backlog_at_dawn == [total]
    assert assert_exactly_once(database, postgres, "demo") == total


class BoxProcess:
    """``nightbox run`` as a subprocess that the test starts and kills."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self._config_path = config_path
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*BOX_COMMAND, "--config", str(self._config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def kill(self) -> None:
        """SIGKILL the box: no clean shutdown of any kind."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=TIMEOUT_S)

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]


def write_config(
    path: Path,
    site: SiteConfig,
    broker: BrokerHandle,
    upstream: Upstream,  # noqa: F811
) -> None:
    readers = "".join(
        f'\n[[readers]]\nid = "{reader.id}"\nrole = "{reader.role}"\n'
        f"kit_stock = {reader.kit_stock}\n"
        for reader in site.readers
    )
    path.write_text(
        f'[site]\nid = "{site.site_id}"\nname = "Club"\n\n'
        f'[box]\nid = "{site.box_id}"\ndata_dir = "{site.data_dir}"\n\n'
        f'[broker]\nmode = "external"\nhost = "{broker.host}"\n'
        f"port = {broker.port}\n\n"
        f'[sync]\nbroker = "{upstream.url}"\n'
        f'ca_file = "{upstream.ca.ca_certificate}"\n'
        f'credentials_file = "{upstream.box_credentials(SITE, BOX)}"\n'
        "window = 64\nretry_max_s = 0.5\n\n"
        "[checkout]\nsilence_s = 3600\nstall_s = 3600\n" + readers
    )


@pytest.fixture
def box_process(
    tmp_path: Path,
    site_config: SiteConfig,
    mosquitto: BrokerHandle,
    upstream: Upstream,  # noqa: F811
) -> Iterator[BoxProcess]:
    config_path = tmp_path / "site.toml"
    write_config(config_path, site_config, mosquitto, upstream)
    process = BoxProcess(config_path, tmp_path / "box.log")
    try:
        yield process
    finally:
        process.kill()


def add_events(site: SiteConfig, count: int, first: int) -> None:
    """Commit ``count`` events into the box's outbox while it is not running."""
    store = Store(site.data_dir / "nightbox.sqlite3", SystemClock(TimeSource.NTP))
    try:
        with store.transaction() as transaction:
            for number in range(first, first + count):
                transaction.emit(
                    "wallet_charge",
                    {"band": f"ib-1-{number % 500}", "amount": number, "n": number},
                )
    finally:
        store.close()


async def test_box_killed_mid_sync_twenty_times(
    site_config: SiteConfig,
    box_process: BoxProcess,
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    database = site_config.data_dir / "nightbox.sqlite3"
    chance = random.Random(20)
    added = 0
    kills_mid_sync = 0
    async with collecting(collector_settings(upstream, postgres)):
        for _ in range(KILLS):
            # Keep a backlog, so every kill lands while events are in flight.
            # The backlog lasts well beyond the wait below: about half a
            # second of draining at the rate bench.sync measures.
            if not database.exists() or backlog(database) < 8_000:
                add_events(site_config, 8_000, added)
                added += 8_000
            before = synced_count(database)
            box_process.start()
            try:
                await eventually(
                    lambda before=before: synced_count(database) > before,  # type: ignore[misc]
                    "the restarted box syncs again",
                )
            except BaseException:
                print(box_process.log(), file=sys.stderr)
                raise
            await asyncio.sleep(chance.uniform(0.0, 0.1))
            box_process.kill()
            if backlog(database) > 0:
                kills_mid_sync += 1
        box_process.start()
        total = len(outbox(database))
        await eventually(
            lambda: synced_count(database) == total, "the last start drained the outbox"
        )
        await eventually(
            lambda: len(stored(postgres, SITE)) >= total,
            "every event reached PostgreSQL",
        )
        box_process.kill()

    assert kills_mid_sync == KILLS
    assert assert_exactly_once(database, postgres, SITE) == total


async def test_both_brokers_restart_while_events_flow(
    box: Box,
    mosquitto: BrokerHandle,
    upstream: Upstream,  # noqa: F811
    postgres: Postgres,  # noqa: F811
) -> None:
    assert box.sync is not None
    sync = box.sync

    async def commit_events() -> None:
        for round_number in range(60):
            with box.store.transaction() as transaction:
                for number in range(50):
                    transaction.emit("checkout", {"n": round_number * 50 + number})
            await asyncio.sleep(0.05)

    async with collecting(collector_settings(upstream, postgres)):
        committing = asyncio.create_task(commit_events())
        await eventually(lambda: sync.state()["sent"] > 0, "sync started")
        await mosquitto.restart()
        await eventually(lambda: box.bus.connected.is_set(), "the box reconnected")
        await upstream.broker.restart()
        await eventually(lambda: sync.state()["connected"], "sync reconnected")
        await upstream.broker.restart()
        await mosquitto.restart()
        await committing
        await eventually(lambda: sync.state()["backlog"] == 0, "the backlog drained")
        total = len(outbox(box.store.path))
        await eventually(
            lambda: len(stored(postgres, SITE)) >= total,
            "every event reached PostgreSQL",
        )

    assert total >= 3_000
    assert assert_exactly_once(box.store.path, postgres, SITE) == total
