"""Charges and drop claims survive ``kill -9`` of ``nightbox run``, 50 times over.

The box runs as a real subprocess with its own private mosquitto (``[broker]
mode = "mosquitto"`` on a fixed loopback port). Each round starts it, fires
a burst of wallet charges and paid drop claims from two POS terminals, and
SIGKILLs the box's process group while requests are in flight. The box and
its broker die together, as in a power cut. A last start retries every
request ever sent, and the SQLite file must show each one applied exactly
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.bus.broker import free_port
from appliance.bus.client import Bus, BusSettings, Incoming
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig, load_config
from appliance.errors import RequestError
from appliance.store import Store
from appliance.tokens import box_tokens
from appliance.wallet._ledger import ledger_check
from provisioning import SiteCredentials

ROUNDS = 50
SEED = 20261205
TIMEOUT_S = 15.0
TERMINALS = ("pos-1", "pos-2")
SCOPES = ("pos:charge", "wallet:topup", "drops:claim")
BANDS = tuple(f"ib-1-{minor}" for minor in range(101, 161))
TOP_UP = 30_000
BEER_PRICE = 450
DROP = "tee-drop"
DROP_PRICE = 3_000
DROP_QUANTITY = 40
# Requests per terminal and round, and how many of them are in flight at once.
BURST = 12
IN_FLIGHT = 4
CLAIM_SHARE = 0.25
MAX_KILL_DELAY_S = 0.150
# Refusals that a retry may return. Anything else (an invalid request, a key
# reused, a token or store error) means the retry did not repeat the request.
EXPECTED_REFUSALS = {"sold-out", "limit-reached", "insufficient-funds"}


def site_toml(data_dir: Path, port: int, now: float) -> str:
    """Return the test site: a wallet, a beer, a drop open now, two terminals."""
    zone = dt.timezone(dt.timedelta(hours=1))
    starts_at = dt.datetime.fromtimestamp(now - 60, zone).isoformat(timespec="seconds")
    ends_at = dt.datetime.fromtimestamp(now + 3600, zone).isoformat(timespec="seconds")
    terminals = "".join(f'\n[[terminals]]\nid = "{t}"\n' for t in TERMINALS)
    return f"""
[site]
id = "ekill"
name = "Kill test venue"

[box]
id = "box-1"
data_dir = "{data_dir}"

[broker]
mode = "mosquitto"
host = "127.0.0.1"
port = {port}

[checkout]
silence_s = 3600
stall_s = 3600

[[readers]]
id = "exit-1"
role = "exit"

[wallet]
currency = "EUR"
max_topup = 50000
max_charge = 20000
night_topup_limit = 1000000
night_spend_limit = 1000000

[[items]]
id = "beer"
name = "Beer"
price = {BEER_PRICE}

[[items]]
id = "tee"
name = "Drop tee"
price = {DROP_PRICE}

[[drops]]
id = "{DROP}"
item = "tee"
price = {DROP_PRICE}
quantity = {DROP_QUANTITY}
per_guest_limit = 1
starts_at = {starts_at}
ends_at = {ends_at}
{terminals}"""


@dataclass
class SentRequest:
    """One request as sent, and the reply that arrived before the box died."""

    terminal: str
    service: str
    action: str
    data: dict[str, Any]
    first_reply: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return str(self.data["idempotency_key"])


@dataclass
class Terminal:
    """A POS terminal's bus client and its edge token."""

    bus: Bus
    token: str

    async def send(self, sent: SentRequest) -> dict[str, Any]:
        """Send ``sent`` and return the reply as the box stored it.

        Raises RequestError when no reply arrives in time.
        """
        topic = self.bus.topics.api(sent.service, sent.action)
        try:
            data = await self.bus.request(
                topic, sent.data, timeout_s=TIMEOUT_S, token=self.token
            )
        except RequestError as err:
            if err.code in ("timeout", "closed"):
                raise
            return {"ok": False, "error": err.details}
        return {"ok": True, "data": data}


class BoxProcess:
    """``nightbox run`` in its own process group, started and killed by the test."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self._config_path = config_path
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the box is not running")
        return self._process.pid

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
                # The box's mosquitto inherits the group, so one killpg takes
                # down both, as a power cut would.
                start_new_session=True,
            )

    def exited(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def kill_group(self) -> None:
        """SIGKILL the box and its broker at once and reap the box."""
        process = self._process
        if process is None:
            return
        self._process = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the box process alone and reap it."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def wait_port(port: int, *, open_: bool, box: BoxProcess) -> None:
    """Wait until something listens on ``port`` (or nothing does)."""
    deadline = time.monotonic() + TIMEOUT_S
    while listening(port) != open_:
        if open_ and box.exited():
            pytest.fail(f"nightbox run exited at start-up:\n{box.log()}")
        if time.monotonic() > deadline:
            state = "listen" if open_ else "be released"
            pytest.fail(f"port {port} did not {state} within {TIMEOUT_S} s")
        await asyncio.sleep(0.02)


def issue_tokens(config: SiteConfig) -> dict[str, str]:
    """Issue each terminal's token with the box's key, before the box starts."""
    clock = SystemClock(TimeSource.NTP)
    store = Store(config.data_dir / "nightbox.sqlite3", clock)
    try:
        tokens = box_tokens(config, store, clock)
        return {t: tokens.issue(t, SCOPES, 3600.0).token for t in TERMINALS}
    finally:
        store.close()


@dataclass
class Site:
    config: SiteConfig
    box: BoxProcess
    tokens: dict[str, str]

    def settings(self, username: str, kind: str, device_id: str) -> BusSettings:
        # Read on every connect: the box writes the file at its first start.
        credentials = SiteCredentials(self.config.data_dir / "secrets" / "broker.json")
        return BusSettings(
            self.config.broker.host,
            self.config.broker.port,
            username,
            credentials.account(username).password,
            kind,
            device_id,
            self.config.site_id,
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    config_path = tmp_path / "site.toml"
    port = free_port()
    config_path.write_text(site_toml(tmp_path / "data", port, time.time()))
    config = load_config(config_path)
    box = BoxProcess(config_path, tmp_path / "box.log")
    try:
        yield Site(config, box, issue_tokens(config))
    finally:
        box.kill_group()


@contextlib.asynccontextmanager
async def running_box(site: Site) -> AsyncIterator[dict[str, Terminal]]:
    """Start the box, connect the terminals and wait until the box is online."""
    port = site.config.broker.port
    await wait_port(port, open_=False, box=site.box)
    site.box.start()
    await wait_port(port, open_=True, box=site.box)
    online = asyncio.Event()

    async def on_availability(incoming: Incoming) -> None:
        if incoming.payload == b"online":
            online.set()

    observer = Bus(site.settings("observer", "observer", "kill"), announce=False)
    observer.subscribe(
        observer.topics.availability("box", site.config.box_id), on_availability
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(observer)
        terminals: dict[str, Terminal] = {}
        for terminal_id in TERMINALS:
            settings = site.settings(f"terminal-{terminal_id}", "terminal", terminal_id)
            bus = await stack.enter_async_context(Bus(settings, announce=False))
            terminals[terminal_id] = Terminal(bus, site.tokens[terminal_id])
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await online.wait()
                for terminal in terminals.values():
                    await terminal.bus.connected.wait()
        except TimeoutError:
            pytest.fail(
                f"the box was not online within {TIMEOUT_S} s:\n{site.box.log()}"
            )
        yield terminals


def plan_round(rng: random.Random, round_number: int) -> list[SentRequest]:
    """Return each terminal's burst: charges of 1-3 beers and paid drop claims."""
    planned = []
    for terminal_id in TERMINALS:
        for index in range(BURST):
            key = f"r{round_number:02d}-{terminal_id}-{index:02d}"
            band = rng.choice(BANDS)
            if rng.random() < CLAIM_SHARE:
                claim = {
                    "drop": DROP,
                    "band": band,
                    "pay": True,
                    "idempotency_key": f"claim-{key}",
                }
                planned.append(SentRequest(terminal_id, "drops", "claim", claim))
                continue
            quantity = rng.randint(1, 3)
            data = {
                "band": band,
                "item": "beer",
                "quantity": quantity,
                "amount": BEER_PRICE * quantity,
                "currency": "EUR",
                "idempotency_key": f"charge-{key}",
            }
            planned.append(SentRequest(terminal_id, "wallet", "charge", data))
    return planned


def plan_top_ups() -> list[SentRequest]:
    return [
        SentRequest(
            TERMINALS[0],
            "wallet",
            "topup",
            {
                "band": band,
                "amount": TOP_UP,
                "currency": "EUR",
                "method": "cash",
                "idempotency_key": f"topup-{band}",
            },
        )
        for band in BANDS
    ]


async def send_all(
    terminals: dict[str, Terminal], requests: list[SentRequest]
) -> list[asyncio.Task[dict[str, Any]]]:
    """Start sending ``requests``, at most IN_FLIGHT at once per terminal."""
    limits = {terminal_id: asyncio.Semaphore(IN_FLIGHT) for terminal_id in terminals}

    async def send(sent: SentRequest) -> dict[str, Any]:
        async with limits[sent.terminal]:
            return await terminals[sent.terminal].send(sent)

    return [asyncio.create_task(send(sent)) for sent in requests]


async def kill_mid_burst(
    site: Site, rng: random.Random, requests: list[SentRequest]
) -> None:
    """Send ``requests``, SIGKILL the box after a random delay, keep the replies."""
    async with running_box(site) as terminals:
        tasks = await send_all(terminals, requests)
        await asyncio.sleep(rng.uniform(0.0, MAX_KILL_DELAY_S))
        site.box.kill_group()
        # Nothing awaited since the kill, so every reply recorded below was
        # received before the box died.
        for sent, task in zip(requests, tasks, strict=True):
            if task.done():
                sent.first_reply = task.result()
            else:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def reply_transaction(reply: dict[str, Any]) -> str | None:
    if not reply.get("ok"):
        return None
    transaction_id = reply["data"].get("transaction_id")
    return None if transaction_id is None else str(transaction_id)


def read_store(config: SiteConfig, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(config.data_dir / "nightbox.sqlite3", timeout=10)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


@pytest.mark.slow
async def test_economy_kill_restart_rounds(site: Site) -> None:
    rng = random.Random(SEED)
    top_ups = plan_top_ups()
    async with running_box(site) as terminals:
        for task in await send_all(terminals, top_ups):
            await task
    site.box.kill_group()

    sent: list[SentRequest] = []
    for round_number in range(ROUNDS):
        planned = plan_round(rng, round_number)
        sent.extend(planned)
        await kill_mid_burst(site, rng, planned)

    committed = {key for (key,) in read_store(site.config, "SELECT key FROM requests")}
    everything = top_ups + sent
    async with running_box(site) as terminals:
        tasks = await send_all(terminals, everything)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    site.box.kill_group()

    unanswered = [
        (request.key, result)
        for request, result in zip(everything, results, strict=True)
        if not isinstance(result, dict)
    ]
    assert unanswered == []
    answers = {
        request.key: result
        for request, result in zip(everything, results, strict=True)
        if isinstance(result, dict)
    }
    assert len(answers) == len(everything)

    # The kills must have cut off requests at every stage: replied to,
    # committed with the reply lost, and never committed. Otherwise the
    # rounds proved little.
    replied_early = [request for request in sent if request.first_reply is not None]
    reply_lost = [
        request
        for request in sent
        if request.first_reply is None and request.key in committed
    ]
    assert replied_early
    assert reply_lost
    assert len(committed) < len(everything)
    changed = [
        request.key
        for request in replied_early
        if answers[request.key] != request.first_reply
    ]
    assert changed == []

    assert all(answers[request.key]["ok"] for request in top_ups)
    unexpected = Counter(
        answer["error"]["code"]
        for answer in answers.values()
        if not answer["ok"] and answer["error"]["code"] not in EXPECTED_REFUSALS
    )
    assert unexpected == Counter()

    store = Store(site.config.data_dir / "nightbox.sqlite3", SystemClock())
    try:
        check = ledger_check(store)
    finally:
        store.close()
    assert check.ok, check.to_json()

    # Each ledger transaction belongs to the stored reply of exactly one request.
    stored_replies = read_store(site.config, "SELECT key, reply FROM requests")
    answered_by = Counter(
        reply_transaction(json.loads(reply)) for _key, reply in stored_replies
    )
    answered_by.pop(None, None)
    ledger = read_store(
        site.config,
        "SELECT id, kind, band, amount, drop_claim FROM ledger_transactions",
    )
    assert {row[0] for row in ledger} == set(answered_by)
    assert [t for t, count in answered_by.items() if count != 1] == []
    assert {key for key, _reply in stored_replies} == set(answers)

    charge_keys = {
        request.key
        for request in sent
        if request.action == "charge" and answers[request.key]["ok"]
    }
    claim_keys = {
        request.key
        for request in sent
        if request.action == "claim" and answers[request.key]["ok"]
    }
    wallet_charges = [row for row in ledger if row[1] == "charge" and row[4] is None]
    drop_payments = [row for row in ledger if row[1] == "charge" and row[4]]
    assert len(wallet_charges) == len(charge_keys)
    assert len(drop_payments) == len(claim_keys)
    assert len([row for row in ledger if row[1] == "topup"]) == len(top_ups)

    # Balances: the top-up minus every successful charge and drop payment.
    expected = dict.fromkeys(BANDS, TOP_UP)
    for request in sent:
        answer = answers[request.key]
        if not answer["ok"]:
            continue
        if request.action == "charge":
            assert answer["data"]["amount"] == request.data["amount"]
        else:
            assert answer["data"]["status"] == "paid"
            assert answer["data"]["amount"] == DROP_PRICE
        expected[request.data["band"]] -= answer["data"]["amount"]
    balances = dict(read_store(site.config, "SELECT band, balance FROM wallets"))
    assert balances == expected

    # The drop: sold plus available is the quota, and no band has two units.
    ((quota, available),) = read_store(
        site.config, f"SELECT quota, available FROM drops WHERE id = '{DROP}'"
    )
    statuses = dict(
        read_store(site.config, "SELECT status, COUNT(*) FROM drop_claims GROUP BY 1")
    )
    assert quota == DROP_QUANTITY
    assert statuses.get("paid", 0) + available == quota
    assert statuses.get("paid", 0) == len(claim_keys)
    assert set(statuses) <= {"paid"}
    holdings = read_store(site.config, "SELECT band, units FROM drop_holdings")
    assert [band for band, units in holdings if units > 1] == []

    # Every ledger transaction committed its outbox event.
    missing_events = read_store(
        site.config,
        "SELECT t.id FROM ledger_transactions t"
        " LEFT JOIN outbox o ON o.id = t.event_id WHERE o.id IS NULL",
    )
    assert missing_events == []


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passes; return its value."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def child_pids(pid: int) -> list[int]:
    """Return the ids of the child processes of ``pid`` (Linux only)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in children.split()]


def process_alive(pid: int) -> bool:
    """Return whether ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_box_kill_stops_its_broker(site: Site) -> None:
    port = site.config.broker.port
    site.box.start()
    assert wait_until(lambda: listening(port), TIMEOUT_S), site.box.log()
    children = child_pids(site.box.pid)
    assert len(children) == 1
    broker_pid = children[0]
    try:
        site.box.kill()
        stopped = wait_until(lambda: not process_alive(broker_pid), 5.0)
        assert stopped, f"mosquitto (pid {broker_pid}) outlived the killed box by 5 s"
    finally:
        if process_alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)
