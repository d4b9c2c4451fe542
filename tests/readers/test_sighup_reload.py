"""SIGHUP makes a running ``nightbox run`` reload its site file in-process.

A reader added to the file gets a broker account that the restarted broker
accepts, without stopping the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiomqtt
import pytest

from provisioning import SiteCredentials

TIMEOUT_S = 30.0

CONFIG = """
[site]
id = "hup"

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

NEW_READER = """
[[readers]]
id = "exit-9"
role = "exit"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Output:
    """The lines a subprocess prints, read in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {TIMEOUT_S} s; saw {self.seen}")


async def can_connect(port: int, username: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            username=username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=5,
        ):
            return True
    except aiomqtt.MqttError:
        return False


def test_sighup_new_reader_connects(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "site.toml"
    config.write_text(CONFIG.format(port=port))
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    secrets_path = tmp_path / "data" / "secrets" / "broker.json"
    try:
        output.wait_for("running")
        lock_pid = int((tmp_path / "data" / "nightbox.lock").read_text())
        known_before = set(json.loads(secrets_path.read_text()))
        refused_before = not asyncio.run(can_connect(port, "reader-exit-9", "guess"))

        config.write_text(config.read_text() + NEW_READER)
        os.kill(lock_pid, signal.SIGHUP)
        output.wait_for("Restarting with the configuration")
        output.wait_for("running")
        # Loaded after the reload, so this reads the box's generated password
        # and generates none.
        account = SiteCredentials(secrets_path).account("reader-exit-9")
        connected = asyncio.run(can_connect(port, account.username, account.password))
        old_reader = SiteCredentials(secrets_path).account("reader-exit-1")
        old_connected = asyncio.run(
            can_connect(port, old_reader.username, old_reader.password)
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TIMEOUT_S)

    assert lock_pid == process.pid
    assert "reader-exit-9" not in known_before
    assert refused_before
    assert connected
    assert old_connected
    assert process.returncode == 0
