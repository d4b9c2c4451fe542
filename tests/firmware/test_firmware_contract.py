"""The reader firmware against a real box and mosquitto.

The firmware runs on the MicroPython WebAssembly port. A paho-mqtt client
speaking MQTT 3.1.1 relays its umqtt calls to the test's mosquitto with the
reader's own account, so the broker's ACL and the box's request handling
get what a real reader would send.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from appliance.bus.client import Incoming
from appliance.config import ReaderConfig, SiteConfig
from appliance.runtime import Box
from conftest import make_site_config
from provisioning import SiteCredentials

from firmware_relay import reader_files, run_relayed
from micropython_runner import Results

TIMEOUT_S = 40.0


@pytest.fixture
def site_config(tmp_path: Path) -> SiteConfig:
    """A site with one exit reader and one kit station with 5 kits."""
    return make_site_config(
        tmp_path / "box",
        readers=(
            ReaderConfig("exit-1", "exit"),
            ReaderConfig("kit-1", "kit", kit_stock=5),
        ),
    )


class Events:
    """Events an observer received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        self.received.append((incoming.topic, json.loads(incoming.payload)))
        self.arrived.set()

    async def wait_for(self, event_type: str, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for topic, body in self.received:
                    data = body.get("data", {})
                    if topic.endswith(f"/events/{event_type}") and all(
                        data.get(key) == value for key, value in fields.items()
                    ):
                        return body
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def events(box: Box, make_client: Any) -> AsyncIterator[Events]:
    inbox = Events()
    async with make_client(
        "observer", "observer", "firmware", announce=False, wait=False
    ) as observer:
        observer.subscribe(observer.topics.all_events, inbox.on_message)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield inbox


async def run_reader(files: dict[str, str], stop: threading.Event) -> Results:
    return await asyncio.to_thread(run_relayed, "contract", files, stop, timeout_s=60)


async def test_contract_exit_checkout(
    box: Box, events: Events, credentials: SiteCredentials, mosquitto: Any
) -> None:
    password = credentials.account("reader-exit-1").password
    files = reader_files("exit-1", "exit", (mosquitto.host, mosquitto.port, password))
    stop = threading.Event()
    reader = asyncio.create_task(run_reader(files, stop))
    try:
        checkout = await events.wait_for("checkout", band="ib-1-7")
    finally:
        stop.set()
        results = await reader
    outcome = results["exit"]
    assert outcome["connected"] is True
    assert outcome["synced"] is True
    assert outcome["batches_sent"] >= 5
    assert checkout["data"]["reader"] == "exit-1"


async def test_contract_kit_green_then_red(
    box: Box, events: Events, credentials: SiteCredentials, mosquitto: Any
) -> None:
    password = credentials.account("reader-kit-1").password
    files = reader_files("kit-1", "kit", (mosquitto.host, mosquitto.port, password))
    stop = threading.Event()
    reader = asyncio.create_task(run_reader(files, stop))
    try:
        issued = await events.wait_for("kit_issued", band="ib-1-9")
    finally:
        stop.set()
        results = await reader
    outcome = results["kit"]
    assert outcome["connected"] is True
    assert outcome["synced"] is True
    assert issued["data"]["station"] == "kit-1"
    assert outcome["green_after_first"] == [0, 1, 0]
    assert outcome["outcomes"] == [["ib-1-9", "issued"], ["ib-1-9", "already-issued"]]
    # already-issued blinks red twice; green lit only for the first press.
    assert outcome["red"].count(1) == 2
    assert outcome["green"] == [0, 1, 0]
