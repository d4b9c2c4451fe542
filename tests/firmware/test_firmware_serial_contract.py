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
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from appliance.config import ReaderConfig, SiteConfig
from appliance.runtime import Box
from conftest import make_site_config

from firmware_relay import reader_files, run_with_relay
from micropython_runner import Results

TIMEOUT_S = 40.0


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


def run_on_line(
    files: dict[str, str], line: PtyLine, stop: threading.Event, timeout_s: float
) -> Results:
    """Run the serial scenario, passing its line to and from ``line``.

    Blocks until the interpreter exits; call it in a thread.
    """

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "write":
            line.write(request["data"])
            return {}
        return {"data": line.read()}

    return run_with_relay("serial_contract", files, stop, answer, timeout_s=timeout_s)


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
