"""A drop's state: the same on its page, in the drops list and in the stock JSON."""

from __future__ import annotations

import time
from pathlib import Path

from portal_site import LATER_DROP, OPEN_DROP, Guest, running_portal

from appliance.commerce.config import CommerceConfig, DropConfig
from appliance.portal._drop_offers import drop_state
from appliance.portal._format import night_time

ENDED_DROP = "tee-old"
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
        assert stock[drop].text.endswith(f'"state": "{state}"}}'), stock[drop].text
        [element] = dom.by_testid("drop-state")
        assert element.attributes["data-state"] == state
    assert pages[OPEN_DROP].dom().testid_text("drop-state") == "sold out"
    assert pages[ENDED_DROP].dom().testid_text("drop-state") == "ended"
    assert pages[LATER_DROP].dom().testid_text("drop-state").startswith("opens ")
    # No claim is offered where none can succeed.
    assert pages[OPEN_DROP].dom().by_id("claim") is None
    assert pages[ENDED_DROP].dom().by_id("claim") is None
    assert pages[LATER_DROP].dom().by_id("claim") is not None


async def test_stopped_drop_state(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        await site.staff("drops", "stop", {"drop": LATER_DROP}, "drops:manage")
        await site.staff("drops", "start", {"drop": OPEN_DROP}, "drops:manage")
        async with Guest(site.base_url) as guest:
            stopped = await guest.get(f"/drops/{LATER_DROP}/stock")
            started = await guest.get(f"/drops/{OPEN_DROP}/stock")
            page = await guest.get(f"/drops/{LATER_DROP}")
    assert stopped.text == '{"available": 5, "quota": 5, "state": "stopped"}'
    assert started.text == '{"available": 3, "quota": 3, "state": "open"}'
    assert page.dom().testid_text("drop-state") == "closed by the venue"
    assert page.dom().by_id("claim") is None
