"""The reader firmware on USB serial, through the box's bridge and mosquitto.

The firmware runs on the MicroPython WebAssembly port with its serial
uplink's line relayed to a pseudo-terminal. The box's serial bridge opens
the pty's slave path with pyserial, as it opens /dev/ttyUSB0 on a real box,
so the frames the firmware writes reach the box's services and the box's
replies and clock come back down the line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from appliance.config import ReaderConfig, SiteConfig
from appliance.runtime import Box
from conftest import make_site_config

from micropython_runner import (
    RELAY_PREFIX,
    RUNNER,
    Results,
    node_binary,
    parse_records,
    scenario_spec,
)

SITE_UUID_HEX = "426c7565436861726d426561636f6e73"
TIMEOUT_S = 40.0
GREEN_PIN, RED_PIN, BUTTON_PIN = 25, 26, 0


class PtyLine:
    """The master side of a pty, which the relayed firmware writes and reads."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)

    def write(self, text: str) -> None:
        view = memoryview(text.encode())
        while view:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                # The slave's input buffer is full until the bridge reads.
                time.sleep(0.001)
                continue
            view = view[written:]

    def read(self) -> str:
        try:
            return os.read(self.master, 65536).decode("ascii", "replace")
        except (BlockingIOError, OSError):
            return ""

    def close(self) -> None:
        os.close(self.master)


@pytest.fixture
def lines() -> Iterator[dict[str, PtyLine]]:
    opened = {"exit-4": PtyLine(), "kit-4": PtyLine()}
    try:
        yield opened
    finally:
        for line in opened.values():
            line.close()


@pytest.fixture
def site_config(tmp_path: Path, lines: dict[str, PtyLine]) -> SiteConfig:
    """The test site plus an exit reader and a kit station on USB serial."""
    config = make_site_config(tmp_path / "box")
    serial_readers = (
        ReaderConfig(
            "exit-4", "exit", uplink="serial", serial_port=lines["exit-4"].path
        ),
        ReaderConfig(
            "kit-4",
            "kit",
            kit_stock=5,
            uplink="serial",
            serial_port=lines["kit-4"].path,
        ),
    )
    return dataclasses.replace(config, readers=(*config.readers, *serial_readers))


def reader_files(reader: str, role: str) -> dict[str, str]:
    """Return /reader.json and /contract.json for a serial reader of the site."""
    document: dict[str, Any] = {
        "v": 1,
        "site": "test",
        "reader": reader,
        "role": role,
        "uplink": "serial",
        "bands": {"ibeacon_uuid": SITE_UUID_HEX, "eid": False},
        "batch_ms": 500,
    }
    if role == "kit":
        document["kit"] = {
            "button_pin": BUTTON_PIN,
            "green_pin": GREEN_PIN,
            "red_pin": RED_PIN,
            "answer_ms": 1000,
        }
    contract = {
        "role": role,
        "limit_ms": 25000,
        "button_pin": BUTTON_PIN,
        "green_pin": GREEN_PIN,
        "red_pin": RED_PIN,
    }
    return {
        "/reader.json": json.dumps(document),
        "/contract.json": json.dumps(contract),
    }


def run_on_line(
    files: dict[str, str], line: PtyLine, stop: threading.Event, timeout_s: float
) -> Results:
    """Run the serial scenario, passing its line to and from ``line``.

    Blocks until the interpreter exits; call it in a thread.
    """
    output: list[str] = []
    with scenario_spec("serial_contract", files, relay=True) as spec:
        process = subprocess.Popen(
            [node_binary(), str(RUNNER), str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            for text in process.stdout:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the serial scenario ran over {timeout_s} s")
                if not text.startswith(RELAY_PREFIX):
                    output.append(text)
                    continue
                request = json.loads(text[len(RELAY_PREFIX) :])
                answer: dict[str, Any] = {"stop": stop.is_set()}
                if request["op"] == "write":
                    line.write(request["data"])
                else:
                    answer["data"] = line.read()
                process.stdin.write(json.dumps(answer) + "\n")
                process.stdin.flush()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            stderr = process.stderr.read() if process.stderr else ""
    printed = "".join(output)
    if process.returncode != 0:
        raise AssertionError(
            f"the serial scenario failed (exit status {process.returncode}):\n"
            f"{stderr}\n{printed[-4000:]}"
        )
    return Results(parse_records(printed), printed + stderr)


async def until(check: Callable[[], Any]) -> Any:
    """Return the first true result of ``check``, polled for up to TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def bridge_open(box: Box, reader_id: str) -> None:
    """Wait until the bridge has the reader's port open (the pty is then raw)."""
    bridge = next(b for b in box.serial_bridges if b.reader.id == reader_id)
    assert await until(lambda: bridge.status()["open"])


async def test_serial_firmware_checkout(box: Box, lines: dict[str, PtyLine]) -> None:
    await bridge_open(box, "exit-4")
    stop = threading.Event()
    reader = asyncio.create_task(
        asyncio.to_thread(
            run_on_line, reader_files("exit-4", "exit"), lines["exit-4"], stop, 60
        )
    )
    try:
        rows = await until(
            lambda: box.store.query("SELECT band, reader FROM checkouts")
        )
    finally:
        stop.set()
        results = await reader
    outcome = results["exit"]
    assert rows == [("ib-1-7", "exit-4")]
    assert outcome["synced"] is True
    assert outcome["batches_sent"] >= 5
    assert outcome["frames_corrupt"] == 0
    assert box.status()["readers_serial"]["exit-4"]["corrupt"] == 0


async def test_serial_firmware_kit_answers(box: Box, lines: dict[str, PtyLine]) -> None:
    await bridge_open(box, "kit-4")
    stop = threading.Event()
    reader = asyncio.create_task(
        asyncio.to_thread(
            run_on_line, reader_files("kit-4", "kit"), lines["kit-4"], stop, 60
        )
    )
    try:
        rows = await until(lambda: box.store.query("SELECT band, station FROM kits"))
        # The second press of the same band is refused.
        await until(lambda: box.requests.counts["kits/issue:already-issued"])
    finally:
        stop.set()
        results = await reader
    outcome = results["kit"]
    assert rows == [("ib-1-9", "kit-4")]
    assert outcome["synced"] is True
    assert outcome["green_after_first"] == [0, 1, 0]
    assert outcome["outcomes"] == [["ib-1-9", "issued"], ["ib-1-9", "already-issued"]]
