"""The try-on page's one-tap purchase: only through an open drop of the item.

Every purchase from the phone is a drop claim with a pick-up code. The
button claims from an open drop of the item that has units left for the
guest, and an item without such a drop is not sold from the phone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from portal_site import (
    LATER_DROP,
    OPEN_DROP,
    Guest,
    PortalSite,
    running_portal,
)

from appliance.commerce.config import DropConfig
from appliance.portal._terminal import SCOPES

BAND = "ib-1-7"
OTHER_BANDS = ("ib-1-20", "ib-1-21", "ib-1-22")
LATE_DROP = "tee-late"
LATE_PRICE = 2500


def add_late_tee_drop(site: PortalSite) -> None:
    """Add a second tee drop, open now, with two units at 25.00 EUR."""
    now = time.time()
    site.add_drop(
        DropConfig(
            LATE_DROP, "tee", LATE_PRICE, 2, starts_at=now - 60, ends_at=now + 3600
        )
    )


async def sell_out_open_drop(site: PortalSite) -> None:
    """Let three other guests claim the three units of the open tee drop."""
    for band in OTHER_BANDS:
        await site.top_up(band, 5000)
        await site.claim(OPEN_DROP, band)


@contextlib.asynccontextmanager
async def signed_in_guest(
    site: PortalSite, balance: int = 10_000
) -> AsyncIterator[Guest]:
    """Yield a browser signed in as BAND, whose wallet contains ``balance``."""
    await site.top_up(BAND, balance)
    async with Guest(site.base_url) as guest:
        page = await guest.submit("/band", "band", {"band_code": site.band_code(BAND)})
        assert page.url.endswith("/me"), page.text[:300]
        yield guest


def charges(site: PortalSite) -> list[tuple[object, ...]]:
    return site.rows(
        "SELECT band, item, amount FROM ledger_transactions WHERE kind = 'charge'"
    )


async def test_try_on_before_drop_opens_sells_nothing(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, signed_in_guest(site) as guest:
        page = await guest.get("/items/cap/try-on")
        # The later drop's page still has a form, whose token is valid here.
        hidden = (await guest.get(f"/drops/{LATER_DROP}")).dom().form("claim").hidden
        result = await guest.post("/items/cap/buy", hidden)
        claims = site.rows("SELECT COUNT(*) FROM drop_claims")
        sold = charges(site)
    assert page.dom().by_id("buy") is None
    assert page.dom().testid_text("offer-state").startswith("The drop opens ")
    assert result.status == 409
    assert result.dom().testid_text("error").startswith("this drop is not open yet")
    assert claims == [(0,)]
    assert sold == []


async def test_try_on_of_closed_drop_sells_nothing(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        await site.staff("drops", "stop", {"drop": OPEN_DROP}, "drops:manage")
        async with signed_in_guest(site) as guest:
            page = await guest.get("/items/tee/try-on")
            hidden = (
                (await guest.get(f"/drops/{LATER_DROP}")).dom().form("claim").hidden
            )
            result = await guest.post("/items/tee/buy", hidden)
            sold = charges(site)
    assert page.dom().by_id("buy") is None
    assert (
        page.dom().testid_text("offer-state") == "The venue has closed tonight's drop."
    )
    assert result.status == 409
    assert result.dom().testid_text("error") == "the venue has closed this drop"
    assert sold == []


async def test_try_on_of_sold_out_drop_says_so(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        await sell_out_open_drop(site)
        async with signed_in_guest(site) as guest:
            page = await guest.get("/items/tee/try-on")
            hidden = (
                (await guest.get(f"/drops/{LATER_DROP}")).dom().form("claim").hidden
            )
            result = await guest.post("/items/tee/buy", hidden)
            mine = site.rows("SELECT COUNT(*) FROM drop_claims WHERE band = ?", (BAND,))
    assert page.dom().by_id("buy") is None
    assert page.dom().testid_text("offer-state").startswith("Sold out")
    assert result.status == 409
    assert result.dom().testid_text("error") == (
        "sold out: every unit of this drop is taken"
    )
    # Trying the same form again cannot help, so no form comes back.
    assert result.dom().by_id("buy") is None
    assert mine == [(0,)]


async def test_buy_claims_next_drop_with_units(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        add_late_tee_drop(site)
        await sell_out_open_drop(site)
        async with signed_in_guest(site) as guest:
            page = await guest.get("/items/tee/try-on")
            result = await guest.submit("/items/tee/try-on", "buy", {})
            me = await guest.get("/me")
            claims = site.rows(
                "SELECT drop_id, status FROM drop_claims WHERE band = ?", (BAND,)
            )
    assert page.dom().form("buy").action == "/items/tee/buy"
    assert "25.00 EUR" in page.text
    assert result.status == 200
    assert result.dom().testid_text("claim-result") == "paid"
    code = result.dom().testid_text("pickup-code")
    assert claims == [(LATE_DROP, "paid")]
    assert me.dom().testid_text("claim-pickup-code") == code


async def test_buy_skips_drop_at_guest_limit(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        add_late_tee_drop(site)
        async with signed_in_guest(site) as guest:
            await site.claim(OPEN_DROP, BAND)
            result = await guest.submit("/items/tee/try-on", "buy", {})
            claims = site.rows(
                "SELECT drop_id FROM drop_claims WHERE band = ? ORDER BY drop_id",
                (BAND,),
            )
    assert result.dom().testid_text("claim-result") == "paid"
    assert claims == [(OPEN_DROP,), (LATE_DROP,)]


async def test_try_on_at_guest_limit(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, signed_in_guest(site) as guest:
        await site.claim(OPEN_DROP, BAND)
        page = await guest.get("/items/tee/try-on")
    assert page.dom().by_id("buy") is None
    assert (
        page.dom()
        .testid_text("offer-state")
        .startswith("You already hold the most one guest may claim")
    )


async def test_item_without_drop_is_sold_at_bar(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, signed_in_guest(site) as guest:
        page = await guest.get("/items/poster/try-on")
        hidden = (await guest.get(f"/drops/{OPEN_DROP}")).dom().form("claim").hidden
        result = await guest.post("/items/poster/buy", hidden)
        sold = charges(site)
    assert page.status == 200
    assert page.dom().by_id("buy") is None
    assert "sold at the bar" in page.dom().testid_text("offer-state")
    assert result.status == 409
    assert "buy it at the bar" in result.dom().testid_text("error")
    assert sold == []


async def test_double_tap_buys_once_across_new_drop(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, signed_in_guest(site) as guest:
        form = (await guest.get("/items/tee/try-on")).dom().form("buy")
        first = await guest.post(form.action, form.hidden)
        # A drop that opens between two taps of one form sells nothing more.
        add_late_tee_drop(site)
        second = await guest.post(form.action, form.hidden)
        count = site.rows("SELECT COUNT(*) FROM drop_claims")
        again = await guest.submit("/items/tee/try-on", "buy", {})
        claims = site.rows("SELECT drop_id FROM drop_claims ORDER BY drop_id")
    code = first.dom().testid_text("pickup-code")
    assert second.dom().testid_text("pickup-code") == code
    assert count == [(1,)]
    # A new page is a new purchase, here from the drop that opened.
    assert again.dom().testid_text("pickup-code") != code
    assert claims == [(OPEN_DROP,), (LATE_DROP,)]


async def test_portal_token_has_no_wallet_scope(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        await site.top_up(BAND, 5000)
        reply = await site.portal.terminal.call(
            "wallet",
            "charge",
            {
                "band": BAND,
                "item": "poster",
                "quantity": 1,
                "amount": 1500,
                "currency": "EUR",
                "idempotency_key": "portal-charge-1",
            },
        )
        sold = charges(site)
    assert "pos:charge" not in SCOPES
    assert reply["ok"] is False
    assert reply["error"]["code"] == "token-wrong-scope"
    assert sold == []
