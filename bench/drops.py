"""Drop contention: 10,000 concurrent claims for 500 units, and overselling.

Run ``python -m bench.drops`` for a table or ``--json`` for one JSON line.
See ``bench/_economy.py`` for the broker, box and terminals of a run.

Claims come from 2,500 bands, four each, against a per-guest limit of 2, so
the box refuses claims both as sold out and as over the limit. Two phases,
each on a drop of its own:

- engine: all 10,000 claims are submitted at once to the box's request
  engine in its own process (``RequestServer.call``, the path of the box's
  own terminal UI): token check, idempotency, the drop's guards, and
  durable group commits, without MQTT. ``claims_per_s`` is this rate.
- bus: the terminals' process sends the same claims over mosquitto, each
  terminal keeping ``in_flight`` claims waiting for replies.
  ``claims_per_s_bus`` is this rate. On a small machine the terminals'
  process and mosquitto share the CPU with the box, so this rate measures
  the machine as much as the box. ``cpu_s`` shows the share of each.

Rates count every claim that got a reply (reserved or refused) per second of
wall time. ``oversold`` counts units reserved beyond the drop's units, read
from the store after each phase, and per-guest violations are counted the
same way. Both must be 0 in both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.runtime import Box
from bench._economy import DROP_IDS, EconomyRig, machine, run_terminals, site_config

TARGET_CLAIMS_PER_S = 5000.0


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


def claim_requests(settings: DropSettings, drop_id: str) -> list[dict[str, Any]]:
    """Return the claims, each band claiming in turn so contention is even."""
    return [
        {
            "drop": drop_id,
            "band": f"ib-1-{number % settings.bands}",
            "idempotency_key": f"{drop_id}-{number:08d}",
        }
        for number in range(settings.claims)
    ]


def store_figures(box: Box, settings: DropSettings, drop_id: str) -> dict[str, Any]:
    """Return the store's figures after a phase: units sold, oversold, limits."""
    (reserved,) = box.store.query_one(
        "SELECT COUNT(*) FROM drop_claims WHERE drop_id = ?"
        " AND status IN ('reserved', 'paid')",
        (drop_id,),
    ) or (0,)
    (available,) = box.store.query_one(
        "SELECT available FROM drops WHERE id = ?", (drop_id,)
    ) or (0,)
    (over_limit,) = box.store.query_one(
        "SELECT COUNT(*) FROM (SELECT band FROM drop_claims WHERE drop_id = ?"
        " AND status IN ('reserved', 'paid') GROUP BY band HAVING COUNT(*) > ?)",
        (drop_id, settings.per_guest_limit),
    ) or (0,)
    return {
        "reserved": reserved,
        "available": available,
        "oversold": max(0, reserved - settings.units),
        "units_accounted": reserved + available == settings.units,
        "guests_over_limit": over_limit,
    }


async def measure_engine(
    box: Box, token: str, terminal: str, settings: DropSettings
) -> dict[str, Any]:
    """Submit every claim at once to the request engine; return the rate."""
    claims = claim_requests(settings, DROP_IDS[0])
    groups_before = box.requests.groups
    cpu_started = time.process_time()
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(
            box.requests.call("drops", "claim", claim, token=token, terminal=terminal)
            for claim in claims
        )
    )
    elapsed = time.perf_counter() - started
    outcomes = Counter(
        "ok" if reply["ok"] else str(reply["error"]["code"]) for reply in replies
    )
    return {
        "claims": len(claims),
        "answered": len(replies),
        "outcomes": dict(outcomes),
        "elapsed_s": round(elapsed, 3),
        "claims_per_s": round(len(replies) / elapsed, 1),
        "commit_groups": box.requests.groups - groups_before,
        "cpu_s": {"box": round(time.process_time() - cpu_started, 2)},
        "store": store_figures(box, settings, DROP_IDS[0]),
    }


async def measure_bus(
    box: Box, base: dict[str, Any], settings: DropSettings
) -> dict[str, Any]:
    """Send every claim from the terminals' process over mosquitto."""
    claims = claim_requests(settings, DROP_IDS[1])
    groups_before = box.requests.groups
    cpu_started = time.process_time()
    result = await run_terminals(
        base, "drops", "claim", claims, in_flight=settings.in_flight
    )
    box_cpu = time.process_time() - cpu_started
    outcomes = result["outcomes"]
    answered = sum(outcomes.values()) - outcomes.get("timeout", 0)
    return {
        "claims": len(claims),
        "answered": answered,
        "outcomes": outcomes,
        "elapsed_s": round(result["elapsed_s"], 3),
        "claims_per_s": round(answered / result["elapsed_s"], 1),
        "commit_groups": box.requests.groups - groups_before,
        # CPU seconds of the box's process and the terminals' process during
        # the claims, which shows which side limits the rate.
        "cpu_s": {"box": round(box_cpu, 2), "terminals": round(result["cpu_s"], 2)},
        "store": store_figures(box, settings, DROP_IDS[1]),
    }


async def run_phases(settings: DropSettings, folder: Path) -> dict[str, Any]:
    """Start the box and run the engine phase, then the bus phase."""
    config = site_config(
        folder / "box", settings.terminals, settings.units, settings.per_guest_limit
    )
    async with EconomyRig(config, folder).running() as (box, base):
        terminal = base["terminals"][0]
        engine = await measure_engine(box, terminal["token"], terminal["id"], settings)
        bus = await measure_bus(box, base, settings)
        handler_errors = box.bus.stats.handler_errors
    return {"engine": engine, "bus": bus, "handler_errors": handler_errors}


def run_benchmark(settings: DropSettings = FULL) -> dict[str, Any]:
    """Run both phases in a fresh temporary folder and return the figures."""
    started = time.perf_counter()
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="nightbox-bench-drops-") as folder:
        phases = asyncio.run(run_phases(settings, Path(folder)))
    engine, bus = phases["engine"], phases["bus"]
    rate = engine["claims_per_s"]
    oversold = engine["store"]["oversold"] + bus["store"]["oversold"]
    return {
        "benchmark": "drops",
        "quick": settings != FULL,
        **facts,
        "terminals": settings.terminals,
        "units": settings.units,
        "per_guest_limit": settings.per_guest_limit,
        "claims_per_s": rate,
        "claims_per_s_bus": bus["claims_per_s"],
        "claims_per_phase": settings.claims,
        "oversold": oversold,
        **phases,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "targets": {"claims_per_s": TARGET_CLAIMS_PER_S, "oversold": 0},
        "targets_met": {
            "claims_per_s": rate >= TARGET_CLAIMS_PER_S,
            "oversold": oversold == 0,
        },
    }


def exact(phase: dict[str, Any], settings: DropSettings) -> bool:
    """Return whether a phase sold exactly its units to guests within limits."""
    store = phase["store"]
    return (
        store["oversold"] == 0
        and store["guests_over_limit"] == 0
        and store["units_accounted"]
        and store["reserved"] == settings.units
        and phase["outcomes"].get("ok", 0) == store["reserved"]
        and phase["answered"] == phase["claims"]
    )


def print_table(result: dict[str, Any]) -> None:
    """Print the figures for people."""
    met = result["targets_met"]
    print(
        f"Drops, Python {result['python']}, mosquitto {result['mosquitto']} on "
        f"{result['machine']} ({result['cpus']} CPUs), {result['claims_per_phase']:,}"
        f" claims for {result['units']} units per phase"
    )
    for name in ("engine", "bus"):
        phase = result[name]
        store = phase["store"]
        print(
            f"  {name:<7} {phase['claims_per_s']:>10,.0f} claims/s  "
            f"{phase['outcomes']}  reserved {store['reserved']}, oversold "
            f"{store['oversold']}, guests over the limit "
            f"{store['guests_over_limit']}, {phase['commit_groups']} commits, "
            f"CPU {phase['cpu_s']}"
        )
    print(
        f"claims_per_s (engine) {result['claims_per_s']:,.0f}: target "
        f"{TARGET_CLAIMS_PER_S:,.0f}, met: {met['claims_per_s']}; oversold "
        f"{result['oversold']}, met: {met['oversold']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if a phase oversold or a claim went astray."""
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
    both = exact(result["engine"], settings) and exact(result["bus"], settings)
    return 0 if both else 1


if __name__ == "__main__":
    sys.exit(main())
