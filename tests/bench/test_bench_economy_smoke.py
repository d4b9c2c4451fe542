"""``bench.payments --quick`` and ``bench.drops --quick``: both run and report.

Each benchmark runs as a subprocess, as a developer would start it, and is
judged on the JSON line it prints. Both start their own mosquitto on
loopback. Speed targets belong to the benchmarks, so nothing here asserts a
rate or a latency beyond being positive. Correctness is asserted: no failed
charge, a balanced ledger, nothing oversold.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from quick_benchmark import run_quick_benchmark

RUN_TIMEOUT_S = 90.0


def run_quick(module: str) -> tuple[int, dict[str, Any]]:
    """Run ``python -m <module> --quick --json``; return its exit code and JSON."""
    process = run_quick_benchmark(module, RUN_TIMEOUT_S)
    lines = process.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {process.stderr[-2000:]}"
    return process.returncode, json.loads(lines[-1])


@pytest.fixture(scope="module")
def payments() -> tuple[int, dict[str, Any]]:
    """One quick run of the payments benchmark."""
    return run_quick("bench.payments")


@pytest.fixture(scope="module")
def drops() -> tuple[int, dict[str, Any]]:
    """One quick run of the drops benchmark."""
    return run_quick("bench.drops")


def test_payments_exit_code(payments: tuple[int, dict[str, Any]]) -> None:
    code, result = payments
    assert code == 0, result


def test_payments_required_figures(payments: tuple[int, dict[str, Any]]) -> None:
    _code, result = payments
    assert result["benchmark"] == "payments"
    assert result["quick"] is True
    assert result["raw_commits_per_s"] > 0
    assert result["charges_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["charges_per_s"] / result["raw_commits_per_s"], rel=0.01
    )
    assert result["p99_ms"] > 0
    assert set(result["targets_met"]) == {"ratio", "p99_ms"}


def test_payments_every_charge_answered(
    payments: tuple[int, dict[str, Any]],
) -> None:
    _code, result = payments
    assert result["throughput"]["failed"] == 0, result["throughput"]
    assert result["throughput"]["ok"] == result["throughput"]["requests"]
    assert result["paced"]["failed"] == 0, result["paced"]


def test_payments_ledger_balanced(payments: tuple[int, dict[str, Any]]) -> None:
    _code, result = payments
    box = result["box"]
    assert box["ledger_ok"] is True
    # 50 top-ups, 200 throughput charges and 100 paced charges.
    assert box["ledger_transactions"] == 350
    assert box["handler_errors"] == 0


def test_drops_exit_code(drops: tuple[int, dict[str, Any]]) -> None:
    code, result = drops
    assert code == 0, result


def test_drops_nothing_oversold(drops: tuple[int, dict[str, Any]]) -> None:
    _code, result = drops
    assert result["oversold"] == 0
    for phase in ("engine", "bus"):
        store = result[phase]["store"]
        assert store["reserved"] == result["units"], (phase, store)
        assert store["available"] == 0, (phase, store)
        assert store["guests_over_limit"] == 0, (phase, store)


def test_drops_every_claim_answered(drops: tuple[int, dict[str, Any]]) -> None:
    _code, result = drops
    for phase in ("engine", "bus"):
        figures = result[phase]
        assert figures["answered"] == figures["claims"], (phase, figures)
        assert figures["outcomes"].get("ok") == result["units"], (phase, figures)
        refusals = set(figures["outcomes"]) - {"ok"}
        assert refusals <= {"sold-out", "limit-reached"}, (phase, figures)


def test_drops_required_figures(drops: tuple[int, dict[str, Any]]) -> None:
    _code, result = drops
    assert result["benchmark"] == "drops"
    assert result["claims_per_s"] > 0
    assert result["claims_per_s_bus"] > 0
    assert set(result["targets_met"]) == {"claims_per_s", "oversold"}
