"""``nightbox demo``: whole simulated nights on mosquitto and the embedded broker.

Each night runs as a subprocess, as a user would start it, and is judged on
the JSON it prints. The simulator scores check-outs against its own ground
truth, so a missed, doubled or false check-out shows up in the figures.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from appliance.bus import broker as broker_module
from appliance.bus.broker import start_broker
from appliance.bus.client import Bus, BusSettings
from appliance.config import BrokerConfig
from appliance.errors import BrokerUnavailableError
from provisioning import SiteCredentials
from provisioning.site_access import OBSERVER, ReaderGrant, site_policy

NIGHT_TIMEOUT_S = 120.0
REQUIRED_KEYS = {
    "guests",
    "left",
    "checkouts",
    "duplicate_checkouts",
    "missed_checkouts",
    "false_checkouts",
    "kits_issued",
    "kits_refused",
    "coupons_issued",
    "sightings",
    "broker",
    "elapsed_s",
}
SMALL_NIGHT = ["--guests", "150", "--seed", "1", "--minutes", "30"]


def run_night(*arguments: str) -> dict[str, Any]:
    """Run ``nightbox demo`` headless at speed 5000 and return its JSON results."""
    command = [sys.executable, "-m", "appliance", "demo", "--headless", "--json"]
    result = subprocess.run(
        [*command, "--speed", "5000", *arguments],
        capture_output=True,
        text=True,
        timeout=NIGHT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results: dict[str, Any] = json.loads(result.stdout)
    return results


@pytest.mark.slow
def test_demo_night_500_guests() -> None:
    results = run_night("--guests", "500", "--seed", "1", "--broker", "mosquitto")

    assert set(results) >= REQUIRED_KEYS, REQUIRED_KEYS - set(results)
    assert results["broker"] == "mosquitto"
    assert results["guests"] == 500
    assert results["duplicate_checkouts"] == 0, results
    assert results["false_checkouts"] == 0, results
    assert results["missed_checkouts"] <= 0.01 * results["left"], results
    assert results["checkouts"] == results["left"] - results["missed_checkouts"]
    assert results["kits_issued"] > 0, results
    # Stock covers about three quarters of the visits, so it runs out.
    assert results["kits_refused"] > 0, results
    assert results["kits_refused_by_reason"].get("out-of-stock", 0) > 0, results
    assert results["coupons_issued"] > 0, results
    assert results["coupons_issued"] <= results["kits_issued"]
    # The scan stall injected mid-night on the second exit.
    assert results["faults_raised"] >= 1, results
    assert results["sightings"] > 0


@pytest.mark.slow
def test_demo_same_seed_same_night() -> None:
    # Both nights run at once, so the machine schedules them differently.
    # The results must still be equal.
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _run: run_night(*SMALL_NIGHT), range(2))

    first.pop("elapsed_s")
    second.pop("elapsed_s")
    assert first == second
    assert first["faults_raised"] == 1


@pytest.mark.slow
def test_demo_embedded_broker() -> None:
    results = run_night(*SMALL_NIGHT, "--broker", "embedded")

    assert set(results) >= REQUIRED_KEYS
    assert results["broker"] == "embedded broker"
    assert results["duplicate_checkouts"] == 0, results
    assert results["false_checkouts"] == 0, results
    assert results["missed_checkouts"] <= 0.01 * results["left"], results
    assert results["kits_issued"] > 0
    assert results["faults_raised"] >= 1


async def test_start_broker_falls_back_to_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine without mosquitto, as `make demo` may run on: auto mode
    # must start the embedded broker with the same accounts and ACLs.
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    credentials = SiteCredentials(tmp_path / "secrets" / "broker.json")
    policy = site_policy("demo", "box-1", [ReaderGrant("exit-1", "exit")])

    handle = await start_broker(
        BrokerConfig(mode="auto"), tmp_path / "run", credentials, policy
    )
    try:
        account = credentials.account(OBSERVER)
        settings = BusSettings(
            handle.host,
            handle.port,
            account.username,
            account.password,
            "observer",
            "fallback",
            "demo",
        )
        async with Bus(settings, announce=False) as bus:
            await asyncio.wait_for(bus.connected.wait(), timeout=10)
    finally:
        await handle.stop()

    assert handle.kind == "embedded broker"
    assert handle.host == "127.0.0.1"
    assert handle.description.startswith("embedded broker on 127.0.0.1:")
    assert not (tmp_path / "run" / "mosquitto.conf").exists()


async def test_start_broker_mosquitto_mode_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    credentials = SiteCredentials(tmp_path / "secrets" / "broker.json")
    policy = site_policy("demo", "box-1", [])

    with pytest.raises(BrokerUnavailableError, match="mosquitto is not installed"):
        await start_broker(
            BrokerConfig(mode="mosquitto"), tmp_path / "run", credentials, policy
        )
