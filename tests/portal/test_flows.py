"""What a guest does on the portal, against a real box: opt in, kit, claim, buy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from portal_site import (
    CONSENT_TEXT,
    DROP_PRICE,
    OPEN_DROP,
    Guest,
    running_portal,
)

from appliance.portal._sessions import SESSION_COOKIE
from appliance.portal.band_codes import band_code, load_band_key

BAND = "ib-1-7"


async def test_optin_stores_contact_with_consent_text(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.opt_in(code)
            optins = site.rows(
                "SELECT band, contact_kind, contact, consent_text FROM optins"
            )
            sessions = site.rows("SELECT band FROM portal_sessions")
    assert page.status == 200
    assert page.url.endswith("/me")
    assert optins == [(BAND, "email", "guest@example.org", CONSENT_TEXT)]
    assert sessions == [(BAND,)]


async def test_optin_with_wallet_id(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.submit(
                "/optin",
                "optin",
                {"band_code": code, "wallet_id": "wallet:42", "consent": "yes"},
            )
            optins = site.rows("SELECT contact_kind, contact FROM optins")
    assert page.url.endswith("/me")
    assert optins == [("wallet", "wallet:42")]


async def test_optin_without_consent_stores_nothing(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.submit(
                "/optin", "optin", {"band_code": code, "email": "guest@example.org"}
            )
            optins = site.rows("SELECT * FROM optins")
    assert page.status == 400
    error = page.dom().by_testid("error")
    assert error[0].attributes["data-field"] == "consent"
    assert "consent" in error[0].text
    assert optins == []
    # The form comes back with the address typed and a fresh token.
    form = page.dom().form("optin")
    assert form.inputs["email"]["value"] == "guest@example.org"
    assert form.hidden["csrf"]


async def test_kit_then_coupon_on_me(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            await guest.opt_in(code)
            before = await guest.get("/me")
            issued = await site.issue_kit(BAND)
            after = await guest.get("/me")
    assert "not yet" in before.dom().testid_text("kit-status")
    assert before.dom().by_testid("coupon") == []
    assert "kit-1" in after.dom().testid_text("kit-status")
    assert "not yet" not in after.dom().testid_text("kit-status")
    assert len(after.dom().by_testid("coupon")) == 1
    assert after.dom().testid_text("coupon-code") == issued["coupon"]["code"]


async def test_optin_after_kit_gives_coupon(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.issue_kit(BAND)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            before = await guest.get("/me")
            after = await guest.submit(
                "/optin", "optin", {"email": "guest@example.org", "consent": "yes"}
            )
            coupons = site.rows(
                "SELECT code, contact FROM coupons WHERE band = ?", (BAND,)
            )
    assert before.dom().by_testid("coupon") == []
    assert "at once" in before.dom().testid_text("coupon-status")
    assert after.url.endswith("/me")
    assert after.dom().by_testid("coupon-status") == []
    assert len(coupons) == 1
    assert coupons[0][1] == "guest@example.org"
    assert after.dom().testid_text("coupon-code") == coupons[0][0]


async def test_coupon_expiry_shows_date(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            await guest.opt_in(code)
            issued = await site.issue_kit(BAND)
            me = await guest.get("/me")
            [(issued_at,)] = site.rows("SELECT issued_at FROM kits")
        zone = ZoneInfo(site.config.commerce.timezone)
    kit_time = dt.datetime.fromtimestamp(issued_at, zone)
    expires = dt.datetime.fromtimestamp(issued["coupon"]["expires_at"], zone)
    # The coupon is valid for days: its date is shown. The kit was tonight.
    assert (
        f"valid until {expires:%a} {expires.day} {expires:%b}, {expires:%H:%M}"
        in me.text
    )
    assert f"({kit_time:%a} {kit_time:%H:%M})" in me.dom().testid_text("kit-status")


async def test_band_sign_in_and_sign_out(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            # Codes are forgiven their case and dashes.
            typed = code.lower().replace("-", "")
            me = await guest.submit("/band", "band", {"band_code": typed})
            signed_in = site.rows("SELECT COUNT(*) FROM portal_sessions")
            out = await guest.submit("/me", "signout", {})
            after = await guest.get("/me")
            signed_out = site.rows("SELECT COUNT(*) FROM portal_sessions")
    assert me.url.endswith("/me")
    assert me.dom().testid_text("balance") == "50.00 EUR"
    assert signed_in == [(1,)]
    assert out.url.endswith("/")
    assert after.url.endswith("/band")
    assert signed_out == [(0,)]


async def test_unknown_band_code_is_rejected(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        site.band_code(BAND)
        # A code of this box's key, but never handed out, opens nothing.
        unregistered = band_code(load_band_key(site.config.data_dir), "ib-9-9")
        async with Guest(site.base_url) as guest:
            page = await guest.submit("/band", "band", {"band_code": unregistered})
            sessions = site.rows("SELECT COUNT(*) FROM portal_sessions")
    assert page.status == 400
    error = page.dom().by_testid("error")[0]
    assert error.attributes["data-field"] == "band_code"
    assert "no band" in error.text
    assert sessions == [(0,)]


async def test_claim_pays_and_shows_pickup_code(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            result = await guest.submit(f"/drops/{OPEN_DROP}", "claim", {})
            stock = await guest.get(f"/drops/{OPEN_DROP}/stock")
            me = await guest.get("/me")
            claims = site.rows(
                "SELECT band, status, terminal, pickup_code FROM drop_claims"
            )
    assert result.status == 200
    assert result.dom().testid_text("claim-result") == "paid"
    pickup = result.dom().testid_text("pickup-code")
    assert len(pickup) == 9
    assert claims == [(BAND, "paid", "portal", pickup.replace("-", ""))]
    assert '"available": 2' in stock.text
    assert me.dom().testid_text("balance") == f"{(5000 - DROP_PRICE) / 100:.2f} EUR"
    assert me.dom().testid_text("claim-pickup-code") == pickup


async def test_claim_with_code_in_form_signs_in(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            result = await guest.submit(
                f"/drops/{OPEN_DROP}", "claim", {"band_code": code}
            )
            me = await guest.get("/me")
    assert result.dom().testid_text("claim-result") == "paid"
    assert me.url.endswith("/me")
    assert me.dom().by_testid("claim")


async def test_claim_without_funds_shows_box_message(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            result = await guest.submit(f"/drops/{OPEN_DROP}", "claim", {})
            claims = site.rows("SELECT COUNT(*) FROM drop_claims")
            stock = await guest.get(f"/drops/{OPEN_DROP}/stock")
    assert result.status == 409
    assert result.dom().testid_text("error") == (
        "your wallet holds 0.00 EUR and this costs 20.00 EUR; top up at the bar "
        "and try again"
    )
    assert result.dom().by_testid("claim-result") == []
    # The form comes back, so the guest can top up and try again.
    assert result.dom().form("claim").hidden["form_id"]
    assert claims == [(0,)]
    assert '"available": 3' in stock.text


async def test_buy_item_with_live_drop_claims_it(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            result = await guest.submit("/items/tee/try-on", "buy", {})
            claims = site.rows("SELECT drop_id, status FROM drop_claims")
    assert result.dom().testid_text("claim-result") == "paid"
    assert result.dom().by_testid("pickup-code")
    assert claims == [(OPEN_DROP, "paid")]


async def test_creator_link_attributes_claim(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            landing = await guest.get("/c/maya")
            await guest.submit("/band", "band", {"band_code": code})
            await guest.submit(f"/drops/{OPEN_DROP}", "claim", {})
            claims = site.rows("SELECT creator FROM drop_claims")
    assert landing.url.endswith("/drops")
    assert claims == [("maya",)]


async def test_session_expires(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            with site.box.store.transaction() as transaction:
                transaction.execute("UPDATE portal_sessions SET expires_at = 0")
            page = await guest.get("/me")
            cookies = {cookie.key for cookie in guest.session.cookie_jar}
    assert page.url.endswith("/band")
    assert SESSION_COOKIE in cookies


async def test_portal_token_is_renewed(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        first = await guest.get(f"/drops/{OPEN_DROP}/stock")
        tokens = site.rows("SELECT id FROM edge_tokens WHERE subject = 'portal'")
        site.box.tokens.revoke(tokens[0][0], "test")
        site.portal._pages._status_cache.clear()
        second = await guest.get(f"/drops/{OPEN_DROP}/stock")
        renewed = site.rows("SELECT COUNT(*) FROM edge_tokens WHERE subject = 'portal'")
    assert first.status == 200
    assert second.status == 200
    assert renewed == [(2,)]
    assert site.portal.terminal.renewals == 2


async def test_portal_state_in_box_status(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        async with Guest(site.base_url) as guest:
            await guest.get("/")
            await guest.get("/nothing")
        status = site.box.status()["portal"]
        port = site.portal.port
    assert status["listening"] is True
    assert status["port"] == port
    assert status["served"]["/ 2xx"] == 1
    assert status["rejections"]["not-found"] == 1


async def test_sign_in_as_other_band_ends_session(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        first = site.band_code(BAND)
        second = site.band_code("ib-1-8")
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": first})
            await guest.submit("/band", "band", {"band_code": second})
            sessions = site.rows("SELECT band FROM portal_sessions")
    assert sessions == [("ib-1-8",)]
