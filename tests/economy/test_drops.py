"""Microdrops over the bus: claims, payment, pick-up, expiry, limits and quotas.

Every test runs a real box against a private mosquitto and a SQLite file.
The economy test site sells "tee-drop" (500 units, open now, 2 per guest,
reservations of 120 s, by creator maya) and "vinyl" (10 units, opening in
10 minutes, with 30 minutes of early access for members). A test changes
the site through an indirect ``site_config`` parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from conftest import ClientFactory, make_site_config
from economy_site import (
    ALL_SCOPES,
    MEMBER_BAND,
    Terminal,
    TerminalFactory,
    economy_commerce,
    terminal_fixture,  # noqa: F401
    top_up,
)

from appliance.bus.broker import BrokerHandle
from appliance.clock import Clock, ManualClock
from appliance.commerce.config import DropConfig
from appliance.config import SiteConfig
from appliance.errors import RequestError
from appliance.kits import is_valid_coupon_code
from appliance.runtime import Box
from provisioning import SiteCredentials

TEE_PRICE = 3500
TEE_QUANTITY = 500
# A request sent after the box's manual clock has moved ahead of the real
# clock needs a deadline past the box's time, so it gets a long timeout.
AHEAD_TIMEOUT_S = 60.0
WAIT_S = 10.0


# Site variants map a drop id to field changes. Their starts_at and ends_at
# are seconds from the moment the site is built.
SHORT_RESERVATION = {"tee-drop": {"reservation_s": 10.0}}
NO_EARLY_ACCESS = {"vinyl": {"early_access_s": 0.0}}
ENDED = {"tee-drop": {"starts_at": -7200.0, "ends_at": -1.0}}
QUOTAS = {"tee-drop": {"quotas": {"box-1": 3, "box-2": 2}}}
LOWER_QUOTAS = {"tee-drop": {"quotas": {"box-1": 2, "box-2": 3}}}


def changed_drop(drop: DropConfig, changes: dict[str, Any], now: float) -> DropConfig:
    """Return ``drop`` with ``changes``, whose times are offsets from ``now``."""
    fields = {
        name: now + value if name in ("starts_at", "ends_at") else value
        for name, value in changes.items()
    }
    return dataclasses.replace(drop, **fields)


def drops_site(data_dir: Path, variant: dict[str, dict[str, Any]]) -> SiteConfig:
    """Return the economy test site with its drops changed by ``variant``."""
    now = time.time()
    commerce = economy_commerce(now)
    drops = tuple(
        changed_drop(drop, variant.get(drop.id, {}), now) for drop in commerce.drops
    )
    return make_site_config(
        data_dir, commerce=dataclasses.replace(commerce, drops=drops)
    )


@pytest.fixture(name="site_config")
def drops_site_config(tmp_path: Path, request: pytest.FixtureRequest) -> SiteConfig:
    """The economy test site, with the drop changes an indirect parameter gives."""
    return drops_site(tmp_path / "box", getattr(request, "param", {}))


@contextlib.asynccontextmanager
async def running_box(
    config: SiteConfig,
    clock: Clock,
    credentials: SiteCredentials,
    broker: BrokerHandle,
) -> AsyncIterator[Box]:
    """Run a box on ``clock`` until the block ends."""
    async with Box(
        config,
        clock,
        credentials,
        broker.host,
        broker.port,
        broker_kind=broker.kind,
    ) as box:
        await asyncio.wait_for(box.bus.connected.wait(), timeout=WAIT_S)
        yield box


@contextlib.asynccontextmanager
async def box_terminal(
    box: Box, make_client: ClientFactory, terminal_id: str
) -> AsyncIterator[Terminal]:
    """Connect terminal ``terminal_id`` with a token of every scope from ``box``."""
    token = box.tokens.issue(terminal_id, ALL_SCOPES, 3600.0).token
    async with make_client(f"terminal-{terminal_id}", "terminal", terminal_id) as bus:
        yield Terminal(bus, token)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A trusted clock that moves only when a test advances it."""
    return ManualClock(time.time())


@pytest.fixture
async def clock_box(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    manual_clock: ManualClock,
) -> AsyncIterator[Box]:
    """The box, running on ``manual_clock`` in place of the system clock."""
    async with running_box(site_config, manual_clock, credentials, mosquitto) as box:
        yield box


@pytest.fixture
async def clock_bar(
    clock_box: Box, make_client: ClientFactory
) -> AsyncIterator[Terminal]:
    """Terminal bar-1 of ``clock_box``, with every scope."""
    async with box_terminal(clock_box, make_client, "bar-1") as bar:
        yield bar


async def request_error(request: Awaitable[Any]) -> RequestError:
    """Await a request that must fail and return its RequestError."""
    with pytest.raises(RequestError) as caught:
        await request
    return caught.value


async def claim(
    bar: Terminal, band: str, drop: str = "tee-drop", **fields: Any
) -> dict[str, Any]:
    return await bar.call("drops", "claim", drop=drop, band=band, **fields)


def stock(box: Box, drop: str = "tee-drop") -> dict[str, int]:
    return box.drops.stock()[drop]


def claim_row(box: Box, claim_id: str) -> dict[str, Any]:
    rows = box.store.query(
        "SELECT status, band, pickup_code, picked_up_at, transaction_id"
        " FROM drop_claims WHERE id = ?",
        (claim_id,),
    )
    assert len(rows) == 1, f"claim {claim_id} has {len(rows)} rows"
    status, band, code, picked_up_at, transaction_id = rows[0]
    return {
        "status": status,
        "band": band,
        "pickup_code": code,
        "picked_up_at": picked_up_at,
        "transaction_id": transaction_id,
    }


def holding(box: Box, band: str, drop: str = "tee-drop") -> int:
    rows = box.store.query(
        "SELECT units FROM drop_holdings WHERE drop_id = ? AND band = ?", (drop, band)
    )
    return int(rows[0][0]) if rows else 0


def events(box: Box, event_type: str) -> list[dict[str, Any]]:
    return [
        json.loads(body)
        for (body,) in box.store.query(
            "SELECT body FROM outbox WHERE type = ? ORDER BY seq", (event_type,)
        )
    ]


async def wait_for_status(box: Box, claim_id: str, status: str) -> None:
    """Wait until the claim has ``status``, failing the test after WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while claim_row(box, claim_id)["status"] != status:
        if time.monotonic() > deadline:
            found = claim_row(box, claim_id)["status"]
            pytest.fail(f"claim {claim_id} is {found}, not {status}, after {WAIT_S} s")
        await asyncio.sleep(0.05)


async def test_claim_reserves_one_unit(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        reply = await claim(bar, "ib-1-1")

    assert reply["status"] == "reserved"
    assert reply["drop"] == "tee-drop"
    assert reply["available"] == TEE_QUANTITY - 1
    assert reply["expires_at"] == pytest.approx(time.time() + 120, abs=5)
    assert stock(box) == {
        "quota": TEE_QUANTITY,
        "available": TEE_QUANTITY - 1,
        "reserved": 1,
        "paid": 0,
    }
    assert claim_row(box, reply["claim"])["status"] == "reserved"
    assert holding(box, "ib-1-1") == 1


async def test_pay_returns_pickup_code(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-1-2", 5000)
        reserved = await claim(bar, "ib-1-2")
        paid = await bar.call("drops", "pay", claim=reserved["claim"])

    assert paid["status"] == "paid"
    assert is_valid_coupon_code(paid["pickup_code"])
    assert paid["amount"] == TEE_PRICE
    assert paid["balance"] == 5000 - TEE_PRICE
    row = claim_row(box, reserved["claim"])
    assert row["status"] == "paid"
    assert row["transaction_id"] == paid["transaction_id"]
    assert box.store.query(
        "SELECT kind, amount, item, drop_claim FROM ledger_transactions WHERE id = ?",
        (paid["transaction_id"],),
    ) == [("charge", TEE_PRICE, "tee", reserved["claim"])]
    assert stock(box)["paid"] == 1
    assert stock(box)["reserved"] == 0
    assert stock(box)["available"] == TEE_QUANTITY - 1


async def test_pickup_recorded_once(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-1-3", 5000)
        paid = await claim(bar, "ib-1-3", pay=True)
        picked = await bar.call("drops", "pickup", code=paid["pickup_code"])
        again = await request_error(
            bar.call("drops", "pickup", code=paid["pickup_code"])
        )

    assert picked["claim"] == paid["claim"]
    assert picked["band"] == "ib-1-3"
    assert picked["drop"] == "tee-drop"
    assert again.code == "already-picked-up"
    assert again.details["picked_up_at"] == picked["picked_up_at"]
    assert claim_row(box, paid["claim"])["picked_up_at"] == picked["picked_up_at"]
    assert len(events(box, "drop_picked_up")) == 1


async def test_pickup_lowercase_code(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-1-4", 5000)
        paid = await claim(bar, "ib-1-4", pay=True)
        picked = await bar.call("drops", "pickup", code=paid["pickup_code"].lower())

    assert picked["claim"] == paid["claim"]


async def test_pickup_unknown_code_refused(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        error = await request_error(bar.call("drops", "pickup", code="ZZZZ-ZZZZ"))

    assert error.code == "unknown-code"
    assert events(box, "drop_picked_up") == []


async def test_claim_with_pay_true(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("merch-1") as merch:
        await top_up(merch, "ib-1-5", 4000)
        reply = await claim(merch, "ib-1-5", pay=True)

    assert reply["status"] == "paid"
    assert reply["available"] == TEE_QUANTITY - 1
    assert is_valid_coupon_code(reply["pickup_code"])
    assert reply["balance"] == 4000 - TEE_PRICE
    assert claim_row(box, reply["claim"])["status"] == "paid"
    assert stock(box)["paid"] == 1


async def test_pay_without_funds_keeps_reservation(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-1-6", 1000)
        reserved = await claim(bar, "ib-1-6")
        error = await request_error(bar.call("drops", "pay", claim=reserved["claim"]))
        status_after_refusal = claim_row(box, reserved["claim"])["status"]
        await top_up(bar, "ib-1-6", 3000)
        paid = await bar.call("drops", "pay", claim=reserved["claim"])

    assert error.code == "insufficient-funds"
    assert error.details["balance"] == 1000
    assert error.details["amount"] == TEE_PRICE
    assert status_after_refusal == "reserved"
    assert paid["status"] == "paid"
    assert paid["balance"] == 4000 - TEE_PRICE


async def test_claim_pay_without_funds_rolls_back(
    box: Box, terminal: TerminalFactory
) -> None:
    # A claim with pay=true is one request, so a refused payment also
    # leaves no reservation behind.
    async with terminal("bar-1") as bar:
        error = await request_error(claim(bar, "ib-1-7", pay=True))

    assert error.code == "insufficient-funds"
    assert stock(box)["available"] == TEE_QUANTITY
    assert stock(box)["reserved"] == 0
    assert holding(box, "ib-1-7") == 0


async def test_cancel_returns_unit(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-2") as bar:
        reserved = await claim(bar, "ib-1-8")
        cancelled = await bar.call("drops", "cancel", claim=reserved["claim"])
        again = await request_error(
            bar.call("drops", "cancel", claim=reserved["claim"])
        )
        pay = await request_error(bar.call("drops", "pay", claim=reserved["claim"]))

    assert cancelled["status"] == "cancelled"
    assert cancelled["available"] == TEE_QUANTITY
    assert stock(box)["available"] == TEE_QUANTITY
    assert stock(box)["reserved"] == 0
    assert holding(box, "ib-1-8") == 0
    assert claim_row(box, reserved["claim"])["status"] == "cancelled"
    assert again.code == "claim-cancelled"
    assert pay.code == "claim-cancelled"
    assert len(events(box, "drop_claim_cancelled")) == 1


async def test_cancel_paid_claim_refused(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-2") as bar:
        await top_up(bar, "ib-1-9", 5000)
        paid = await claim(bar, "ib-1-9", pay=True)
        error = await request_error(bar.call("drops", "cancel", claim=paid["claim"]))
        pay_again = await request_error(bar.call("drops", "pay", claim=paid["claim"]))

    assert error.code == "claim-paid"
    assert pay_again.code == "claim-paid"
    assert claim_row(box, paid["claim"])["status"] == "paid"
    assert stock(box)["available"] == TEE_QUANTITY - 1


async def test_pay_unknown_claim_refused(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        error = await request_error(bar.call("drops", "pay", claim="no-such-claim"))

    assert error.code == "unknown-claim"


@pytest.mark.parametrize("site_config", [SHORT_RESERVATION], indirect=True)
async def test_unpaid_reservation_expires(
    clock_box: Box, clock_bar: Terminal, manual_clock: ManualClock
) -> None:
    claimed_at = manual_clock.now()
    reserved = await claim(clock_bar, "ib-2-1")
    available_while_reserved = stock(clock_box)["available"]

    manual_clock.advance_to(reserved["expires_at"] + 1)
    await wait_for_status(clock_box, reserved["claim"], "expired")

    assert reserved["expires_at"] == pytest.approx(claimed_at + 10, abs=0.01)
    assert available_while_reserved == TEE_QUANTITY - 1
    assert stock(clock_box)["available"] == TEE_QUANTITY
    assert stock(clock_box)["reserved"] == 0
    assert holding(clock_box, "ib-2-1") == 0
    expired = events(clock_box, "drop_claim_expired")
    assert expired == [
        {"band": "ib-2-1", "claim": reserved["claim"], "drop": "tee-drop"}
    ]


@pytest.mark.parametrize("site_config", [SHORT_RESERVATION], indirect=True)
async def test_claim_sweeps_expired_reservations(
    clock_box: Box, clock_bar: Terminal, manual_clock: ManualClock
) -> None:
    # With the sweeper stopped, only the next claim can return the unit.
    await clock_box.drops.stop()
    first = await claim(clock_bar, "ib-2-2")
    manual_clock.advance_to(first["expires_at"] + 1)

    second = await claim(clock_bar, "ib-2-3", timeout_s=AHEAD_TIMEOUT_S)

    assert first["available"] == TEE_QUANTITY - 1
    assert second["available"] == TEE_QUANTITY - 1
    assert claim_row(clock_box, first["claim"])["status"] == "expired"
    assert [event["claim"] for event in events(clock_box, "drop_claim_expired")] == [
        first["claim"]
    ]


@pytest.mark.parametrize("site_config", [SHORT_RESERVATION], indirect=True)
async def test_pay_expired_claim_refused(
    clock_box: Box, clock_bar: Terminal, manual_clock: ManualClock
) -> None:
    await top_up(clock_bar, "ib-2-4", 5000)
    reserved = await claim(clock_bar, "ib-2-4")
    manual_clock.advance_to(reserved["expires_at"] + 1)

    error = await request_error(
        clock_bar.call(
            "drops", "pay", claim=reserved["claim"], timeout_s=AHEAD_TIMEOUT_S
        )
    )

    # A refusal rolls back the handler's writes, the expiry included, so the
    # sweeper is what records it.
    await wait_for_status(clock_box, reserved["claim"], "expired")

    assert error.code == "claim-expired"
    assert error.details["status"] == "expired"
    assert clock_box.store.query(
        "SELECT balance FROM wallets WHERE band = 'ib-2-4'"
    ) == [(5000,)]
    assert stock(clock_box)["available"] == TEE_QUANTITY


async def test_per_guest_limit_reached(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        first = await claim(bar, "ib-3-1")
        second = await claim(bar, "ib-3-1")
        third = await request_error(claim(bar, "ib-3-1"))
        await bar.call("drops", "cancel", claim=first["claim"])
        after_cancel = await claim(bar, "ib-3-1")
        over_again = await request_error(claim(bar, "ib-3-1"))

    assert second["status"] == "reserved"
    assert third.code == "limit-reached"
    assert third.details["limit"] == 2
    assert after_cancel["status"] == "reserved"
    assert over_again.code == "limit-reached"
    assert holding(box, "ib-3-1") == 2
    assert stock(box)["reserved"] == 2
    assert stock(box)["available"] == TEE_QUANTITY - 2


async def test_limit_is_per_guest(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await claim(bar, "ib-3-2")
        await claim(bar, "ib-3-2")
        other = await claim(bar, "ib-3-3")

    assert other["status"] == "reserved"
    assert holding(box, "ib-3-3") == 1


async def test_member_claims_early(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("merch-1") as merch:
        reply = await claim(merch, MEMBER_BAND, drop="vinyl")

    assert reply["status"] == "reserved"
    assert reply["available"] == 9
    assert stock(box, "vinyl")["reserved"] == 1


async def test_non_member_early_refused(box: Box, terminal: TerminalFactory) -> None:
    vinyl = box.config.commerce.drops[1]
    async with terminal("merch-1") as merch:
        error = await request_error(claim(merch, "ib-4-1", drop="vinyl"))

    assert error.code == "members-only"
    assert error.details["opens_at"] == pytest.approx(vinyl.starts_at)
    assert stock(box, "vinyl")["available"] == 10
    assert holding(box, "ib-4-1", "vinyl") == 0


@pytest.mark.parametrize("site_config", [NO_EARLY_ACCESS], indirect=True)
async def test_drop_not_started(box: Box, terminal: TerminalFactory) -> None:
    vinyl = box.config.commerce.drops[1]
    async with terminal("merch-1") as merch:
        member = await request_error(claim(merch, MEMBER_BAND, drop="vinyl"))
        guest = await request_error(claim(merch, "ib-4-2", drop="vinyl"))

    assert member.code == "not-started"
    assert member.details["opens_at"] == pytest.approx(vinyl.starts_at)
    assert guest.code == "not-started"
    assert stock(box, "vinyl")["available"] == 10


@pytest.mark.parametrize("site_config", [ENDED], indirect=True)
async def test_drop_ended(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        error = await request_error(claim(bar, "ib-4-3"))

    assert error.code == "drop-ended"
    assert stock(box)["available"] == TEE_QUANTITY


@pytest.mark.parametrize("site_config", [NO_EARLY_ACCESS], indirect=True)
async def test_start_opens_scheduled_drop(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        before = await request_error(claim(desk, "ib-4-4", drop="vinyl"))
        started = await desk.call("drops", "start", drop="vinyl")
        after = await claim(desk, "ib-4-4", drop="vinyl")
        status = await desk.call("drops", "status", drop="vinyl")

    assert before.code == "not-started"
    assert started == {"drop": "vinyl", "state": "live"}
    assert after["status"] == "reserved"
    assert status["state"] == "live"
    assert status["available"] == 9
    assert events(box, "drop_started") == [{"by": "desk-2", "drop": "vinyl"}]


async def test_stop_closes_drop(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        reserved = await claim(desk, "ib-4-5")
        stopped = await desk.call("drops", "stop", drop="tee-drop")
        error = await request_error(claim(desk, "ib-4-6"))
        status = await desk.call("drops", "status", drop="tee-drop")

    assert stopped == {"drop": "tee-drop", "state": "stopped"}
    assert error.code == "drop-closed"
    assert status["state"] == "stopped"
    assert claim_row(box, reserved["claim"])["status"] == "reserved"
    assert events(box, "drop_stopped") == [{"by": "desk-2", "drop": "tee-drop"}]


async def test_manage_needs_scope(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1", "drops:claim") as bar:
        error = await request_error(bar.call("drops", "stop", drop="tee-drop"))

    assert error.code == "token-wrong-scope"
    assert error.details["reason"] == "wrong-scope"
    assert box.store.query("SELECT state FROM drops WHERE id = 'tee-drop'") == [
        ("scheduled",)
    ]


async def test_pickup_needs_scope(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-4-7", 5000)
        paid = await claim(bar, "ib-4-7", pay=True)
    async with terminal("merch-1", "drops:claim") as merch:
        error = await request_error(
            merch.call("drops", "pickup", code=paid["pickup_code"])
        )

    assert error.code == "token-wrong-scope"
    assert error.details["reason"] == "wrong-scope"
    assert claim_row(box, paid["claim"])["picked_up_at"] is None


@pytest.mark.parametrize("site_config", [QUOTAS], indirect=True)
async def test_quota_limits_box_sales(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        sold = [await claim(bar, f"ib-5-{minor}") for minor in range(3)]
        error = await request_error(claim(bar, "ib-5-9"))

    assert [reply["available"] for reply in sold] == [2, 1, 0]
    assert error.code == "sold-out"
    assert stock(box) == {"quota": 3, "available": 0, "reserved": 3, "paid": 0}
    assert holding(box, "ib-5-9") == 0


@pytest.mark.parametrize("site_config", [QUOTAS], indirect=True)
async def test_lower_quota_keeps_sold_units(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
) -> None:
    clock = ManualClock(time.time())
    async with (
        running_box(site_config, clock, credentials, mosquitto) as first_box,
        box_terminal(first_box, make_client, "bar-1") as bar,
    ):
        await top_up(bar, "ib-5-1", 5000)
        paid = await claim(bar, "ib-5-1", pay=True)
        reserved = [await claim(bar, f"ib-5-{minor}") for minor in (2, 3)]
        token = bar.token

    lowered = drops_site(site_config.data_dir, LOWER_QUOTAS)
    async with (
        running_box(lowered, clock, credentials, mosquitto) as second_box,
        make_client("terminal-bar-1", "terminal", "bar-1") as bus,
    ):
        bar = Terminal(bus, token)
        stock_after_restart = stock(second_box)
        error = await request_error(claim(bar, "ib-5-4"))
        picked = await bar.call("drops", "pickup", code=paid["pickup_code"])
        statuses = {claim_row(second_box, r["claim"])["status"] for r in reserved}

    assert stock_after_restart["reserved"] == 2
    assert stock_after_restart["paid"] == 1
    assert stock_after_restart["available"] == 0
    assert error.code == "sold-out"
    assert picked["claim"] == paid["claim"]
    assert statuses == {"reserved"}


@pytest.mark.parametrize("site_config", [QUOTAS], indirect=True)
async def test_higher_quota_adds_units(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
) -> None:
    clock = ManualClock(time.time())
    async with (
        running_box(site_config, clock, credentials, mosquitto) as first_box,
        box_terminal(first_box, make_client, "bar-1") as bar,
    ):
        for minor in range(3):
            await claim(bar, f"ib-5-{minor}")
        token = bar.token

    raised = drops_site(site_config.data_dir, {"tee-drop": {"quotas": {"box-1": 5}}})
    async with (
        running_box(raised, clock, credentials, mosquitto) as second_box,
        make_client("terminal-bar-1", "terminal", "bar-1") as bus,
    ):
        bar = Terminal(bus, token)
        stock_after_restart = stock(second_box)
        more = [await claim(bar, f"ib-5-{minor}") for minor in (3, 4)]
        error = await request_error(claim(bar, "ib-5-5"))

    assert stock_after_restart == {"quota": 5, "available": 2, "reserved": 3, "paid": 0}
    assert [reply["available"] for reply in more] == [1, 0]
    assert error.code == "sold-out"


# A box restarted with a quota below the units it already sold keeps them
# all, and a unit returned afterwards must not go back on sale above the new
# quota.
@pytest.mark.parametrize("site_config", [QUOTAS], indirect=True)
async def test_lowered_quota_cancel_not_resold(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
) -> None:
    # box-1 had 3 units out when its quota fell to 2. After one cancel it
    # has 2 out, its whole quota, so it must not sell another.
    clock = ManualClock(time.time())
    async with (
        running_box(site_config, clock, credentials, mosquitto) as first_box,
        box_terminal(first_box, make_client, "bar-1") as bar,
    ):
        reserved = [await claim(bar, f"ib-5-{minor}") for minor in range(3)]
        token = bar.token

    lowered = drops_site(site_config.data_dir, LOWER_QUOTAS)
    async with (
        running_box(lowered, clock, credentials, mosquitto) as second_box,
        make_client("terminal-bar-1", "terminal", "bar-1") as bus,
    ):
        bar = Terminal(bus, token)
        await bar.call("drops", "cancel", claim=reserved[0]["claim"])
        error = await request_error(claim(bar, "ib-5-7"))
        stock_after_cancel = stock(second_box)

    assert error.code == "sold-out"
    assert stock_after_cancel["reserved"] + stock_after_cancel["paid"] == 2


async def test_refund_returns_drop_unit(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-6-1", 5000)
        paid = await claim(bar, "ib-6-1", pay=True)
        refund = await bar.call(
            "wallet", "refund", transaction_id=paid["transaction_id"]
        )
        old_code = await request_error(
            bar.call("drops", "pickup", code=paid["pickup_code"])
        )

    assert refund["balance"] == 5000
    row = claim_row(box, paid["claim"])
    assert row["status"] == "cancelled"
    assert row["pickup_code"] is None
    assert old_code.code == "unknown-code"
    assert stock(box)["available"] == TEE_QUANTITY
    assert stock(box)["paid"] == 0
    assert holding(box, "ib-6-1") == 0
    assert [event["claim"] for event in events(box, "drop_claim_cancelled")] == [
        paid["claim"]
    ]


async def test_partial_refund_of_drop_refused(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-6-2", 5000)
        paid = await claim(bar, "ib-6-2", pay=True)
        error = await request_error(
            bar.call(
                "wallet", "refund", transaction_id=paid["transaction_id"], amount=1000
            )
        )

    assert error.code == "over-refund"
    assert claim_row(box, paid["claim"])["status"] == "paid"
    assert stock(box)["available"] == TEE_QUANTITY - 1


async def test_refund_after_pickup_refused(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-6-3", 5000)
        paid = await claim(bar, "ib-6-3", pay=True)
        await bar.call("drops", "pickup", code=paid["pickup_code"])
        error = await request_error(
            bar.call("wallet", "refund", transaction_id=paid["transaction_id"])
        )

    assert error.code == "already-picked-up"
    assert claim_row(box, paid["claim"])["status"] == "paid"
    assert box.store.query(
        "SELECT refunded FROM ledger_transactions WHERE id = ?",
        (paid["transaction_id"],),
    ) == [(0,)]
    assert box.store.query("SELECT balance FROM wallets WHERE band = 'ib-6-3'") == [
        (5000 - TEE_PRICE,)
    ]
    assert stock(box)["available"] == TEE_QUANTITY - 1
