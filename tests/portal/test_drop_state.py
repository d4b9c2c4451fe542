"""A drop's state: the same on its page, in the drops list and in the stock JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

from portal_site import (
    EARLY_MEMBER,
    LATER_DROP,
    OPEN_DROP,
    Dom,
    Element,
    Guest,
    Page,
    running_portal,
)

from appliance.commerce.config import CommerceConfig, DropConfig
from appliance.portal._drop_offers import drop_state
from appliance.portal._format import night_time

ENDED_DROP = "tee-old"
EARLY_DROP = "tee-crew"
OLD_DROP = "tee-may"
TOMORROW_DROP = "tee-tomorrow"
LONG_DROP = "cap-season"
BAND = "ib-1-30"
DAY_S = 86400.0
HALF_YEAR_S = 183 * DAY_S
SOLD_OUT_BANDS = ("ib-1-20", "ib-1-21", "ib-1-22")
# Thu 28 May 2026, 20:00 in Europe/Berlin.
THURSDAY_EVENING = 1779991200.0


def test_drop_state_follows_claim_rules() -> None:
    drop = DropConfig("d", "tee", 100, 5, starts_at=100.0, ends_at=200.0)
    assert drop_state(drop, {"state": "scheduled", "available": 5}, 50.0) == (
        "scheduled"
    )
    assert drop_state(drop, {"state": "live", "available": 5}, 50.0) == "open"
    assert drop_state(drop, {"state": "scheduled", "available": 5}, 150.0) == "open"
    assert drop_state(drop, {"state": "scheduled", "available": 0}, 150.0) == (
        "sold-out"
    )
    assert drop_state(drop, {"state": "scheduled", "available": 5}, 200.0) == "ended"
    assert drop_state(drop, {"state": "stopped", "available": 5}, 150.0) == "stopped"


def test_night_time_shows_year_when_far() -> None:
    commerce = CommerceConfig(timezone="Europe/Berlin")
    # Tue 28 Dec 2027, 13:20 in Europe/Berlin.
    next_year = 1829996400.0
    # Sun 29 Nov 2026, 19:00 (winter time): the same year, but six months later.
    half_year = THURSDAY_EVENING + 185 * 86400
    # Sat 2 Jan 2027, 12:00: a month after half_year, but in another year.
    new_year = 1798887600.0
    assert night_time(next_year, commerce, THURSDAY_EVENING) == "Tue 28 Dec 2027, 13:20"
    assert night_time(half_year, commerce, THURSDAY_EVENING) == "Sun 29 Nov 2026, 19:00"
    assert night_time(new_year, commerce, half_year) == "Sat 2 Jan 2027, 12:00"
    assert night_time(half_year, commerce, half_year - 30 * 86400) == (
        "Sun 29 Nov, 19:00"
    )


def test_night_time_shows_date_of_other_nights() -> None:
    commerce = CommerceConfig(timezone="Europe/Berlin")
    week_later = THURSDAY_EVENING + 7 * 86400 + 41 * 60
    after_midnight = THURSDAY_EVENING + 5 * 3600
    assert night_time(THURSDAY_EVENING, commerce, THURSDAY_EVENING) == "Thu 20:00"
    assert night_time(week_later, commerce, THURSDAY_EVENING) == "Thu 4 Jun, 20:41"
    # 01:00 on Friday still belongs to Thursday's night.
    assert night_time(after_midnight, commerce, THURSDAY_EVENING) == "Fri 01:00"


async def test_stock_state_matches_page(tmp_path: Path) -> None:
    now = time.time()
    async with running_portal(tmp_path) as site:
        site.add_drop(
            DropConfig(
                ENDED_DROP, "tee", 1000, 2, starts_at=now - 7200, ends_at=now - 3600
            )
        )
        for band in SOLD_OUT_BANDS:
            await site.top_up(band, 5000)
            await site.claim(OPEN_DROP, band)
        async with Guest(site.base_url) as guest:
            drops = await guest.get("/drops")
            pages = {}
            stock = {}
            for drop in (OPEN_DROP, LATER_DROP, ENDED_DROP):
                pages[drop] = await guest.get(f"/drops/{drop}")
                stock[drop] = await guest.get(f"/drops/{drop}/stock")
    expected = {OPEN_DROP: "sold-out", LATER_DROP: "scheduled", ENDED_DROP: "ended"}
    listed = {
        element.attributes["data-state"]
        for element in drops.dom().elements
        if "data-state" in element.attributes
    }
    assert listed == set(expected.values())
    for drop, state in expected.items():
        dom = pages[drop].dom()
        figures = json.loads(stock[drop].text)
        assert figures["state"] == state
        assert figures["state_text"] == dom.testid_text("drop-state")
        [element] = dom.by_testid("drop-state")
        assert element.attributes["data-state"] == state
    assert pages[OPEN_DROP].dom().testid_text("drop-state") == "sold out"
    assert pages[ENDED_DROP].dom().testid_text("drop-state") == "ended"
    assert pages[LATER_DROP].dom().testid_text("drop-state").startswith("opens ")
    # No claim is offered where none can succeed. The form is hidden until
    # the stock JSON that the page's script reads reports the drop open.
    for drop in expected:
        form = pages[drop].dom().by_id("claim")
        assert form is not None
        assert "hidden" in form.attributes
        assert form.attributes["data-drop-states"] == "open"


async def test_stopped_drop_state(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        await site.staff("drops", "stop", {"drop": LATER_DROP}, "drops:manage")
        await site.staff("drops", "start", {"drop": OPEN_DROP}, "drops:manage")
        async with Guest(site.base_url) as guest:
            stopped = await guest.get(f"/drops/{LATER_DROP}/stock")
            started = await guest.get(f"/drops/{OPEN_DROP}/stock")
            page = await guest.get(f"/drops/{LATER_DROP}")
    assert json.loads(stopped.text) == {
        "available": 5,
        "quota": 5,
        "state": "stopped",
        "state_text": "closed by the venue",
    }
    assert json.loads(started.text)["state"] == "open"
    assert json.loads(started.text)["state_text"].startswith("open until ")
    assert page.dom().testid_text("drop-state") == "closed by the venue"
    assert "hidden" in _claim_form(page).attributes
    assert _visible_hints(page) == ["claim-closed"]


def _claim_form(page: Page) -> Element:
    form = page.dom().by_id("claim")
    assert form is not None, "no form#claim on the page"
    return form


def _visible_hints(page: Page) -> list[str]:
    """Return the data-testid of every claim hint the page shows at load."""
    dom = page.dom()
    return [
        element.attributes["data-testid"]
        for testid in ("claim-later", "claim-closed")
        for element in dom.by_testid(testid)
        if "hidden" not in element.attributes
    ]


async def test_scheduled_drop_page_hides_form(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.get(f"/drops/{LATER_DROP}")
            form = page.dom().form("claim")
            claim = await guest.post(form.action, {**form.hidden, "band_code": code})
    assert page.dom().testid_text("drop-state").startswith("opens ")
    assert "hidden" in _claim_form(page).attributes
    assert _visible_hints(page) == ["claim-later"]
    # The box still rejects a post of the hidden form.
    assert claim.status == 409
    assert "not open yet" in claim.dom().testid_text("error")


async def test_open_drop_page_shows_form(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get(f"/drops/{OPEN_DROP}")
    assert "hidden" not in _claim_form(page).attributes
    assert _visible_hints(page) == []


def _early_drop(now: float) -> tuple[DropConfig, ...]:
    """Return a drop that opens in 30 minutes, with early access from an hour before."""
    return (
        DropConfig(
            EARLY_DROP,
            "tee",
            1000,
            2,
            starts_at=now + 1800,
            ends_at=now + 3600,
            early_access_s=3600,
        ),
    )


async def test_early_member_sees_form_first(tmp_path: Path) -> None:
    async with running_portal(tmp_path, extra_drops=_early_drop) as site:
        member_code = site.band_code(EARLY_MEMBER)
        guest_code = site.band_code(BAND)
        await site.top_up(EARLY_MEMBER, 5000)
        async with Guest(site.base_url) as member, Guest(site.base_url) as guest:
            await member.submit("/band", "band", {"band_code": member_code})
            await guest.submit("/band", "band", {"band_code": guest_code})
            member_page = await member.get(f"/drops/{EARLY_DROP}")
            guest_page = await guest.get(f"/drops/{EARLY_DROP}")
            claim = await member.submit(f"/drops/{EARLY_DROP}", "claim", {})
    member_form = _claim_form(member_page)
    assert "hidden" not in member_form.attributes
    assert member_form.attributes["data-drop-states"] == "scheduled open"
    assert _visible_hints(member_page) == []
    assert "hidden" in _claim_form(guest_page).attributes
    assert _visible_hints(guest_page) == ["claim-later"]
    assert claim.status == 200
    assert "paid" in claim.dom().testid_text("claim-result")


async def test_drops_list_only_tonight(tmp_path: Path) -> None:
    now = time.time()
    async with running_portal(tmp_path) as site:
        for drop in (
            DropConfig(
                OLD_DROP,
                "tee",
                1000,
                2,
                starts_at=now - HALF_YEAR_S,
                ends_at=now - HALF_YEAR_S + 3600,
            ),
            DropConfig(
                TOMORROW_DROP,
                "tee",
                1000,
                2,
                starts_at=now + DAY_S,
                ends_at=now + DAY_S + 3600,
            ),
            DropConfig(
                LONG_DROP,
                "cap",
                1000,
                2,
                starts_at=now - HALF_YEAR_S,
                ends_at=now + 2 * HALF_YEAR_S,
            ),
        ):
            site.add_drop(drop)
        async with Guest(site.base_url) as guest:
            page = await guest.get("/drops")
            old = await guest.get(f"/drops/{OLD_DROP}")
    links = [e.attributes["href"] for e in page.dom().by_testid("drop-link")]
    assert links == [
        f"/drops/{OPEN_DROP}",
        f"/drops/{LATER_DROP}",
        f"/drops/{LONG_DROP}",
    ]
    year = time.strftime("%Y", time.gmtime(now + 2 * HALF_YEAR_S))
    assert f"{year}," in page.text
    # A drop of another night keeps its page, for the QR codes printed for it.
    assert old.status == 200
    assert old.dom().testid_text("drop-state") == "ended"


async def test_drops_list_says_when_empty(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        html = site.portal.render("drops.html", signed_in=False, drops=[])
    items = Dom.parse(html).by_testid("no-drops")
    assert len(items) == 1
    assert " ".join(items[0].text.split()) == "There are no drops on this box tonight."
