"""Drop contention: 10,000 claims over the bus for 500 units, and overselling.

Run ``python -m bench.drops`` for a table or ``--json`` for one JSON line.
See ``bench/_economy.py`` for the broker, box and terminals of a run.

The terminals send every claim at once, each keeping ``in_flight`` claims
waiting for replies. Claims come from 2,500 bands, four each, against a
per-guest limit of 2, so the box refuses claims both as sold out and as over
the limit. ``claims_per_s`` counts every answered claim (reserved or
refused) per second of wall time. ``oversold`` counts units reserved beyond
the quota, read from the store after the run, and per-guest violations are
counted the same way.
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
from bench._economy import EconomyRig, machine, run_terminals, site_config

TARGET_CLAIMS_PER_S = 5000.0
DROP_ID = "bench-drop"


@dataclass(frozen=True, slots=True)
class DropSettings:
    """Size of one run."""

    terminals: int = 4
    units: int = 500
    claims: int = 10_000
    bands: int = 2500
    per_guest_limit: int = 2
    in_flight: int = 64


FULL = DropSettings()
QUICK = DropSettings(terminals=2, units=20, claims=400, bands=100, in_flight=16)


def claim_requests(settings: DropSettings) -> list[dict[str, Any]]:
    """Return the claims, each band claiming in turn so contention is even."""
    return [
        {"drop": DROP_ID, "band": f"ib-1-{number % settings.bands}"}
        for number in range(settings.claims)
    ]


def store_figures(box: Box, settings: DropSettings) -> dict[str, Any]:
    """Return what the store holds after the run: units sold, oversold, limits."""
    (reserved,) = box.store.query_one(
        "SELECT COUNT(*) FROM drop_claims WHERE drop_id = ?"
        " AND status IN ('reserved', 'paid')",
        (DROP_ID,),
    ) or (0,)
    (available,) = box.store.query_one(
        "SELECT available FROM drops WHERE id = ?", (DROP_ID,)
    ) or (0,)
    (over_limit,) = box.store.query_one(
        "SELECT COUNT(*) FROM (SELECT band FROM drop_claims WHERE drop_id = ?"
        " AND status IN ('reserved', 'paid') GROUP BY band HAVING COUNT(*) > ?)",
        (DROP_ID, settings.per_guest_limit),
    ) or (0,)
    return {
        "reserved": reserved,
        "available": available,
        "oversold": max(0, reserved - settings.units),
        "units_accounted": reserved + available == settings.units,
        "guests_over_limit": over_limit,
        "commit_groups": box.requests.groups,
        "handler_errors": box.bus.stats.handler_errors,
    }


async def run_phases(settings: DropSettings, folder: Path) -> dict[str, Any]:
    """Start the box and send every claim from the terminals' process."""
    config = site_config(
        folder / "box", settings.terminals, settings.units, settings.per_guest_limit
    )
    async with EconomyRig(config, folder).running() as (box, base):
        claims = claim_requests(settings)
        box_cpu = time.process_time()
        result = await run_terminals(
            base, "drops", "claim", claims, in_flight=settings.in_flight
        )
        box_cpu = time.process_time() - box_cpu
        figures = store_figures(box, settings)
    outcomes = result["outcomes"]
    answered = sum(outcomes.values()) - outcomes.get("timeout", 0)
    return {
        "claims": len(claims),
        "answered": answered,
        "outcomes": outcomes,
        "elapsed_s": round(result["elapsed_s"], 3),
        "claims_per_s": round(answered / result["elapsed_s"], 1),
        # CPU seconds of the box's process and the terminals' process during
        # the claims, which shows which side limits the rate.
        "cpu_s": {"box": round(box_cpu, 2), "terminals": round(result["cpu_s"], 2)},
        "store": figures,
    }


def run_benchmark(settings: DropSettings = FULL) -> dict[str, Any]:
    """Run the contention in a fresh temporary folder and return the figures."""
    started = time.perf_counter()
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="nightbox-bench-drops-") as folder:
        phases = asyncio.run(run_phases(settings, Path(folder)))
    rate = phases["claims_per_s"]
    store = phases["store"]
    reserved_replies = phases["outcomes"].get("ok", 0)
    return {
        "benchmark": "drops",
        "quick": settings != FULL,
        **facts,
        "terminals": settings.terminals,
        "units": settings.units,
        "per_guest_limit": settings.per_guest_limit,
        "claims_per_s": rate,
        "oversold": store["oversold"],
        "reserved_replies": reserved_replies,
        **phases,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "targets": {"claims_per_s": TARGET_CLAIMS_PER_S, "oversold": 0},
        "targets_met": {
            "claims_per_s": rate >= TARGET_CLAIMS_PER_S,
            "oversold": store["oversold"] == 0,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """Print the figures for people."""
    met = result["targets_met"]
    store = result["store"]
    print(
        f"Drops, Python {result['python']}, mosquitto {result['mosquitto']} on "
        f"{result['machine']} ({result['cpus']} CPUs), {result['terminals']} "
        f"terminals, {result['claims']:,} claims for {result['units']} units"
    )
    print(
        f"  claims answered per second   {result['claims_per_s']:>10,.0f} "
        f"(target {TARGET_CLAIMS_PER_S:,.0f}, met: {met['claims_per_s']})"
    )
    print(f"  outcomes                     {result['outcomes']}")
    print(
        f"  reserved {store['reserved']}, available {store['available']}, oversold "
        f"{store['oversold']}, guests over the limit {store['guests_over_limit']}, "
        f"{store['commit_groups']} commits"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if a unit was oversold or a claim went astray."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--quick", action="store_true", help="run a tiny configuration (for tests)"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    result = run_benchmark(settings)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    store = result["store"]
    exact = (
        result["oversold"] == 0
        and store["guests_over_limit"] == 0
        and store["units_accounted"]
        and result["reserved_replies"] == store["reserved"]
        and result["answered"] == result["claims"]
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
