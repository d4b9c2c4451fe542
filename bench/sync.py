"""Sync speed: a 100,000-event outbox drained to a TLS upstream broker.

Run ``python -m bench.sync`` for a table or ``--json`` for one JSON line.
The benchmark starts its own upstream mosquitto on 127.0.0.1 with TLS (a
fleet CA made by ``make_fleet_ca``), persistence and the fleet ACL, for a
site with two boxes, and the box's local mosquitto, where the sync service
publishes its state. Everything else runs in this process except the
collector, a plain paho subscriber in a process of its own on the fleet's
collector account, as the real collector is a separate program.

Each pass fills a fresh store's outbox with realistic check-out and wallet
events (not timed), then runs, in this order:

- raw: a plain paho client on the second box's account publishes the same
  payloads at QoS 1 to that box's events topics (same topic lengths), with
  paho's in-flight limit set to the sync window, and waits for every
  PUBACK. Its rate runs from the first publish to the last PUBACK.
- sync: ``SyncService`` drains the outbox. Its rate runs from the moment it
  is connected (subscriptions and availability done) until every event is
  marked synced, which happens after each event's PUBACK.

After each phase the collector reports, from the ids it received for that
box, how many events were lost (never received), duplicated (received more
than once) or unexpected. The best pass of each phase is reported, because
other work on the machine only ever slows a pass down, and ``ratio`` is the
best sync rate over the best raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from appliance.bus.broker import (
    BrokerHandle,
    TlsFiles,
    free_port,
    start_broker,
    start_fleet_mosquitto,
)
from appliance.bus.client import Bus, BusSettings
from appliance.bus.topics import Topics
from appliance.bus.url import client_tls_context, parse_broker_url
from appliance.clock import SystemClock
from appliance.config import BrokerConfig, ReaderConfig, SiteConfig
from appliance.outbox import event_payload
from appliance.remote.config import SyncConfig
from appliance.remote.sync import SyncService, effective_window
from appliance.runtime import tune_garbage_collector
from appliance.store import Store
from bench.ingest import mosquitto_version
from provisioning import SiteCredentials
from provisioning.fleet_access import (
    COLLECTOR,
    FleetBox,
    fleet_policy,
    upstream_box_username,
)
from provisioning.fleet_tls import make_fleet_ca
from provisioning.secret_file import write_secret_file
from provisioning.site_access import ReaderGrant, box_username, site_policy

TARGET_RATIO = 0.7
SEED = 20261205
SITE = "bench"
BOX = "box-1"
# The raw client's box: an id as long as BOX, so topics have the same size.
RAW_BOX = "box-2"
_POLL_S = 0.002
_PHASE_TIMEOUT_S = 300.0
# The collector reports once it has the expected number of messages, or
# after this many seconds without a new one.
_COLLECTOR_QUIET_S = 15.0
_EVENTS_PER_COMMIT = 1000


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """The size of one run.

    Attributes:
        events: events in the outbox at the start of each pass.
        window: QoS 1 messages waiting for their PUBACK at once, for both the
            sync service (``sync.window``) and the raw client.
        passes: alternating passes of the raw and the sync phase.
    """

    events: int = 100_000
    window: int = 256
    passes: int = 3


FULL = SyncSettings()
QUICK = SyncSettings(events=2000, window=64, passes=1)


def event_data(number: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Return the type and data of a realistic event: check-outs and wallet moves.

    The fields are those that ``CheckoutPipeline`` and the wallet ledger
    write, with values of their usual size.
    """
    band = f"ib-1-{rng.randrange(20_000)}"
    kind = number % 4
    if kind < 2:
        return "checkout", {
            "band": band,
            "reader": f"exit-{rng.randrange(1, 5)}",
            "seen_at": round(1_796_400_000 + number * 0.05, 3),
            "rssi_dbm": round(rng.uniform(-66.0, -45.0), 2),
            "format": "ibeacon",
        }
    data: dict[str, Any] = {
        "transaction_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "band": band,
        "currency": "EUR",
        "terminal": f"pos-{rng.randrange(1, 9)}",
        "night": "2026-12-04",
    }
    if kind == 2:
        data |= {"kind": "topup", "amount": 2000, "method": "card"}
        return "wallet_topup", data
    data |= {
        "kind": "charge",
        "amount": 450,
        "item": "beer",
        "quantity": 1,
        "list_amount": 450,
    }
    return "wallet_charge", data


def fill_outbox(store: Store, count: int, rng: random.Random) -> list[bytes]:
    """Commit ``count`` events and return their payloads, in seq order."""
    for first in range(0, count, _EVENTS_PER_COMMIT):
        with store.transaction() as transaction:
            for number in range(first, min(first + _EVENTS_PER_COMMIT, count)):
                event_type, data = event_data(number, rng)
                transaction.emit(event_type, data)
    events = store.unsynced(limit=count)
    return [event_payload(event, f"box/{BOX}") for event in events]


def event_topics(store: Store, count: int, box_id: str) -> list[str]:
    """Return the upstream topic of each unsynced event, as ``box_id``'s."""
    topics = Topics(SITE)
    return [
        topics.upstream_event(box_id, event.type)
        for event in store.unsynced(limit=count)
    ]


def payload_ids(payloads: Sequence[bytes]) -> list[str]:
    """Return the event id of each payload."""
    return [orjson.loads(payload)["id"] for payload in payloads]


class Collector:
    """The collector process: a paho subscriber that counts event ids per box."""

    def __init__(self, port: int, ca_file: Path, credentials: Path) -> None:
        self._arguments = [
            "--collector",
            str(port),
            str(ca_file),
            str(credentials),
        ]
        self._process: asyncio.subprocess.Process | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Collector]:
        """Start the process, wait until it has subscribed, and stop it on exit."""
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.sync",
            *self._arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            line = await asyncio.wait_for(self._read_line(), 30)
            if line.strip() != b"ready":
                raise RuntimeError(f"the collector did not start: {line!r}")
            yield self
        finally:
            process = self._process
            if process.returncode is None:
                process.terminate()
                await process.wait()

    async def _read_line(self) -> bytes:
        process = self._process
        if process is None or process.stdout is None:
            raise RuntimeError("the collector is not running")
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("the collector exited; see its errors above")
        return line

    async def report(self, box_id: str, ids_file: Path) -> dict[str, int]:
        """Return lost, duplicated and unexpected counts of ``box_id``'s events.

        ``ids_file`` lists the expected event ids, one a line. The collector
        clears the box's counts after the report.
        """
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError("the collector is not running")
        process.stdin.write(f"{box_id} {ids_file}\n".encode())
        await process.stdin.drain()
        line = await asyncio.wait_for(self._read_line(), _PHASE_TIMEOUT_S)
        report: dict[str, int] = json.loads(line)
        return report


def run_collector(port: int, ca_file: Path, credentials: Path) -> int:
    """Run the collector process: count ids per box and report on request.

    Reads ``<box id> <ids file>`` lines from stdin and prints one JSON line
    for each, once the box's expected messages arrived or stopped arriving.
    """
    login = json.loads(credentials.read_text())
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    last_message = [time.monotonic()]
    subscribed = threading.Event()

    def on_connect(
        client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            print(f"collector login failed: {reason}", file=sys.stderr, flush=True)
            return
        client.subscribe(f"nightbox/{SITE}/box/+/events/#", qos=1)

    def on_subscribe(*_args: Any) -> None:
        subscribed.set()

    def on_message(_client: mqtt.Client, _userdata: Any, message: Any) -> None:
        box_id = message.topic.split("/")[3]
        counts[box_id][orjson.loads(message.payload)["id"]] += 1
        totals[box_id] += 1
        last_message[0] = time.monotonic()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="bench-collector",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set_context(client_tls_context(ca_file))
    client.username_pw_set(login["username"], login["password"])
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(30):
        print("collector could not subscribe within 30 s", file=sys.stderr)
        return 1
    print("ready", flush=True)
    for line in sys.stdin:
        box_id, ids_file = line.split()
        expected = Path(ids_file).read_text().split()
        while totals[box_id] < len(expected):
            if time.monotonic() - last_message[0] > _COLLECTOR_QUIET_S:
                break
            time.sleep(0.01)
        seen = counts.pop(box_id, Counter())
        received = totals.pop(box_id, 0)
        expected_ids = set(expected)
        report = {
            "expected": len(expected),
            "received": received,
            "lost": len(expected_ids - seen.keys()),
            "duplicated": received - len(seen),
            "unexpected": len(seen.keys() - expected_ids),
        }
        print(json.dumps(report), flush=True)
    client.loop_stop()
    client.disconnect()
    return 0


def raw_publish(
    port: int,
    ca_file: Path,
    credentials: Path,
    messages: Sequence[tuple[str, bytes]],
    window: int,
) -> tuple[float, int]:
    """Publish ``messages`` at QoS 1 with plain paho; return seconds and window.

    One thread publishes and runs paho's network loop, keeping as many
    messages waiting for their PUBACK as the sync service would
    (``effective_window``: ``window``, or less under the broker's Receive
    Maximum). paho's loop thread
    (``loop_start``) was slower here, because the publishing thread and the
    loop thread contend for the GIL. The time runs from the first publish
    until the last PUBACK.
    """
    login = json.loads(credentials.read_text())
    limit = [window]
    acknowledged = [0]
    failures: Counter[str] = Counter()

    def on_connect(
        _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            failures[f"connect: {reason}"] += 1
        limit[0] = effective_window(window, getattr(props, "ReceiveMaximum", None))

    def on_publish(
        _client: mqtt.Client, _userdata: Any, _mid: int, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            failures[str(reason)] += 1
        acknowledged[0] += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{SITE}-box-{RAW_BOX}",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set_context(client_tls_context(ca_file))
    client.username_pw_set(login["username"], login["password"])
    client.max_inflight_messages_set(window)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 30
    while not client.is_connected() and not failures:
        if time.monotonic() > deadline:
            raise TimeoutError("the raw client could not connect within 30 s")
        client.loop(0.1)
    if failures:
        raise RuntimeError(f"the raw client could not log in: {dict(failures)}")
    started = time.perf_counter()
    deadline = time.monotonic() + _PHASE_TIMEOUT_S
    sent = 0
    while acknowledged[0] < len(messages):
        while sent < len(messages) and sent - acknowledged[0] < limit[0]:
            topic, payload = messages[sent]
            client.publish(topic, payload, 1)
            sent += 1
        client.loop(1.0)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(messages) - acknowledged[0]} raw messages were not "
                f"acknowledged within {_PHASE_TIMEOUT_S} s"
            )
    elapsed_s = time.perf_counter() - started
    client.disconnect()
    if failures:
        raise RuntimeError(f"the broker rejected raw messages: {dict(failures)}")
    return elapsed_s, limit[0]


class SyncRig:
    """The brokers, accounts and files of one run."""

    def __init__(self, settings: SyncSettings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.ca = make_fleet_ca(folder / "tls", ["127.0.0.1"])
        self.upstream: BrokerHandle | None = None
        self.local: BrokerHandle | None = None
        self.local_accounts = SiteCredentials(folder / "local-accounts.json")
        self._fleet_accounts = SiteCredentials(folder / "fleet-accounts.json")

    def login_file(self, username: str) -> Path:
        """Write ``username``'s upstream login as a 0600 JSON file."""
        account = self._fleet_accounts.account(username)
        path = self.folder / "secrets" / f"{username}.json"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        body = {"username": account.username, "password": account.password}
        write_secret_file(path, json.dumps(body).encode())
        return path

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SyncRig]:
        """Start the upstream and the local broker; stop both on exit."""
        policy = fleet_policy([FleetBox(SITE, BOX), FleetBox(SITE, RAW_BOX)])
        self.upstream = await start_fleet_mosquitto(
            self.folder / "upstream",
            "127.0.0.1",
            free_port(),
            self._fleet_accounts,
            policy,
            TlsFiles(self.ca.certificate, self.ca.key),
        )
        try:
            self.local = await start_broker(
                BrokerConfig(mode="mosquitto"),
                self.folder / "local",
                self.local_accounts,
                site_policy(SITE, BOX, [ReaderGrant("exit-1", "exit")]),
            )
            try:
                yield self
            finally:
                await self.local.stop()
        finally:
            await self.upstream.stop()

    def site_config(self, data_dir: Path) -> SiteConfig:
        """Return box ``BOX``'s site with ``[sync]`` pointing at the upstream."""
        if self.upstream is None:
            raise RuntimeError("no broker is running; enter running() first")
        return SiteConfig(
            site_id=SITE,
            site_name="Sync benchmark",
            box_id=BOX,
            data_dir=data_dir,
            readers=(ReaderConfig("exit-1", "exit"),),
            sync=SyncConfig(
                broker=parse_broker_url(f"mqtts://127.0.0.1:{self.upstream.port}"),
                ca_file=self.ca.ca_certificate,
                credentials_file=self.login_file(upstream_box_username(SITE, BOX)),
                window=self.settings.window,
                retry_max_s=1.0,
            ),
        )

    def local_bus(self) -> Bus:
        """Return the box's unconnected client of its local broker."""
        if self.local is None:
            raise RuntimeError("no broker is running; enter running() first")
        account = self.local_accounts.account(box_username(BOX))
        settings = BusSettings(
            self.local.host,
            self.local.port,
            account.username,
            account.password,
            "box",
            BOX,
            SITE,
        )
        return Bus(settings, announce=False)


async def poll_until(condition: Any, description: str) -> float:
    """Poll ``condition()`` and return time.perf_counter() once it holds.

    Raises TimeoutError naming ``description`` after _PHASE_TIMEOUT_S.
    """
    deadline = time.perf_counter() + _PHASE_TIMEOUT_S
    while True:
        if condition():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{description} timed out after {_PHASE_TIMEOUT_S} s")
        await asyncio.sleep(_POLL_S)


async def measure_raw(
    rig: SyncRig, store: Store, payloads: Sequence[bytes]
) -> dict[str, Any]:
    """Time the raw phase: the pass's payloads from plain paho to the broker."""
    if rig.upstream is None:
        raise RuntimeError("no broker is running; enter running() first")
    topics = event_topics(store, len(payloads), RAW_BOX)
    messages = list(zip(topics, payloads, strict=True))
    cpu = time.process_time()
    elapsed_s, window = await asyncio.to_thread(
        raw_publish,
        rig.upstream.port,
        rig.ca.ca_certificate,
        rig.login_file(upstream_box_username(SITE, RAW_BOX)),
        messages,
        rig.settings.window,
    )
    cpu = time.process_time() - cpu
    return {
        "events": len(messages),
        "window": window,
        "elapsed_s": round(elapsed_s, 3),
        "events_per_s": round(len(messages) / elapsed_s),
        "cpu_s": round(cpu, 2),
    }


async def measure_sync(
    rig: SyncRig, config: SiteConfig, store: Store, bus: Bus, count: int
) -> dict[str, Any]:
    """Time the sync phase: SyncService draining the pass's outbox."""
    service = SyncService(config, store, bus, SystemClock())
    cpu = time.process_time()
    await service.start()
    try:
        started = await poll_until(lambda: service.connected, "the sync connection")
        done = await poll_until(lambda: service.sent >= count, "draining the outbox")
    finally:
        await service.stop()
    cpu = time.process_time() - cpu
    elapsed_s = done - started
    backlog = store.unsynced_count()
    return {
        "events": count,
        "elapsed_s": round(elapsed_s, 3),
        "events_per_s": round(count / elapsed_s),
        "cpu_s": round(cpu, 2),
        "window": service.window,
        "backlog_after": backlog,
        "connects": service.counts["connects"],
        "failures": service.counts["failures"],
    }


async def run_passes(settings: SyncSettings, folder: Path) -> dict[str, Any]:
    """Start the brokers and the collector, then alternate the two phases."""
    rng = random.Random(SEED)
    rig = SyncRig(settings, folder)
    # The process is tuned as `nightbox run` tunes the box's, before both
    # phases are measured, so neither gets an advantage.
    tune_garbage_collector()
    raws: list[dict[str, Any]] = []
    syncs: list[dict[str, Any]] = []
    async with rig.running():
        if rig.upstream is None:
            raise RuntimeError("the upstream broker did not start")
        collector = Collector(
            rig.upstream.port, rig.ca.ca_certificate, rig.login_file(COLLECTOR)
        )
        bus = rig.local_bus()
        async with collector.running(), bus:
            await asyncio.wait_for(bus.connected.wait(), 30)
            for number in range(1, settings.passes + 1):
                pass_dir = folder / f"pass-{number}"
                config = rig.site_config(pass_dir / "box")
                store = Store(config.data_dir / "nightbox.sqlite3", SystemClock())
                try:
                    built = time.perf_counter()
                    payloads = fill_outbox(store, settings.events, rng)
                    ids_file = pass_dir / "ids.txt"
                    ids_file.write_text("\n".join(payload_ids(payloads)) + "\n")
                    build_s = time.perf_counter() - built
                    raw = await measure_raw(rig, store, payloads)
                    raw["collector"] = await collector.report(RAW_BOX, ids_file)
                    raws.append(raw)
                    sync = await measure_sync(rig, config, store, bus, len(payloads))
                    sync["collector"] = await collector.report(BOX, ids_file)
                    sync["build_s"] = round(build_s, 2)
                    syncs.append(sync)
                finally:
                    store.close()
    return {"raw": raws, "sync": syncs}


def _best(passes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return max(passes, key=lambda result: float(result["events_per_s"]))


def run_benchmark(settings: SyncSettings = FULL) -> dict[str, Any]:
    """Run every pass in a fresh temporary folder and return the figures."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="nightbox-bench-sync-") as folder:
        passes = asyncio.run(run_passes(settings, Path(folder)))
    raw = _best(passes["raw"])
    sync = _best(passes["sync"])
    ratio = sync["events_per_s"] / raw["events_per_s"]
    lost = sum(result["collector"]["lost"] for result in passes["sync"])
    duplicated = sum(result["collector"]["duplicated"] for result in passes["sync"])
    unexpected = sum(result["collector"]["unexpected"] for result in passes["sync"])
    raw_lost = sum(result["collector"]["lost"] for result in passes["raw"])
    return {
        "benchmark": "sync",
        "quick": settings == QUICK,
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2),
        "events": settings.events,
        "window": settings.window,
        "events_per_s": {"sync": sync["events_per_s"], "raw": raw["events_per_s"]},
        "ratio": round(ratio, 3),
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "raw_lost": raw_lost,
        "passes": {
            "raw_events_per_s": [result["events_per_s"] for result in passes["raw"]],
            "sync_events_per_s": [result["events_per_s"] for result in passes["sync"]],
        },
        "raw": raw,
        "sync": sync,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "targets": {"ratio": TARGET_RATIO, "lost": 0, "duplicated": 0},
        "targets_met": {
            "ratio": ratio >= TARGET_RATIO,
            "lost": lost == 0,
            "duplicated": duplicated == 0,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """Print the figures for people."""
    rates = result["events_per_s"]
    met = result["targets_met"]
    print(
        f"Sync, Python {result['python']}, mosquitto {result['mosquitto']} on "
        f"{result['machine']} ({result['cpus']} CPUs), {result['events']:,} events, "
        f"window {result['window']}"
    )
    print(f"  raw paho QoS 1 publishes   {rates['raw']:>10,} /s")
    print(f"  sync service drain         {rates['sync']:>10,} /s")
    print(f"ratio {result['ratio']} (target {TARGET_RATIO:g}, met: {met['ratio']})")
    print(
        f"lost {result['lost']}, duplicated {result['duplicated']}, unexpected "
        f"{result['unexpected']} (targets 0)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if an event was lost, duplicated or unexpected."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--quick", action="store_true", help="run a tiny configuration (for tests)"
    )
    parser.add_argument(
        "--events", type=int, help="events in the outbox of each pass (default 100000)"
    )
    parser.add_argument("--passes", type=int, help="passes of each phase (default 3)")
    parser.add_argument(
        "--collector",
        nargs=3,
        metavar=("PORT", "CA_FILE", "CREDENTIALS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.collector:
        port, ca_file, credentials = args.collector
        return run_collector(int(port), Path(ca_file), Path(credentials))
    settings = QUICK if args.quick else FULL
    if args.events:
        settings = replace(settings, events=args.events)
    if args.passes:
        settings = replace(settings, passes=args.passes)
    result = run_benchmark(settings)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    clean = result["lost"] == 0 and result["duplicated"] == 0
    return 0 if clean and result["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
