"""The box's telemetry against its store, after a night's activity over the bus."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from conftest import ClientFactory, TokenFactory, strong_batches
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from management_site import (
    BOX_ID,
    DROP_ID,
    DROP_QUANTITY,
    TIMEOUT_S,
    config_path_fixture,  # noqa: F401
    management_box,  # noqa: F401
    management_site_config,  # noqa: F401
    operator_key_fixture,  # noqa: F401
    site_toml,
    write_public_key,
)
from upstream_broker import Upstream, upstream  # noqa: F401

from appliance.bus.broker import start_broker
from appliance.bus.client import Bus, Incoming
from appliance.bus.url import client_tls_context
from appliance.clock import SystemClock, TimeSource
from appliance.config import BrokerConfig, SiteConfig, load_config
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy

SCOPES = ("wallet:topup", "pos:charge", "pos:refund", "drops:claim")


def unsynced(box: Box) -> int:
    row = box.store.query_one("SELECT COUNT(*) FROM outbox WHERE synced_at IS NULL")
    assert row is not None
    return int(row[0])


async def call(bar: Bus, token: str, service: str, action: str, **data: Any) -> Any:
    data["idempotency_key"] = uuid.uuid4().hex
    return await bar.request(
        bar.topics.api(service, action), data, timeout_s=TIMEOUT_S, token=token
    )


def test_telemetry_of_fresh_box(box: Box) -> None:
    telemetry = box.management.telemetry()

    assert telemetry["guests_in"] == 0
    assert telemetry["checkouts"] == 0
    assert telemetry["kits_issued"] == {"total": 0, "stations": {"kit-1": 0}}
    assert telemetry["kits_left"] == {"total": 5, "stations": {"kit-1": 5}}
    assert telemetry["sales_minor"] == 0
    assert telemetry["currency"] == "EUR"
    assert telemetry["drop_stock"] == {DROP_ID: DROP_QUANTITY}
    assert telemetry["sync_backlog"] == unsynced(box)
    assert telemetry["sync_last_success"] is None
    assert telemetry["readers_online"] == 0
    assert telemetry["readers"] == 3
    assert telemetry["uptime_s"] >= 0
    assert telemetry["version"] == "0.1.0"
    assert telemetry["night"] == box.config.commerce.night_of(box.clock.now())


async def test_telemetry_after_activity(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    issue_token: TokenFactory,
) -> None:
    token = issue_token("bar-1", *SCOPES)
    checkouts: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_checkout(incoming: Incoming) -> None:
        checkouts.put_nowait(incoming)

    async with make_client("reader-kit-1", "reader", "kit-1") as kit_reader:
        kit = await kit_reader.request(
            kit_reader.topics.api("kits", "issue"),
            {"station": "kit-1", "band": "ib-1-7", "idempotency_key": "kit-ib-1-7"},
            timeout_s=TIMEOUT_S,
        )
        with_kit_reader = box.management.telemetry()
    async with make_client("terminal-bar-1", "terminal", "bar-1") as bar:
        await call(
            bar, token, "wallet", "topup", band="ib-1-8", amount=5000,
            currency="EUR", method="cash",
        )  # fmt: skip
        charge = await call(
            bar, token, "wallet", "charge", band="ib-1-8", item="beer", quantity=2,
            amount=900, currency="EUR",
        )  # fmt: skip
        await call(
            bar, token, "wallet", "refund",
            transaction_id=charge["transaction_id"], amount=450,
        )  # fmt: skip
        await call(bar, token, "drops", "claim", drop=DROP_ID, band="ib-1-8")
    async with make_client(
        "observer", "observer", "telemetry-test", announce=False, wait=False
    ) as observer:
        observer.subscribe(observer.topics.event("checkout"), on_checkout)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        async with make_client(
            "reader-exit-1", "reader", "exit-1", announce=False
        ) as exit_reader:
            for batch in strong_batches(site_config, "exit-1", 7, "telemetry"):
                await exit_reader.publish_json(
                    exit_reader.topics.sightings("exit-1"), {"data": batch}
                )
            await asyncio.wait_for(checkouts.get(), TIMEOUT_S)
    telemetry = box.management.telemetry()

    assert kit["remaining"] == 4
    # The kit reader announced itself online while it was connected.
    assert with_kit_reader["readers_online"] == 1
    # ib-1-7 took a kit and then left; ib-1-8 paid and claimed a drop unit.
    assert telemetry["guests_in"] == 1
    assert telemetry["checkouts"] == 1
    assert telemetry["kits_issued"] == {"total": 1, "stations": {"kit-1": 1}}
    assert telemetry["kits_left"] == {"total": 4, "stations": {"kit-1": 4}}
    assert telemetry["sales_minor"] == 450
    assert telemetry["drop_stock"] == {DROP_ID: DROP_QUANTITY - 1}
    assert telemetry["sync_backlog"] == unsynced(box)
    assert telemetry["sync_backlog"] >= 7
    # The kit reader announced offline when it left; exit-1 announced
    # nothing and counts by its recent batches.
    assert telemetry["readers_online"] == 1


async def test_telemetry_retained_on_topic(
    box: Box, make_client: ClientFactory
) -> None:
    received: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        received.put_nowait(incoming)

    async with make_client(
        "homeassistant", "homeassistant", "ha", announce=False, wait=False
    ) as home:
        home.subscribe(home.topics.telemetry(BOX_ID), on_message)
        await asyncio.wait_for(home.connected.wait(), TIMEOUT_S)
        first = await asyncio.wait_for(received.get(), TIMEOUT_S)
        # The box publishes every telemetry_interval_s (0.5 s in this site).
        second = await asyncio.wait_for(received.get(), TIMEOUT_S)

    message = orjson.loads(first.payload)
    assert first.retain is True
    assert message["src"] == f"box/{BOX_ID}"
    assert set(message["data"]) >= {
        "guests_in",
        "checkouts",
        "kits_issued",
        "kits_left",
        "sales_minor",
        "currency",
        "drop_stock",
        "sync_backlog",
        "sync_last_success",
        "readers_online",
        "readers",
        "uptime_s",
        "version",
    }
    assert orjson.loads(second.payload)["id"] != message["id"]


async def test_malformed_reader_availability_ignored(
    box: Box, make_client: ClientFactory
) -> None:
    async with make_client(
        "reader-exit-1", "reader", "exit-1", announce=False
    ) as exit_reader:
        topic = exit_reader.topics.availability("reader", "exit-1")
        for payload in (b"\xff\xfe", b"online" * 1000, b"", b'{"online": true}'):
            await exit_reader.publish(topic, payload, retain=True)
    # Once the kit reader's reply arrives, the box has handled every message
    # that was acknowledged before (mosquitto queues before its PUBACK).
    async with make_client(
        "reader-kit-1", "reader", "kit-1", announce=False
    ) as kit_reader:
        await kit_reader.request(
            kit_reader.topics.api("kits", "issue"),
            {"station": "kit-1", "band": "ib-1-7", "idempotency_key": "barrier-1"},
            timeout_s=TIMEOUT_S,
        )

    assert box.bus.stats.handler_errors == 0
    # The box keeps the first 16 characters, and only "online" counts.
    assert box.management.telemetry_source.reader_availability["exit-1"] == (
        '{"online": true}'
    )
    assert box.management.telemetry()["readers_online"] == 0


async def test_telemetry_upstream_after_sync(
    tmp_path: Path,
    upstream: Upstream,  # noqa: F811
    operator_key: Ed25519PrivateKey,
) -> None:
    key_path = write_public_key(operator_key, tmp_path / "operator.pem")
    config_file = tmp_path / "club.toml"
    sync = {
        "broker": upstream.url,
        "ca_file": str(upstream.ca.ca_certificate),
        "credentials_file": str(upstream.box_credentials("club", BOX_ID)),
    }
    config_file.write_text(
        site_toml(tmp_path / "box", [key_path], site_id="club", sync=sync),
        encoding="utf-8",
    )
    config = load_config(config_file)
    credentials = SiteCredentials(config.data_dir / "secrets" / "broker.json")
    policy = site_policy(
        "club",
        BOX_ID,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
    )
    local = await start_broker(
        BrokerConfig(mode="mosquitto"), config.data_dir / "run", credentials, policy
    )
    login = json.loads(upstream.operator_credentials().read_text())
    state: dict[str, Any] = {}
    try:
        async with Box(
            config,
            SystemClock(TimeSource.NTP),
            credentials,
            local.host,
            local.port,
            config_path=config_file,
        ) as box:
            box.tokens.issue("bar-1", ["pos:charge"], 3600.0)
            async with aiomqtt.Client(
                "127.0.0.1",
                upstream.broker.port,
                username=login["username"],
                password=login["password"],
                tls_context=client_tls_context(upstream.ca.ca_certificate),
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as fleet:
                await fleet.subscribe(f"nightbox/club/box/{BOX_ID}/tele/state")
                async with asyncio.timeout(TIMEOUT_S * 2):
                    async for message in fleet.messages:
                        assert isinstance(message.payload, bytes)
                        data = orjson.loads(message.payload)["data"]
                        # The first messages may predate the first PUBACK.
                        if data["sync_last_success"] is not None:
                            state = data
                            break
            local_telemetry = box.management.telemetry()
    finally:
        await local.stop()

    assert state["sync_backlog"] == 0
    assert isinstance(state["sync_last_success"], float)
    assert state["readers"] == 3
    assert local_telemetry["sync_last_success"] >= state["sync_last_success"]
