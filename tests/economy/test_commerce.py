"""Creator codes and figures, members and partner offers on a running box.

The economy test site has creators maya (code MAYA, playing set "set-maya"
now) and kofi (code KOFI), member band ib-1-900 of tier gold, and a Hotel
Nord offer with the codes HOTEL-001 and HOTEL-002. The kit station kit-1
logs in as a reader and the desk as terminal desk-2.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from conftest import ClientFactory
from economy_site import (
    MEMBER_BAND,
    Terminal,
    TerminalFactory,
    economy_commerce,
    economy_site_config,  # noqa: F401
    terminal_fixture,  # noqa: F401
    top_up,
)

from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.commerce.config import parse_commerce
from appliance.config import SiteConfig
from appliance.errors import RequestError
from appliance.kits import is_valid_coupon_code
from appliance.runtime import Box
from appliance.studio.overlays import overlay_lines, read_overlay_state

TIMEOUT_S = 10.0
EMAIL = "night.owl@example.org"
CONSENT = "Send me one follow-up offer after tonight."
HOTEL_TITLE = "Recovery microcation at Hotel Nord"

FiguresCheck = Callable[[dict[str, Any]], bool]


async def request_error(request: Awaitable[Any]) -> RequestError:
    """Await a request that must fail and return its RequestError."""
    with pytest.raises(RequestError) as caught:
        await request
    return caught.value


async def opt_in(desk: Terminal, band: str) -> dict[str, Any]:
    return await desk.call(
        "optin",
        "register",
        band=band,
        consent=True,
        consent_text=CONSENT,
        email=EMAIL,
    )


async def issue_kit(station: Bus, band: str) -> dict[str, Any]:
    data = {"station": "kit-1", "band": band, "idempotency_key": uuid.uuid4().hex}
    topic = station.topics.api("kits", "issue")
    return await station.request(topic, data, timeout_s=TIMEOUT_S)


async def redeem(desk: Terminal, code: str) -> dict[str, Any]:
    return await desk.call("offers", "redeem", code=code)


@pytest.fixture
async def station(make_client: ClientFactory) -> AsyncIterator[Bus]:
    """The kit station kit-1, a reader that sends no token."""
    async with make_client("reader-kit-1", "reader", "kit-1") as client:
        yield client


@pytest.fixture
async def desk(terminal: TerminalFactory) -> AsyncIterator[Terminal]:
    """The desk terminal desk-2, allowed to record opt-ins and redeem offers."""
    async with terminal("desk-2", "optin:register", "offers:redeem") as client:
        yield client


class FiguresInbox:
    """The latest retained figures of each creator that an observer received."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self._arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        creator = incoming.topic.split("/")[-2]
        self.latest[creator] = envelope.decode(incoming.payload).data
        self._arrived.set()

    async def wait_for(self, creator: str, check: FiguresCheck) -> dict[str, Any]:
        """Return the figures of ``creator`` once ``check`` accepts them."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while not (creator in self.latest and check(self.latest[creator])):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            pytest.fail(
                f"no matching figures of {creator} within {TIMEOUT_S} s; "
                f"latest: {self.latest.get(creator)}"
            )
        return self.latest[creator]


@contextlib.asynccontextmanager
async def figures_observer(
    make_client: ClientFactory, device_id: str
) -> AsyncIterator[FiguresInbox]:
    """Subscribe an observer to every creator's figures."""
    inbox = FiguresInbox()
    async with make_client(
        "observer", "observer", device_id, announce=False, wait=False
    ) as observer:
        observer.subscribe(
            f"{observer.topics.prefix}/creators/+/figures", inbox.on_message
        )
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        yield inbox


def set_figures(set_id: str, expected: dict[str, Any]) -> FiguresCheck:
    """Return a check that the figures of ``set_id`` equal ``expected``."""

    def check(figures: dict[str, Any]) -> bool:
        return bool(figures["sets"].get(set_id) == expected)

    return check


def test_creator_link_uses_code() -> None:
    commerce = economy_commerce(time.time())
    maya = commerce.creators[0]
    custom = dataclasses.replace(commerce, portal_url="https://club.example/")

    assert commerce.creator_link(maya) == "http://nightbox.local/c/MAYA"
    assert custom.creator_link(maya) == "https://club.example/c/MAYA"


def test_creator_by_code_any_case() -> None:
    commerce = economy_commerce(time.time())

    for code in ("MAYA", "maya", "Maya"):
        creator = commerce.creator_by_code(code)
        assert creator is not None, code
        assert creator.id == "maya", code
    kofi = commerce.creator_by_code("kofi")
    assert kofi is not None
    assert kofi.id == "kofi"
    assert commerce.creator_by_code("NOBODY") is None


def test_creator_code_parsed_uppercase() -> None:
    raw = {"creators": [{"id": "maya", "name": "Maya", "code": "maya-23"}]}

    commerce = parse_commerce(raw, {}, "box-1")

    assert commerce.creators[0].code == "MAYA-23"
    assert commerce.creator_link(commerce.creators[0]).endswith("/c/MAYA-23")


async def test_charge_credits_creator_code(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-1-1", 5000)
        coded = await bar.call(
            "wallet",
            "charge",
            band="ib-1-1",
            item="beer",
            quantity=2,
            amount=900,
            currency="EUR",
            creator="maya",
        )
        plain = await bar.call(
            "wallet",
            "charge",
            band="ib-1-1",
            item="beer",
            quantity=1,
            amount=450,
            currency="EUR",
        )

    query = "SELECT creator, set_id FROM ledger_transactions WHERE id = ?"
    assert box.store.query(query, (coded["transaction_id"],)) == [("maya", "set-maya")]
    assert box.store.query(query, (plain["transaction_id"],)) == [(None, "set-maya")]


async def test_unknown_creator_code_rejected(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, "ib-1-2", 5000)
        error = await request_error(
            bar.call(
                "wallet",
                "charge",
                band="ib-1-2",
                item="beer",
                quantity=1,
                amount=450,
                currency="EUR",
                creator="NOBODY",
            )
        )

    assert error.code == "invalid-request"
    assert "creator" in error.message
    assert box.store.query(
        "SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'charge'"
    ) == [(0,)]


async def test_drop_claim_credits_creator(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("merch-1") as merch:
        await top_up(merch, "ib-1-3", 5000)
        tee = await merch.call(
            "drops", "claim", drop="tee-drop", band="ib-1-3", pay=True
        )
        coded = await merch.call(
            "drops", "claim", drop="tee-drop", band="ib-1-4", creator="kofi"
        )
        vinyl = await merch.call("drops", "claim", drop="vinyl", band=MEMBER_BAND)

    query = "SELECT creator, set_id FROM drop_claims WHERE id = ?"
    # tee-drop is maya's drop; a creator code given with the claim wins.
    assert box.store.query(query, (tee["claim"],)) == [("maya", "set-maya")]
    assert box.store.query(query, (coded["claim"],)) == [("kofi", "set-maya")]
    assert box.store.query(query, (vinyl["claim"],)) == [(None, "set-maya")]
    assert box.store.query(
        "SELECT creator FROM ledger_transactions WHERE id = ?",
        (tee["transaction_id"],),
    ) == [("maya",)]


async def buy_beer(bar: Terminal, bands: list[str], creator: str = "MAYA") -> list[str]:
    """Top up each band and sell it one beer with ``creator``'s code."""
    transactions = []
    for band in bands:
        await top_up(bar, band, 5000)
        sale = await bar.call(
            "wallet",
            "charge",
            band=band,
            item="beer",
            quantity=1,
            amount=450,
            currency="EUR",
            creator=creator,
        )
        transactions.append(sale["transaction_id"])
    return transactions


async def claim_tees(merch: Terminal, bands: list[str], *, pay: bool) -> None:
    """Top up each band and claim one tee of maya's drop, paid or reserved."""
    for band in bands:
        await top_up(merch, band, 5000)
        await merch.call("drops", "claim", drop="tee-drop", band=band, pay=pay)


def bands(row: int, count: int) -> list[str]:
    return [f"ib-{row}-{minor}" for minor in range(1, count + 1)]


async def test_four_buyers_suppressed(
    box: Box, terminal: TerminalFactory, make_client: ClientFactory
) -> None:
    expected = {
        "sales": None,
        "revenue": None,
        "claims": 0,
        "claims_paid": 0,
        "suppressed": True,
    }
    async with (
        figures_observer(make_client, "test") as inbox,
        terminal("bar-1") as bar,
    ):
        await buy_beer(bar, bands(2, 4))
        published = await inbox.wait_for("maya", set_figures("set-maya", expected))
        kofi = inbox.latest.get("kofi")

    assert box.figures.figures("maya")["sets"] == {"set-maya": expected}
    assert published["creator"] == "maya"
    assert published["currency"] == "EUR"
    assert published["night"] == box.config.commerce.night_of(time.time())
    assert list(published["sets"]) == ["set-maya"]
    assert kofi is not None
    assert kofi["sets"] == {}


async def test_five_buyers_shown(
    box: Box, terminal: TerminalFactory, make_client: ClientFactory
) -> None:
    async with (
        figures_observer(make_client, "test") as inbox,
        terminal("bar-1") as bar,
    ):
        sales = await buy_beer(bar, bands(2, 5))
        after_sales = await inbox.wait_for(
            "maya",
            set_figures(
                "set-maya",
                {
                    "sales": 5,
                    "revenue": 2250,
                    "claims": 0,
                    "claims_paid": 0,
                    "suppressed": False,
                },
            ),
        )
        await bar.call("wallet", "refund", transaction_id=sales[0])
        # The refunded guest still bought, so five guests stand behind the set.
        after_refund = await inbox.wait_for(
            "maya",
            set_figures(
                "set-maya",
                {
                    "sales": 5,
                    "revenue": 1800,
                    "claims": 0,
                    "claims_paid": 0,
                    "suppressed": False,
                },
            ),
        )

    assert after_sales["creator"] == "maya"
    assert list(after_refund["sets"]) == ["set-maya"]


async def test_voided_sale_leaves_group(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        sales = await buy_beer(bar, bands(2, 5))
        await bar.call("wallet", "void", transaction_id=sales[0])

    assert box.figures.figures("maya")["sets"]["set-maya"] == {
        "sales": None,
        "revenue": None,
        "claims": 0,
        "claims_paid": 0,
        "suppressed": True,
    }


async def test_guests_counted_not_sales(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await buy_beer(bar, bands(2, 4))
        # A second sale to a guest already counted adds no guest.
        await buy_beer(bar, ["ib-2-1"])

    assert box.figures.figures("maya")["sets"]["set-maya"]["sales"] is None


async def test_claims_of_four_guests_suppressed(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("merch-1") as merch:
        await claim_tees(merch, bands(4, 4), pay=True)

    assert box.figures.figures("maya")["sets"]["set-maya"] == {
        "sales": None,
        "revenue": None,
        "claims": None,
        "claims_paid": None,
        "suppressed": True,
    }


async def test_claims_of_five_guests_shown(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("merch-1") as merch:
        await claim_tees(merch, bands(4, 5), pay=True)

    assert box.figures.figures("maya")["sets"]["set-maya"] == {
        "sales": 5,
        "revenue": 17500,
        "claims": 5,
        "claims_paid": 5,
        "suppressed": False,
    }


async def test_paid_claims_hidden_from_subtraction(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("merch-1") as merch:
        await claim_tees(merch, bands(4, 5), pay=True)
        await claim_tees(merch, ["ib-4-6"], pay=False)
    reserved = box.figures.figures("maya")["sets"]["set-maya"]
    async with terminal("bar-1") as bar:
        await buy_beer(bar, ["ib-4-7"])
    beer_sold = box.figures.figures("maya")["sets"]["set-maya"]

    # claims - claims_paid would give the one reserving guest's claim back.
    # Hiding claims_paid alone is not enough: it equals sales, because every
    # sale paid for a claim.
    assert reserved == {
        "sales": 5,
        "revenue": 17500,
        "claims": None,
        "claims_paid": 5,
        "suppressed": True,
    }
    # sales - claims_paid would give the one beer buyer's sale back.
    assert beer_sold == {
        "sales": 6,
        "revenue": 17950,
        "claims": 6,
        "claims_paid": None,
        "suppressed": True,
    }


async def test_overlay_sales_follow_suppression(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        await buy_beer(bar, bands(6, 4))
        four = read_overlay_state(box, None)
        await buy_beer(bar, ["ib-6-5"])
        five = read_overlay_state(box, None)

    assert four.sales is None
    assert four.revenue_minor is None
    assert overlay_lines(four)[-1] == "Sales this set: fewer than 5 buyers so far"
    assert five.sales == 5
    assert five.revenue_minor == 2250
    assert overlay_lines(five)[-1] == "Sales this set: 5 (EUR 22.50)"


async def test_creator_figures_retained(
    box: Box, terminal: TerminalFactory, make_client: ClientFactory
) -> None:
    expected = {
        "sales": 5,
        "revenue": 17500,
        "claims": 5,
        "claims_paid": 5,
        "suppressed": False,
    }
    async with figures_observer(make_client, "live") as live:
        async with terminal("merch-1") as merch:
            await claim_tees(merch, bands(5, 5), pay=True)
        await live.wait_for("maya", set_figures("set-maya", expected))

    # An observer that subscribes later gets the figures from the broker.
    async with figures_observer(make_client, "late") as late:
        retained = await late.wait_for("maya", lambda figures: True)

    assert retained["sets"] == {"set-maya": expected}


async def test_members_from_config(box: Box) -> None:
    assert box.store.query("SELECT band, tier, source FROM members") == [
        (MEMBER_BAND, "gold", "config")
    ]


async def test_partner_codes_follow_kits(
    box: Box, desk: Terminal, station: Bus, site_config: SiteConfig
) -> None:
    left_before = box.status()["partner_codes_left"]
    coupons = []
    left_after = []
    for minor in (1, 2, 3):
        band = f"ib-3-{minor}"
        await opt_in(desk, band)
        coupons.append((await issue_kit(station, band))["coupon"])
        left_after.append(box.status()["partner_codes_left"])

    assert left_before == {"hotel": 2}
    assert [coupon["code"] for coupon in coupons[:2]] == ["HOTEL-001", "HOTEL-002"]
    for coupon in coupons[:2]:
        assert coupon["offer"] == HOTEL_TITLE
        assert coupon["partner"] == "Hotel Nord"
    assert is_valid_coupon_code(coupons[2]["code"])
    assert coupons[2]["offer"] == site_config.coupon_offer
    assert "partner" not in coupons[2]
    assert left_after == [{"hotel": 1}, {"hotel": 0}, {"hotel": 0}]
    assert box.store.query("SELECT code, band FROM partner_codes ORDER BY code") == [
        ("HOTEL-001", "ib-3-1"),
        ("HOTEL-002", "ib-3-2"),
    ]
    assert box.store.query(
        "SELECT COUNT(*) FROM outbox WHERE type = 'partner_code_issued'"
    ) == [(2,)]


async def test_no_partner_code_without_optin(box: Box, station: Bus) -> None:
    reply = await issue_kit(station, "ib-3-4")

    assert reply["coupon"] is None
    assert box.status()["partner_codes_left"] == {"hotel": 2}


async def test_partner_code_redeemed_once(
    box: Box, desk: Terminal, station: Bus
) -> None:
    await opt_in(desk, "ib-3-5")
    coupon = (await issue_kit(station, "ib-3-5"))["coupon"]

    redeemed = await redeem(desk, coupon["code"].lower())
    again = await request_error(redeem(desk, coupon["code"]))
    unissued = await request_error(redeem(desk, "HOTEL-002"))
    unknown = await request_error(redeem(desk, "HOTEL-999"))

    assert coupon["code"] == "HOTEL-001"
    assert redeemed["code"] == "HOTEL-001"
    assert redeemed["offer"] == "hotel"
    assert redeemed["band"] == "ib-3-5"
    assert again.code == "already-redeemed"
    assert again.details["redeemed_at"] == redeemed["redeemed_at"]
    assert unissued.code == "not-issued"
    assert unknown.code == "unknown-code"
    assert box.store.query(
        "SELECT redeemed_by FROM partner_codes WHERE code = 'HOTEL-001'"
    ) == [("desk-2",)]
    assert box.store.query(
        "SELECT COUNT(*) FROM outbox WHERE type = 'partner_code_redeemed'"
    ) == [(1,)]


async def test_redeem_needs_scope(
    box: Box, desk: Terminal, station: Bus, terminal: TerminalFactory
) -> None:
    await opt_in(desk, "ib-3-6")
    coupon = (await issue_kit(station, "ib-3-6"))["coupon"]
    async with terminal("bar-2", "pos:charge") as bar:
        error = await request_error(redeem(bar, coupon["code"]))

    assert error.code == "token-wrong-scope"
    assert error.details["reason"] == "wrong-scope"
    assert box.store.query(
        "SELECT redeemed_at FROM partner_codes WHERE code = ?", (coupon["code"],)
    ) == [(None,)]
