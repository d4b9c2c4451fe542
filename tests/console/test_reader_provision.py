"""``console/reader-provision`` on a simulated board, against ``nightbox run``.

The box runs as a user starts it, from a site file, with its own mosquitto.
The console asks it over the bus to provision a simulated ESP32 that runs
MicroPython (under Node.js; ``make deps`` installs it), follows the job's
stages, and sees the new reader served after the box restarted.
"""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.bus.broker import find_mosquitto, free_port
from appliance.bus.client import Bus, BusSettings, Incoming
from appliance.config import load_config
from appliance.console.pin import PinFile, pin_path
from appliance.errors import RequestError
from hardware.reader_board import BoardSimulator
from provisioning import SiteCredentials
from tests.console.console_site import PIN, call, refused, unlock
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    board_bundle_fixture,
    micropython_board_fixture,
    mip_index_fixture,
    umqtt_sources_fixture,
    write_site,
)

START_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 120.0


@pytest.fixture(name="site_file")
def site_file_fixture(tmp_path: Path) -> Path:
    """The provisioning test site, with mosquitto on a free loopback port."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    port = free_port()
    return write_site(
        tmp_path,
        extra=f'\n[broker]\nmode = "mosquitto"\nhost = "127.0.0.1"\nport = {port}\n',
    )


@pytest.fixture
def running_box(site_file: Path, board_bundle: Path) -> Iterator[Path]:
    """``nightbox run`` on the site file, with the console PIN set."""
    PinFile(pin_path(load_config(site_file).data_dir)).set(PIN)
    box = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(site_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert box.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        started = False
        while not started and time.monotonic() < deadline:
            ready, _, _ = select.select([box.stdout], [], [], 0.5)
            line = box.stdout.readline() if ready else ""
            started = "running" in line
            assert box.poll() is None, f"nightbox run stopped at start: {line}"
        assert started, f"nightbox run did not start within {START_TIMEOUT_S} s"
        yield site_file
    finally:
        box.terminate()
        box.wait(timeout=30)


@pytest.fixture
async def console(running_box: Path) -> AsyncIterator[Bus]:
    config = load_config(running_box)
    account = SiteCredentials(config.data_dir / "secrets" / "broker.json").account(
        "terminal-console"
    )
    settings = BusSettings(
        "127.0.0.1",
        config.broker.port,
        account.username,
        account.password,
        "terminal",
        "console",
        config.site_id,
    )
    async with Bus(settings) as bus:
        await asyncio.wait_for(bus.connected.wait(), 10)
        yield bus


async def overview_when_reader(console: Bus, reader_id: str) -> dict[str, Any]:
    """Return the overview once the restarted box serves ``reader_id``."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            overview = await call(console, "overview")
        except RequestError:
            overview = {}
        if any(reader["id"] == reader_id for reader in overview.get("readers", [])):
            return overview
        await asyncio.sleep(0.5)
    raise AssertionError(f"the box did not serve {reader_id} in {JOB_TIMEOUT_S} s")


async def test_provision_board_through_bus(
    console: Bus, micropython_board: BoardSimulator
) -> None:
    stages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_job(incoming: Incoming) -> None:
        await stages.put(orjson.loads(incoming.payload)["data"])

    console.subscribe(console.topics.box_topic("box-1", "console/jobs/+"), on_job)
    await asyncio.sleep(0.3)
    token = await unlock(console)
    started = await call(
        console,
        "reader-provision",
        {
            "port": micropython_board.url,
            "role": "exit",
            "zone": "back-door",
            "id": "exit-3",
        },
        token=token,
        mutating=True,
    )
    listed_at_once = await call(console, "jobs")
    busy = await refused(
        console,
        "reader-provision",
        {"port": "/dev/ttyUSB9", "role": "exit", "zone": "bar", "id": "exit-4"},
        token=token,
        mutating=True,
    )
    seen: list[dict[str, Any]] = []
    while not (seen and seen[-1]["done"]):
        seen.append(await asyncio.wait_for(stages.get(), JOB_TIMEOUT_S))
    overview = await overview_when_reader(console, "exit-3")
    jobs = await call(console, "jobs")

    job = started["job"]
    assert listed_at_once["jobs"][0]["job"] == job
    assert busy.code == "busy"
    assert busy.details["job"] == job
    assert all(message["job"] == job for message in seen)
    assert all(message["kind"] == "reader-provision" for message in seen)
    names = [message["stage"] for message in seen]
    assert names[0] == "queued"
    for stage in ("bundle", "probe", "register", "copy", "config", "broker"):
        assert stage in names
    assert names[-1] == "done"
    assert seen[-1]["ok"] is True
    assert seen[-1]["error"] is None
    assert seen[-1]["reader"] == "exit-3"
    reader = next(r for r in overview["readers"] if r["id"] == "exit-3")
    assert reader == {
        "id": "exit-3",
        "role": "exit",
        "zone": "back-door",
        "uplink": "wifi",
    }
    assert jobs["jobs"][0] == seen[-1]
    assert micropython_board.files["/reader.json"]
