"""``nightbox demo``: whole simulated nights on mosquitto and the embedded broker.

Each night runs as a subprocess, as a user would start it, and is judged on
the JSON it prints. The simulator scores check-outs against its own ground
truth, so a missed, doubled or false check-out shows up in the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from appliance.bus import broker as broker_module
from appliance.bus.broker import start_broker
from appliance.bus.client import Bus, BusSettings
from appliance.config import BrokerConfig
from appliance.errors import BrokerUnavailableError
from appliance.sim._world import NightPlan
from appliance.sim.demo import NIGHT_START_S
from provisioning import SiteCredentials
from provisioning.site_access import OBSERVER, ReaderGrant, site_policy

NIGHT_TIMEOUT_S = 120.0
START_TIMEOUT_S = 30.0
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
    # The economy: 500 guests rush a drop of 50 tees, so it sells out, and
    # every claimer topped up enough, so only stock refuses them.
    assert results["topups"] > 0, results
    assert results["charges"] > 0, results
    assert results["drop_sold"] == 50, results
    refused = results["economy_refused_by_reason"]
    assert refused.get("sold-out", 0) > 0, results
    assert set(refused) <= {"sold-out", "insufficient-funds"}, results
    assert results["ledger_ok"] is True, results


@pytest.mark.slow
def test_demo_same_seed_same_night() -> None:
    # Both nights run at once, so the machine schedules them differently.
    # The results must still be equal.
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _run: run_night(*SMALL_NIGHT), range(2))

    for results in (first, second):
        results.pop("elapsed_s")
        # The studio encodes in real time, so how many HLS segments it writes
        # depends on how long the night took on the wall clock.
        results["stream"].pop("segments_written")
    assert first == second
    assert first["faults_raised"] == 1


@pytest.mark.slow
def test_demo_embedded_broker() -> None:
    results = run_night(*SMALL_NIGHT, "--broker", "embedded")

    assert set(results) >= REQUIRED_KEYS
    assert results["broker"] == "embedded"
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

    assert handle.kind == "embedded"
    assert handle.host == "127.0.0.1"
    assert handle.description == f"embedded broker on 127.0.0.1:{handle.port}"
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


@pytest.mark.parametrize("seed", range(10))
def test_night_plan_no_departure_at_the_end(seed: int) -> None:
    # A 100 s night (shorter than the command allows) puts many drawn
    # departures into the last 30 s, where the readers could not finish.
    plan = NightPlan(200, 2, seed, NIGHT_START_S, 100.0)

    late = [
        guest.band.band_id
        for guest in plan.guests
        if guest.leave_s is not None and guest.leave_s >= plan.end_s - 30.0
    ]

    assert late == []


def test_night_plan_short_night_has_departures() -> None:
    plan = NightPlan(200, 2, 1, NIGHT_START_S, 300.0)

    leaving = [guest for guest in plan.guests if guest.leave_s is not None]

    assert len(leaving) > 150
    assert all(guest.leave_s < plan.end_s - 30.0 for guest in leaving)


def test_demo_progress_counts_faults_raised() -> None:
    command = [sys.executable, "-m", "appliance", "demo", "--json"]
    result = subprocess.run(
        [*command, "--speed", "5000", "--guests", "60", "--minutes", "15"],
        capture_output=True,
        text=True,
        timeout=NIGHT_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout)
    progress = [line for line in result.stderr.splitlines() if " min] " in line]
    assert len(progress) == 3, result.stderr[-2000:]
    pattern = re.compile(r"faults raised (\d+) \(open (\d+)\)$")
    raised = []
    for line in progress:
        match = pattern.search(line)
        assert match is not None, line
        raised.append(int(match.group(1)))
    assert raised == sorted(raised)
    assert raised[-1] <= results["faults_raised"]
    assert results["faults_raised"] == 1


def process_state(pid: int) -> str | None:
    """Return the state letter of process ``pid`` (Z for a zombie), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


def child_pids(parent: int, name: str) -> list[int]:
    """Return the pids of the children of ``parent`` whose command is ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and command == name:
            found.append(int(entry.name))
    return found


def wait_for_text(path: Path, text: str, timeout_s: float) -> str:
    """Return the contents of ``path`` once they hold ``text``; fail on timeout."""
    deadline = time.monotonic() + timeout_s
    contents = ""
    while time.monotonic() < deadline:
        contents = path.read_text(errors="replace")
        if text in contents:
            return contents
        time.sleep(0.05)
    pytest.fail(f"{text!r} did not appear within {timeout_s} s: {contents[-2000:]}")


def test_demo_sigterm_stops_broker(tmp_path: Path) -> None:
    # Slow enough that the night is still running when the signal comes.
    command = [sys.executable, "-m", "appliance", "-v", "demo", "--headless"]
    log_path = tmp_path / "demo.log"
    brokers: list[int] = []
    folder: Path | None = None
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--speed", "20", "--broker", "mosquitto"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        started = wait_for_text(log_path, "Broker: ", START_TIMEOUT_S)
        brokers = child_pids(process.pid, "mosquitto")
        found = re.search(r"Demo data folder: (\S+)", started)
        assert found is not None, started[-2000:]
        folder = Path(found.group(1))
        assert len(brokers) == 1
        assert folder.is_dir()

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=START_TIMEOUT_S)
        broker_state = process_state(brokers[0])
        folder_left = folder.exists()
    finally:
        if process.poll() is None:
            brokers = brokers or child_pids(process.pid, "mosquitto")
            process.kill()
            process.wait(timeout=START_TIMEOUT_S)
        # A demo that dies without its cleanup leaves its broker running.
        for pid in brokers:
            if process_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)
        if folder is not None and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)

    log = log_path.read_text(errors="replace")
    assert returncode == 128 + signal.SIGTERM, log[-2000:]
    assert "stopped by SIGTERM" in log
    assert "Traceback" not in log
    assert broker_state in (None, "Z")
    assert not folder_left
