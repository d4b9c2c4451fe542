"""A killed broker of ``nightbox run`` is restarted, and the console reconnects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tui_night import free_port, wait_until

from appliance.bus.broker import find_mosquitto
from tui.cli import local_link_settings
from tui.link import ConsoleLink

REPOSITORY = Path(__file__).resolve().parents[2]
SITE_TOML = """\
[site]
id = "club"
name = "Club"

[box]
id = "box-1"
data_dir = "data"

[broker]
mode = "mosquitto"
host = "127.0.0.1"
port = {port}

[[readers]]
id = "exit-1"
role = "exit"
"""


def _mosquitto_pids(config_path: Path) -> list[int]:
    """Return the pids of the mosquitto processes that run with ``config_path``."""
    wanted = str(config_path).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in command and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def running_box(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``nightbox run`` on a private mosquitto; yields its site file and log."""
    assert find_mosquitto() is not None, "mosquitto is not installed; run 'make test'"
    config = tmp_path / "site.toml"
    config.write_text(SITE_TOML.format(port=free_port()))
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPOSITORY,
        )
    try:
        deadline = time.monotonic() + 60
        while "Broker: mosquitto" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "nightbox run did not start"
            time.sleep(0.1)
        yield config, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_killed_broker_restarted(running_box: tuple[Path, Path]) -> None:
    config, log_path = running_box
    mosquitto_conf = config.parent / "data" / "run" / "mosquitto.conf"
    link = ConsoleLink(local_link_settings(config))
    await link.start()
    try:
        await wait_until(lambda: link.state.overview is not None, "the overview")
        (first,) = _mosquitto_pids(mosquitto_conf)

        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: not link.online, "the lost link")
        await wait_until(
            lambda: (
                len(_mosquitto_pids(mosquitto_conf)) == 1
                and _mosquitto_pids(mosquitto_conf) != [first]
            ),
            "a new mosquitto",
            30.0,
        )
        await wait_until(lambda: link.online, "the link back", 30.0)
        # The box's own bus client is back too: it answers requests.
        assert await link.refresh_overview() is not None
    finally:
        await link.stop()

    log = log_path.read_text()
    assert f"mosquitto (pid {first})" in log
    assert "exited with code -9; restarting it" in log
