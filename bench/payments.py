"""Payment speed: wallet charges over the bus against raw durable SQLite commits.

Run ``python -m bench.payments`` for a table or ``--json`` for one JSON line.
See ``bench/_economy.py`` for the broker, box and terminals of a run.

Phases, in this order:

- reference: the rate of durable SQLite commits (WAL, ``synchronous=FULL``,
  one small insert each) in a file next to the box's store, before the box
  starts and again after it stops. The faster of the two is the reference.
  Every charge needs at least one such commit before its reply.
- set-up (not timed): top-ups give every band enough for its charges.
- throughput: the terminals send charges of one beer to distinct bands,
  each keeping ``in_flight`` requests waiting for replies, and the rate
  counts charges answered per second of wall time.
- latency: the terminals send charges at a fixed offered rate, and each
  latency runs from the request's publish to its reply's arrival.

The ``ratio`` is the charge rate over the raw commit rate. The box groups
the requests waiting at one moment into one commit, which is how it can
exceed 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.runtime import Box
from appliance.wallet._ledger import ledger_check
from bench._economy import (
    BEER_PRICE,
    EconomyRig,
    durable_commit_rate,
    machine,
    run_terminals,
    site_config,
)
from bench.ingest import percentile

TARGET_RATIO = 0.5
TARGET_P99_MS = 10.0


@dataclass(frozen=True, slots=True)
class PaymentSettings:
    """Size of one run."""

    terminals: int = 4
    bands: int = 2000
    charges: int = 6000
    in_flight: int = 32
    reference_commits: int = 3000
    paced_rate: float = 400.0
    paced_charges: int = 2000


FULL = PaymentSettings()
QUICK = PaymentSettings(
    terminals=2,
    bands=50,
    charges=200,
    in_flight=8,
    reference_commits=200,
    paced_rate=200.0,
    paced_charges=100,
)


def charge_requests(bands: Sequence[str], count: int) -> list[dict[str, Any]]:
    """Return the data of ``count`` charges of one beer, across ``bands``."""
    return [
        {
            "band": bands[number % len(bands)],
            "item": "beer",
            "quantity": 1,
            "amount": BEER_PRICE,
            "currency": "EUR",
        }
        for number in range(count)
    ]


def top_up_requests(bands: Sequence[str]) -> list[dict[str, Any]]:
    """Return top-ups that give every band enough for the whole run."""
    return [
        {"band": band, "amount": 500_000, "currency": "EUR", "method": "card"}
        for band in bands
    ]


def summarise(result: dict[str, Any], sent: int) -> dict[str, Any]:
    """Return the rate, failures and latency percentiles of a terminals' run."""
    latencies = sorted(result["latencies_ms"])
    outcomes = result["outcomes"]
    answered = outcomes.get("ok", 0)
    return {
        "requests": sent,
        "ok": answered,
        "failed": sent - answered,
        "outcomes": outcomes,
        "elapsed_s": round(result["elapsed_s"], 3),
        "per_s": round(answered / result["elapsed_s"], 1),
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "max": round(latencies[-1], 2) if latencies else None,
        },
    }


def box_figures(box: Box) -> dict[str, Any]:
    """Return the box's counters and ledger check after the run."""
    check = ledger_check(box.store)
    return {
        "commit_groups": box.requests.groups,
        "requests": dict(box.requests.counts),
        "handler_errors": box.bus.stats.handler_errors,
        "ledger_ok": check.ok,
        "ledger_transactions": check.transactions,
    }


async def run_phases(settings: PaymentSettings, folder: Path) -> dict[str, Any]:
    """Measure the reference, then run the box and its terminals."""
    config = site_config(folder / "box", settings.terminals, 10, 1)
    config.data_dir.mkdir(parents=True)
    raw_before = durable_commit_rate(config.data_dir, settings.reference_commits)
    bands = [f"ib-1-{index}" for index in range(settings.bands)]
    async with EconomyRig(config, folder).running() as (box, base):
        await run_terminals(
            base, "wallet", "topup", top_up_requests(bands), in_flight=16
        )
        groups_before = box.requests.groups
        charges = charge_requests(bands, settings.charges)
        box_cpu = time.process_time()
        result = await run_terminals(
            base, "wallet", "charge", charges, in_flight=settings.in_flight
        )
        box_cpu = time.process_time() - box_cpu
        throughput = summarise(result, len(charges))
        throughput["commit_groups"] = box.requests.groups - groups_before
        # CPU seconds of the box's process and the terminals' process during
        # the charges, which shows which side limits the rate.
        throughput["cpu_s"] = {
            "box": round(box_cpu, 2),
            "terminals": round(result["cpu_s"], 2),
        }
        paced_charges = charge_requests(bands, settings.paced_charges)
        result = await run_terminals(
            base, "wallet", "charge", paced_charges, rate=settings.paced_rate
        )
        paced = summarise(result, len(paced_charges))
        paced["offered_per_s"] = settings.paced_rate
        figures = box_figures(box)
    raw_after = durable_commit_rate(config.data_dir, settings.reference_commits)
    # The disk's fsync time varies from run to run, so the ratio is taken
    # against the faster of the two measurements, the stricter reference.
    return {
        "raw_commits_per_s": round(max(raw_before, raw_after), 1),
        "raw_commits_per_s_measured": [round(raw_before, 1), round(raw_after, 1)],
        "throughput": throughput,
        "paced": paced,
        "box": figures,
    }


def run_benchmark(settings: PaymentSettings = FULL) -> dict[str, Any]:
    """Run every phase in a fresh temporary folder and return the figures."""
    started = time.perf_counter()
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="nightbox-bench-payments-") as folder:
        phases = asyncio.run(run_phases(settings, Path(folder)))
    rate = phases["throughput"]["per_s"]
    ratio = rate / phases["raw_commits_per_s"]
    p99_ms = phases["paced"]["latency_ms"]["p99"]
    return {
        "benchmark": "payments",
        "quick": settings != FULL,
        **facts,
        "terminals": settings.terminals,
        "charges_per_s": rate,
        "raw_commits_per_s": phases["raw_commits_per_s"],
        "ratio": round(ratio, 3),
        "p99_ms": p99_ms,
        **phases,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "targets": {"ratio": TARGET_RATIO, "p99_ms": TARGET_P99_MS},
        "targets_met": {
            "ratio": ratio >= TARGET_RATIO,
            "p99_ms": p99_ms is not None and p99_ms < TARGET_P99_MS,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """Print the figures for people."""
    met = result["targets_met"]
    throughput = result["throughput"]
    latency = result["paced"]["latency_ms"]
    print(
        f"Payments, Python {result['python']}, mosquitto {result['mosquitto']} on "
        f"{result['machine']} ({result['cpus']} CPUs), {result['terminals']} terminals"
    )
    print(f"  raw durable SQLite commits   {result['raw_commits_per_s']:>10,.0f} /s")
    print(
        f"  charges over the bus         {result['charges_per_s']:>10,.0f} /s "
        f"({throughput['requests']} charges, {throughput['commit_groups']} commits, "
        f"{throughput['failed']} failed, CPU s {throughput['cpu_s']})"
    )
    print(f"ratio {result['ratio']} (target {TARGET_RATIO:g}, met: {met['ratio']})")
    print(
        f"latency at {result['paced']['offered_per_s']:g} charges/s offered: p50 "
        f"{latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms "
        f"(target p99 < {TARGET_P99_MS:g} ms, met: {met['p99_ms']})"
    )
    print(f"ledger check ok: {result['box']['ledger_ok']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if a charge failed or the ledger is off."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--quick", action="store_true", help="run a tiny configuration (for tests)"
    )
    args = parser.parse_args(argv)
    result = run_benchmark(QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    failed = result["throughput"]["failed"] + result["paced"]["failed"]
    return 0 if failed == 0 and result["box"]["ledger_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
