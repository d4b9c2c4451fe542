"""``nightbox demo --console-file``: the console's login file of a running demo."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from appliance.bus.client import Bus, BusSettings
from appliance.console.pin import validate_pin
from tests.console.console_site import call, unlock

START_TIMEOUT_S = 30.0


async def wait_for_file(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await asyncio.to_thread(path.exists):
        assert process.poll() is None, "the demo stopped before writing the file"
        assert time.monotonic() < deadline, f"no {path} within {START_TIMEOUT_S} s"
        await asyncio.sleep(0.1)


async def test_demo_console_file(tmp_path: Path) -> None:
    login_path = tmp_path / "console.json"
    process = subprocess.Popen(  # noqa: ASYNC220 - the demo runs beside the test
        [
            sys.executable,
            "-m",
            "appliance",
            "demo",
            "--headless",
            "--guests",
            "30",
            "--exits",
            "1",
            "--speed",
            "10",
            "--minutes",
            "60",
            "--broker",
            "mosquitto",
            "--data-dir",
            str(tmp_path / "data"),
            "--console-file",
            str(login_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await wait_for_file(login_path, process)
        mode = stat.S_IMODE(login_path.stat().st_mode)
        login = json.loads(login_path.read_text())
        host, port = login["broker"].removeprefix("mqtt://").split(":")
        settings = BusSettings(
            host,
            int(port),
            login["username"],
            login["password"],
            "terminal",
            "console",
            login["site"],
        )
        async with Bus(settings) as console:
            await asyncio.wait_for(console.connected.wait(), 10)
            token = await unlock(console, login["pin"])
            overview = await call(console, "overview")
            tokens = await call(console, "tokens", token=token)
    finally:
        process.send_signal(signal.SIGTERM)
        _out, stderr = process.communicate(timeout=30)

    assert mode == 0o600
    assert set(login) == {"broker", "site", "box", "username", "password", "pin", "pid"}
    assert login["broker"].startswith("mqtt://127.0.0.1:")
    assert login["site"] == "demo"
    assert login["box"] == "box-1"
    assert login["username"] == "terminal-console"
    assert login["pid"] == process.pid
    validate_pin(login["pin"])
    assert overview["site"]["id"] == "demo"
    assert any(entry["subject"] == "console" for entry in tokens["tokens"])
    assert f"admin PIN {login['pin']}" in stderr
    assert login["password"] not in stderr
    assert not login_path.exists()
