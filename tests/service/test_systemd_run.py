"""``nightbox run`` under a simulated systemd: READY, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bus.client import Bus, BusSettings
from provisioning import SiteCredentials

SITE_TOML = """\
[site]
id = "club"
name = "Club"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"
"""
TIMEOUT_S = 60.0
WATCHDOG_USEC = 400_000


def bind_notify_socket(name: str | bytes) -> socket.socket:
    """Bind a unix datagram socket that receives what the box sends systemd."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(name)
    receiver.settimeout(TIMEOUT_S)
    return receiver


def start_run(tmp_path: Path, notify_socket: str) -> subprocess.Popen[bytes]:
    """Start ``nightbox run`` on a small site with systemd's variables set."""
    config = tmp_path / "site.toml"
    config.write_text(SITE_TOML)
    env = dict(os.environ)
    env["NOTIFY_SOCKET"] = notify_socket
    env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    env.pop("WATCHDOG_PID", None)
    with (tmp_path / "run.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


@pytest.fixture
def stop_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list of processes killed at the end of the test if still running."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT_S)


def receive_until(receiver: socket.socket, field: str) -> list[str]:
    """Return every datagram received up to and including one containing ``field``."""
    received: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        message = receiver.recv(4096).decode()
        received.append(message)
        if field in message.splitlines():
            return received
    raise AssertionError(f"no {field} within {TIMEOUT_S} s; received {received}")


async def broker_accepts_reader(tmp_path: Path) -> bool:
    """Log in to the box's broker as its reader; return True once connected."""
    log = (tmp_path / "run.log").read_text()
    match = re.search(r"Broker: .* on ([\d.]+):(\d+)", log)
    assert match is not None, log
    credentials = SiteCredentials(tmp_path / "data" / "secrets" / "broker.json")
    account = credentials.account("reader-exit-1")
    settings = BusSettings(
        match.group(1),
        int(match.group(2)),
        account.username,
        account.password,
        "reader",
        "exit-1",
        "club",
    )
    async with Bus(settings, announce=False) as bus:
        await asyncio.wait_for(bus.connected.wait(), timeout=10)
        return bus.connected.is_set()


def run_lifecycle(
    tmp_path: Path,
    receiver: socket.socket,
    notify_socket: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    process = start_run(tmp_path, notify_socket)
    processes.append(process)

    before_ready = receive_until(receiver, "READY=1")
    ready = before_ready[-1]
    assert "STATUS=Box box-1 of site club running" in ready
    assert asyncio.run(broker_accepts_reader(tmp_path))
    # mosquitto has its own sd_notify support; the box keeps its children
    # from reporting on its behalf.
    assert all("WATCHDOG=1" not in message for message in before_ready)

    watchdogs = [
        message for message in receive_until(receiver, "WATCHDOG=1") if message
    ]
    assert watchdogs[-1] == "WATCHDOG=1"
    second = receive_until(receiver, "WATCHDOG=1")
    assert second[-1] == "WATCHDOG=1"

    process.send_signal(signal.SIGHUP)
    reloading = receive_until(receiver, "RELOADING=1")[-1]
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading)
    assert "READY=1" in receive_until(receiver, "READY=1")[-1]

    process.send_signal(signal.SIGTERM)
    stopping = receive_until(receiver, "STOPPING=1")
    assert stopping[-1] == "STOPPING=1"
    code = process.wait(TIMEOUT_S)
    output = (tmp_path / "run.log").read_text()
    assert code == 0, output
    assert "Stopped." in output


def test_run_notifies_path_socket(
    tmp_path: Path, stop_process: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "notify.sock"
    with bind_notify_socket(str(path)) as receiver:
        run_lifecycle(tmp_path, receiver, str(path), stop_process)


def test_run_notifies_abstract_socket(
    tmp_path: Path, stop_process: list[subprocess.Popen[bytes]]
) -> None:
    name = f"nightbox-test-{os.getpid()}-{time.monotonic_ns()}"
    with bind_notify_socket(b"\0" + name.encode()) as receiver:
        run_lifecycle(tmp_path, receiver, "@" + name, stop_process)
