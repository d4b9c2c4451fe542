"""Shared set-up of the payment and drop benchmarks.

A run starts its own mosquitto on 127.0.0.1 on a free port with the site's
generated passwords and ACLs, and the box's services (``Box``) in this
process. Terminals are bus clients on their own accounts, each with an edge
token of the scopes the benchmarks use, in a separate process
(``bench/_terminals.py``), as they are separate devices at a venue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from appliance.bus.broker import start_broker
from appliance.clock import SystemClock, TimeSource
from appliance.commerce.config import CommerceConfig, DropConfig, Item, WalletConfig
from appliance.config import BrokerConfig, ReaderConfig, SiteConfig
from appliance.runtime import Box, tune_garbage_collector
from bench.ingest import mosquitto_version
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy, terminal_username

SCOPES = ("wallet:topup", "pos:charge", "drops:claim")
BEER_PRICE = 450
# One drop per phase of the drop benchmark, each with the same units.
DROP_IDS = ("drop-engine", "drop-bus")


def site_config(
    data_dir: Path, terminals: int, drop_units: int, per_guest_limit: int
) -> SiteConfig:
    """Return the benchmark site: a bar item, two drops and ``terminals`` POS."""
    now = time.time()
    commerce = CommerceConfig(
        wallet=WalletConfig(
            currency="EUR",
            max_topup=1_000_000,
            max_charge=100_000,
            night_topup_limit=10_000_000,
            night_spend_limit=10_000_000,
        ),
        items=(Item("beer", "Beer", price=BEER_PRICE), Item("tee", "Tee", price=3000)),
        drops=tuple(
            DropConfig(
                drop_id,
                "tee",
                price=3000,
                quantity=drop_units,
                starts_at=now - 60,
                ends_at=now + 24 * 3600,
                per_guest_limit=per_guest_limit,
            )
            for drop_id in DROP_IDS
        ),
        terminals=tuple(f"pos-{i}" for i in range(terminals)),
    )
    return SiteConfig(
        site_id="bench",
        site_name="Benchmark venue",
        box_id="box-1",
        data_dir=data_dir,
        readers=(ReaderConfig("exit-1", "exit"),),
        commerce=commerce,
    )


def durable_commit_rate(folder: Path, commits: int) -> float:
    """Return SQLite commits per second with the store's durability settings.

    Each commit is one ``BEGIN IMMEDIATE``, one small insert and ``COMMIT``
    in WAL mode with ``synchronous=FULL``, as ``appliance.store`` runs them,
    in a file on the same disk as the box's store.
    """
    path = folder / "raw-commits.sqlite3"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(
            "CREATE TABLE rows (id INTEGER PRIMARY KEY, key TEXT, amount INTEGER)"
        )
        started = time.perf_counter()
        for number in range(commits):
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                "INSERT INTO rows (key, amount) VALUES (?, ?)",
                (uuid.uuid4().hex, number),
            )
            connection.execute("COMMIT")
        return commits / (time.perf_counter() - started)
    finally:
        connection.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def run_terminals(
    base: dict[str, Any],
    service: str,
    action: str,
    requests: list[dict[str, Any]],
    **pacing: Any,
) -> dict[str, Any]:
    """Send ``requests`` from the terminals in a separate process (``_terminals``).

    ``pacing`` is ``in_flight=N`` or ``rate=R`` and may add
    ``keep_replies=True``. Returns the process's result.
    """
    keyed = [
        request
        if "idempotency_key" in request
        else {**request, "idempotency_key": uuid.uuid4().hex}
        for request in requests
    ]
    job = {**base, "service": service, "action": action, "requests": keyed}
    job.update(pacing)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._terminals",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate(json.dumps(job).encode())
    if process.returncode != 0:
        raise RuntimeError(
            f"the terminals' process failed with exit code {process.returncode}"
        )
    result: dict[str, Any] = json.loads(output)
    return result


class EconomyRig:
    """A private mosquitto and the box of one benchmark run."""

    def __init__(self, config: SiteConfig, folder: Path) -> None:
        self.config = config
        self.credentials = SiteCredentials(folder / "secrets" / "broker.json")
        self.run_dir = folder / "run"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[Box, dict[str, Any]]]:
        """Start mosquitto and the box; yield the box and the terminals' job base.

        The job base contains the broker address and each terminal's login
        and edge token, for :func:`run_terminals`.
        """
        policy = site_policy(
            self.config.site_id,
            self.config.box_id,
            [ReaderGrant(r.id, r.role) for r in self.config.readers],
            self.config.commerce.terminals,
        )
        broker = await start_broker(
            BrokerConfig(mode="mosquitto"), self.run_dir, self.credentials, policy
        )
        try:
            box = Box(
                self.config,
                SystemClock(TimeSource.NTP),
                self.credentials,
                broker.host,
                broker.port,
                broker_kind=broker.kind,
            )
            async with box:
                await asyncio.wait_for(box.bus.connected.wait(), timeout=15)
                terminals = []
                for terminal_id in self.config.commerce.terminals:
                    account = self.credentials.account(terminal_username(terminal_id))
                    terminals.append(
                        {
                            "id": terminal_id,
                            "username": account.username,
                            "password": account.password,
                            "token": box.tokens.issue(terminal_id, SCOPES, 3600).token,
                        }
                    )
                # Tuned as `nightbox run` tunes the box's process.
                tune_garbage_collector()
                yield (
                    box,
                    {
                        "host": broker.host,
                        "port": broker.port,
                        "site": self.config.site_id,
                        "terminals": terminals,
                    },
                )
        finally:
            await broker.stop()


def machine() -> dict[str, Any]:
    """Return the Python, mosquitto and machine facts printed with every run."""
    return {
        "python": platform.python_version(),
        "mosquitto": mosquitto_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),
    }
