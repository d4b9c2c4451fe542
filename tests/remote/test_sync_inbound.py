"""Limits on the commands and bundles that reach a box from upstream.

A flood from the fleet broker must not grow the box's memory or its log.
The inbound queue is bounded by count and by bytes, and a payload over its
type's limit is dropped before it is queued. Drops are counted in the sync
state, and a dropped command with a readable nonce gets a ``busy`` result.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sync import (
    _results,
    local_bus,  # noqa: F401
    operator,
    running,
    wait_until,
)
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance.bus.client import Bus
from appliance.bus.topics import Topics
from appliance.clock import SystemClock
from appliance.config import SiteConfig
from appliance.remote._sync_inbound import LimitedLog
from appliance.remote.document_types import MAX_BUNDLE_BYTES, MAX_COMMAND_BYTES
from appliance.store import Store

SITE = "club"
BOX = "box-1"
TOPICS = Topics(SITE)
SYNC_LOGGER = "appliance.remote.sync"


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream) -> SiteConfig:  # noqa: F811
    return fleet_site_config(tmp_path / "box", upstream)


@pytest.fixture
def store(site_config: SiteConfig) -> Iterator[Store]:
    opened = Store(site_config.data_dir / "nightbox.sqlite3", SystemClock())
    yield opened
    opened.close()


class BlockedManagement:
    """Remote management that blocks every request until ``release`` is set."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, int]] = []
        self.release = asyncio.Event()

    async def handle_command(self, name: str, payload: bytes) -> dict[str, Any]:
        self.received.append(("command", name, len(payload)))
        await self.release.wait()
        return {"kind": "command", "type": name, "nonce": None, "ok": True}

    async def handle_bundle(self, bundle_type: str, payload: bytes) -> dict[str, Any]:
        self.received.append(("bundle", bundle_type, len(payload)))
        await self.release.wait()
        return {"kind": "bundle", "type": bundle_type, "nonce": None, "ok": True}

    def telemetry(self) -> dict[str, Any]:
        return {}


def _command(nonce: str) -> bytes:
    return json.dumps({"type": "status", "nonce": nonce}).encode()


async def test_inbound_queue_bounded_by_bytes(
    site_config: SiteConfig,
    store: Store,
    local_bus: Bus,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=SYNC_LOGGER)
    management = BlockedManagement()
    full_bundle = b"x" * MAX_BUNDLE_BYTES
    busy_nonce = "0123456789abcdef0123456789abcdef"
    floods = 200
    async with (
        running(site_config, store, local_bus, management=management) as service,
        operator(upstream) as (client, received),
    ):
        await wait_until(lambda: service.connected, "the service to connect")
        # The first request is taken off the queue and held by management.
        await client.publish(TOPICS.command(BOX, "status"), _command("a" * 32), qos=1)
        await wait_until(lambda: len(management.received) == 1, "the first command")

        # Four bundles of the maximum size fill the 16 MiB of the queue.
        for _ in range(4):
            await client.publish(TOPICS.bundle(BOX, "members"), full_bundle, qos=1)
        await client.publish(TOPICS.bundle(BOX, "members"), full_bundle + b"x", qos=1)
        await client.publish(
            TOPICS.command(BOX, "status"), b"x" * (MAX_COMMAND_BYTES + 1), qos=1
        )
        await client.publish(TOPICS.command(BOX, "status"), _command(busy_nonce), qos=1)
        for _ in range(floods):
            await client.publish(TOPICS.command(BOX, "status"), b"junk", qos=1)
        await wait_until(
            lambda: service.state()["counts"]["inbound_dropped"] == 1 + floods,
            "every command after the full queue dropped",
        )
        await wait_until(lambda: len(_results(received)) == 1, "the busy result")
        busy = _results(received)[0]
        counts = service.state()["counts"]
        # The retained sync state shows the drops, so fleet tools see them.
        await client.subscribe(TOPICS.sync_state(BOX), qos=1)
        await wait_until(
            lambda: any(
                topic == TOPICS.sync_state(BOX)
                and message.data["counts"]["inbound_dropped"] == 1 + floods
                for topic, message, _retain in received
            ),
            "the sync state with every drop",
        )

        management.release.set()
        await wait_until(
            lambda: len(management.received) == 5, "the queued bundles handled"
        )

    assert busy["kind"] == "command"
    assert busy["nonce"] == busy_nonce
    assert busy["ok"] is False
    assert busy["reason"] == "busy"
    assert "send it again" in busy["message"]
    assert counts["inbound_too_large"] == 2
    assert counts["busy_unanswered"] == floods
    assert management.received[1:] == [("bundle", "members", MAX_BUNDLE_BYTES)] * 4
    dropped_lines = [
        record
        for record in caplog.records
        if "dropped command 'status' because" in record.getMessage()
    ]
    assert 1 <= len(dropped_lines) < floods


def test_limited_log_counts_skipped(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = LimitedLog(logging.getLogger("test.limited"), 5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        log.warning("dropped", "dropped %s", "a")
        log.warning("dropped", "dropped %s", "b")
        log.warning("dropped", "dropped %s", "c")
        log.warning("ignored", "ignored %s", "d")
        now[0] += 5.0
        log.warning("dropped", "dropped %s", "e")

    assert [record.getMessage() for record in caplog.records] == [
        "dropped a",
        "ignored d",
        "dropped e (2 more like it since the last report)",
    ]
