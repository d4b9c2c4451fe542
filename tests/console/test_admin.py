"""The console's admin actions on a real box: tokens, drops, promo codes, kits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig
from appliance.errors import RequestError
from appliance.runtime import Box
from provisioning import SiteCredentials
from tests.conftest import ClientFactory
from tests.console.console_site import (
    call,
    console_client,
    refused,
    set_pin,
    unlock,
)
from tests.economy.economy_site import (  # noqa: F401
    TerminalFactory,
    economy_site_config,
    terminal_fixture,
    top_up,
)

ADMIN_ACTIONS = [
    ("tokens", False),
    ("promos", False),
    ("logs", False),
    ("token-issue", True),
    ("token-revoke", True),
    ("drop-create", True),
    ("promo-create", True),
    ("kit-restock", True),
    ("reader-provision", True),
    ("stream-start", True),
    ("stream-stop", True),
    ("stream-clip", True),
]


class EventLog:
    """Events of one type as the console receives them."""

    def __init__(self, bus: Bus, event_type: str) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        bus.subscribe(bus.topics.event(event_type), self._on_event)

    async def _on_event(self, incoming: Incoming) -> None:
        await self.received.put(orjson.loads(incoming.payload)["data"])

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.received.get(), 10)


def drop_request(**changes: Any) -> dict[str, Any]:
    now = time.time()
    request = {
        "id": "night-cap",
        "item": "tee",
        "price": 2500,
        "quota": 3,
        "starts_at": now - 60,
        "ends_at": now + 3600,
        "per_guest_limit": 1,
    }
    request.update(changes)
    return request


@pytest.mark.parametrize(("action", "mutating"), ADMIN_ACTIONS)
async def test_admin_action_needs_token(
    box: Box, make_client: ClientFactory, action: str, mutating: bool
) -> None:
    async with console_client(make_client) as console:
        error = await refused(console, action, {}, mutating=mutating)

    assert error.code == "token-missing"


@pytest.mark.parametrize(("action", "mutating"), ADMIN_ACTIONS)
async def test_admin_action_needs_admin_scope(
    box: Box, make_client: ClientFactory, action: str, mutating: bool
) -> None:
    token = box.tokens.issue("console", ["pos:charge"], 600).token
    async with console_client(make_client) as console:
        error = await refused(console, action, {}, token=token, mutating=mutating)

    assert error.code == "token-wrong-scope"
    assert "console:admin" in error.message


@pytest.mark.parametrize("action", ["stream-start", "stream-stop", "stream-clip"])
async def test_stream_action_without_studio(
    box: Box, site_config: SiteConfig, make_client: ClientFactory, action: str
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(console, action, {}, token=admin, mutating=True)

    assert error.code == "no-studio"
    assert "[studio]" in error.message


@pytest.mark.parametrize("action", ["stream-start", "stream-clip"])
async def test_stream_action_from_desk_token(
    box: Box, make_client: ClientFactory, action: str
) -> None:
    token = box.tokens.issue("desk", ["console:admin"], 600).token
    async with make_client("terminal-desk", "terminal", "desk") as desk:
        error = await refused(desk, action, {}, token=token, mutating=True)

    assert error.code == "not-console"


async def test_token_issue_reply_keeps_no_token(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    data = {
        "subject": "bar-1",
        "scopes": ["pos:charge"],
        "ttl_s": 600,
        "idempotency_key": "token-issue-retry-1",
    }
    async with console_client(make_client) as console:
        admin = await unlock(console)
        first = await call(console, "token-issue", data, token=admin, mutating=True)
        retry = await call(console, "token-issue", data, token=admin, mutating=True)

    assert retry["token_id"] != first["token_id"]
    rows = box.store.query("SELECT reply FROM requests")
    assert not any(first["token"] in row[0] or retry["token"] in row[0] for row in rows)


async def test_token_issue_and_revoke(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with (
        console_client(make_client) as console,
        make_client("terminal-bar-1", "terminal", "bar-1") as bar,
    ):
        admin = await unlock(console)
        issued = await call(
            console,
            "token-issue",
            {"subject": "bar-1", "scopes": ["pos:charge"], "ttl_s": 600},
            token=admin,
            mutating=True,
        )
        balance = await call(
            bar, "balance", {"band": "ib-1-1"}, token=issued["token"], service="wallet"
        )
        listed = await call(console, "tokens", token=admin)
        revoked = await call(
            console,
            "token-revoke",
            {"token_id": issued["token_id"], "reason": "lost phone"},
            token=admin,
            mutating=True,
        )
        again = await call(
            console,
            "token-revoke",
            {"token_id": issued["token_id"]},
            token=admin,
            mutating=True,
        )
        rejected = await refused(
            bar, "balance", {"band": "ib-1-1"}, token=issued["token"], service="wallet"
        )
        after = await call(console, "tokens", token=admin)

    assert issued["subject"] == "bar-1"
    assert issued["scopes"] == ["pos:charge"]
    assert balance["balance"] == 0
    by_id = {token["token_id"]: token for token in listed["tokens"]}
    assert by_id[issued["token_id"]]["revoked"] is False
    assert revoked == {"token_id": issued["token_id"], "revoked": True}
    assert again == {"token_id": issued["token_id"], "revoked": False}
    assert rejected.code == "token-revoked"
    by_id = {token["token_id"]: token for token in after["tokens"]}
    assert by_id[issued["token_id"]]["revoked"] is True


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"subject": "nobody", "scopes": ["pos:charge"], "ttl_s": 600}, "'subject'"),
        ({"subject": "bar-1", "scopes": ["pos:fly"], "ttl_s": 600}, "'pos:fly'"),
        ({"subject": "bar-1", "scopes": "pos:charge", "ttl_s": 600}, "'scopes'"),
        ({"subject": "bar-1", "scopes": ["pos:charge"], "ttl_s": 0}, "lifetime 0"),
        ({"subject": "bar-1", "scopes": ["pos:charge"], "ttl_s": "8h"}, "'ttl_s'"),
    ],
)
async def test_token_issue_invalid(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    data: dict[str, Any],
    named: str,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(console, "token-issue", data, token=admin, mutating=True)

    assert error.code == "invalid-request"
    assert named in error.message


@pytest.mark.parametrize(
    ("token_id", "code"),
    [("0" * 32, "unknown-token"), ("not-a-token", "invalid-request")],
)
async def test_token_revoke_invalid(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    token_id: str,
    code: str,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(
            console, "token-revoke", {"token_id": token_id}, token=admin, mutating=True
        )

    assert error.code == code
    assert "token" in error.message


async def test_drop_create_then_claims(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    terminal: TerminalFactory,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console, terminal("bar-1") as bar:
        events = EventLog(console, "drop_created")
        admin = await unlock(console)
        created = await call(
            console, "drop-create", drop_request(), token=admin, mutating=True
        )
        event = await events.next()
        outcomes = []
        for index in range(5):
            band = f"ib-7-{index}"
            await top_up(bar, band, 5000)
            try:
                reply = await bar.call(
                    "drops", "claim", drop="night-cap", band=band, pay=True
                )
                outcomes.append(reply["status"])
            except RequestError as err:
                outcomes.append(err.code)
        status = await bar.call("drops", "status", drop="night-cap")
        overview = await call(console, "overview")

    assert created["id"] == "night-cap"
    assert created["quota"] == 3
    assert created["available"] == 3
    assert created["state"] == "scheduled"
    assert event["drop"] == "night-cap"
    assert event["quota"] == 3
    assert event["by"] == "console"
    assert outcomes == ["paid", "paid", "paid", "sold-out", "sold-out"]
    assert status["available"] == 0
    assert status["quota"] == 3
    listed = {drop["id"]: drop for drop in overview["drops"]}
    assert listed["night-cap"]["available"] == 0
    assert "tee-drop" in listed
    paid = box.store.query(
        "SELECT COUNT(*) FROM drop_claims WHERE drop_id = 'night-cap'"
        " AND status = 'paid'"
    )
    assert paid == [(3,)]


async def test_created_drop_survives_restart(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
    terminal: TerminalFactory,
) -> None:
    set_pin(site_config)

    def new_box() -> Box:
        return Box(
            site_config,
            SystemClock(TimeSource.NTP),
            credentials,
            mosquitto.host,
            mosquitto.port,
            broker_kind=mosquitto.kind,
        )

    async with new_box() as first:
        await asyncio.wait_for(first.bus.connected.wait(), timeout=10)
        async with console_client(make_client) as console:
            admin = await unlock(console)
            await call(
                console, "drop-create", drop_request(), token=admin, mutating=True
            )
    async with new_box() as second:
        await asyncio.wait_for(second.bus.connected.wait(), timeout=10)
        token = second.tokens.issue("bar-1", ["drops:claim", "wallet:topup"], 600)
        async with make_client("terminal-bar-1", "terminal", "bar-1") as bar:
            claim = await call(
                bar,
                "claim",
                {"drop": "night-cap", "band": "ib-7-1"},
                token=token.token,
                mutating=True,
                service="drops",
            )

    assert claim["status"] == "reserved"
    assert claim["available"] == 2


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"price": -1}, "data.price"),
        ({"quota": 0}, "data.quota"),
        ({"item": "sofa"}, "data.item"),
        ({"id": "Night Cap"}, "data.id"),
        ({"ends_at": 1_000}, "data.ends_at"),
        ({"starts_at": "tomorrow"}, "'starts_at'"),
        ({"per_guest_limit": 0}, "data.per_guest_limit"),
        ({"creator": "nobody"}, "data.creator"),
        ({"colour": "red"}, "'colour'"),
        ({"quota": None}, "data.quota"),
    ],
)
async def test_drop_create_invalid(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    changes: dict[str, Any],
    named: str,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(
            console, "drop-create", drop_request(**changes), token=admin, mutating=True
        )

    assert error.code == "invalid-request"
    assert named in error.message
    assert box.store.query("SELECT id FROM drops WHERE id = 'night-cap'") == []


async def test_drop_create_existing_id(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(
            console,
            "drop-create",
            drop_request(id="tee-drop"),
            token=admin,
            mutating=True,
        )

    assert error.code == "drop-exists"
    quota = box.store.query("SELECT quota FROM drops WHERE id = 'tee-drop'")
    assert quota == [(500,)]


async def test_promo_create_then_charge(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    terminal: TerminalFactory,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console, terminal("bar-1") as bar:
        events = EventLog(console, "promo_created")
        admin = await unlock(console)
        created = await call(
            console,
            "promo-create",
            {"code": "night20", "percent": 20, "uses": 2, "creator": "kofi"},
            token=admin,
            mutating=True,
        )
        event = await events.next()
        await top_up(bar, "ib-1-1", 5000)
        charge = await bar.call(
            "wallet",
            "charge",
            band="ib-1-1",
            item="beer",
            quantity=1,
            amount=450,
            currency="EUR",
            promo_code="NIGHT20",
        )
        promos = await call(console, "promos", token=admin)

    assert created["code"] == "NIGHT20"
    assert created["kind"] == "percent"
    assert created["value"] == 20
    assert created["uses"] == 2
    assert created["used"] == 0
    assert event["code"] == "NIGHT20"
    assert event["by"] == "console"
    assert charge["amount"] == 360
    by_code = {promo["code"]: promo for promo in promos["promos"]}
    assert by_code["NIGHT20"]["used"] == 1
    assert by_code["SAVE10"]["used"] == 0
    row = box.store.query(
        "SELECT discount, promo_code, creator FROM ledger_transactions WHERE id = ?",
        (charge["transaction_id"],),
    )
    assert row == [(90, "NIGHT20", "kofi")]


@pytest.mark.parametrize(
    ("data", "code", "named"),
    [
        ({"code": "NEW1", "percent": 10, "amount": 100}, "invalid-request", "percent"),
        ({"code": "NEW1"}, "invalid-request", "percent"),
        ({"code": "x", "percent": 10}, "invalid-request", "data.code"),
        ({"code": "NEW1", "percent": 101}, "invalid-request", "data.percent"),
        ({"code": "NEW1", "percent": 10, "uses": 0}, "invalid-request", "data.uses"),
        (
            {"code": "NEW1", "amount": 100, "applies_to": "kits"},
            "invalid-request",
            "data.applies_to",
        ),
        ({"code": "MAYA", "percent": 10}, "invalid-request", "creator code"),
        ({"code": "SAVE10", "percent": 10}, "promo-exists", "SAVE10"),
    ],
)
async def test_promo_create_invalid(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    data: dict[str, Any],
    code: str,
    named: str,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(console, "promo-create", data, token=admin, mutating=True)

    assert error.code == code
    assert named in error.message


async def test_kit_restock(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        events = EventLog(console, "kit_restocked")
        admin = await unlock(console)
        reply = await call(
            console,
            "kit-restock",
            {"station": "kit-1", "add": 10},
            token=admin,
            mutating=True,
        )
        event = await events.next()

    assert reply == {"station": "kit-1", "left": 15, "initial": 15}
    assert event["added"] == 10
    assert event["left"] == 15
    assert box.kits.stock()["kit-1"] == {"initial": 15, "remaining": 15}


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"station": "exit-1", "add": 5}, "'station'"),
        ({"station": "kit-1", "add": 0}, "'add'"),
        ({"station": "kit-1", "add": 10_001}, "'add'"),
        ({"station": "kit-1", "add": True}, "'add'"),
    ],
)
async def test_kit_restock_invalid(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    data: dict[str, Any],
    named: str,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(console, "kit-restock", data, token=admin, mutating=True)

    assert error.code == "invalid-request"
    assert named in error.message
    assert box.kits.stock()["kit-1"] == {"initial": 5, "remaining": 5}
