"""``console/overview`` and ``console/optins`` after a small scripted night."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from typing import Any

import orjson

from appliance.bus.client import Incoming
from appliance.config import SiteConfig
from appliance.runtime import Box
from tests.conftest import ClientFactory, strong_batches
from tests.console.console_site import call, console_client, refused
from tests.economy.economy_site import (  # noqa: F401
    TerminalFactory,
    economy_site_config,
    terminal_fixture,
    top_up,
)

CONSENT = "Send me one follow-up offer after tonight."
EMAIL = "night.owl@example.org"
# The band that buys never leaves, so it is the one guest counted inside: the
# bands that cross an exit have check-outs dated after all their uses,
# because strong_batches dates its batches up to 2 s ahead.
BUYER = "ib-1-8"


async def cross_exits(
    site_config: SiteConfig, make_client: ClientFactory, minors: list[int]
) -> list[float]:
    """Walk bands ``ib-1-<minor>`` through exit-1; return their check-out times."""
    seen: asyncio.Queue[float] = asyncio.Queue()

    async def on_checkout(incoming: Incoming) -> None:
        await seen.put(orjson.loads(incoming.payload)["data"]["seen_at"])

    async with (
        console_client(make_client) as console,
        make_client("reader-exit-1", "reader", "exit-1") as reader,
    ):
        console.subscribe(console.topics.event("checkout"), on_checkout)
        await asyncio.sleep(0.2)
        for index, minor in enumerate(minors):
            batches = strong_batches(
                site_config, "exit-1", minor, "boot1", first_seq=1 + 10 * index
            )
            for batch in batches:
                await reader.publish_json(
                    reader.topics.sightings("exit-1"), {"data": batch}
                )
        return [await asyncio.wait_for(seen.get(), 10) for _ in minors]


async def script_sales(terminal: TerminalFactory) -> None:
    """Sell and take back: the figures below follow from these calls."""
    async with terminal("bar-1") as bar:
        await top_up(bar, BUYER, 10_000)
        await bar.call(
            "wallet",
            "charge",
            band=BUYER,
            item="beer",
            quantity=2,
            amount=900,
            currency="EUR",
        )
        bundle = await bar.call(
            "wallet",
            "charge",
            band=BUYER,
            item="kit-bundle",
            quantity=1,
            amount=1500,
            currency="EUR",
        )
        await bar.call(
            "wallet", "refund", transaction_id=bundle["transaction_id"], amount=500
        )
        merch = await bar.call(
            "wallet",
            "charge",
            band=BUYER,
            item="merch",
            quantity=1,
            amount=1200,
            currency="EUR",
        )
        await bar.call("wallet", "refund", transaction_id=merch["transaction_id"])
        voided = await bar.call(
            "wallet",
            "charge",
            band=BUYER,
            item="beer",
            quantity=1,
            amount=450,
            currency="EUR",
        )
        await bar.call("wallet", "void", transaction_id=voided["transaction_id"])


async def script_kits(box: Box, make_client: ClientFactory) -> None:
    """Opt in two bands (one email, one wallet) and hand out two kits."""
    token = box.tokens.issue("desk", ["optin:register", "kits:issue"], 600).token
    async with make_client("terminal-desk", "terminal", "desk") as desk:
        for band, contact in (
            ("ib-1-1", {"email": EMAIL}),
            ("ib-1-2", {"wallet_id": "wallet:000042"}),
        ):
            await call(
                desk,
                "register",
                {"band": band, "consent": True, "consent_text": CONSENT, **contact},
                token=token,
                mutating=True,
                service="optin",
            )
        for band in ("ib-1-1", "ib-1-3"):
            await call(
                desk,
                "issue",
                {"band": band, "station": "kit-1"},
                token=token,
                mutating=True,
                service="kits",
            )


async def scripted_night(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    terminal: TerminalFactory,
) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    seen = await cross_exits(site_config, make_client, [1, 2, 3])
    await script_sales(terminal)
    await script_kits(box, make_client)
    async with console_client(make_client) as console:
        overview = await call(console, "overview")
        optins = await call(console, "optins")
    return seen, overview, optins


async def test_overview_scripted_night(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    terminal: TerminalFactory,
) -> None:
    seen, overview, _optins = await scripted_night(
        box, site_config, make_client, terminal
    )

    per_minute = overview["exits_per_minute"]
    assert len(per_minute) == 60
    starts = [minute for minute, _count in per_minute]
    assert starts == sorted(starts)
    assert all(later - earlier == 60 for earlier, later in itertools.pairwise(starts))
    assert starts[-1] <= overview["now"] < starts[-1] + 60
    expected = Counter(int(t // 60) * 60 for t in seen)
    assert {minute: count for minute, count in per_minute if count} == expected
    assert overview["checkouts"] == 3
    assert overview["top_items"] == [
        {
            "item": "kit-bundle",
            "name": "Recovery kit bundle",
            "quantity": 1,
            "revenue": 1000,
        },
        {"item": "beer", "name": "Beer", "quantity": 2, "revenue": 900},
        {"item": "merch", "name": "Merch", "quantity": 0, "revenue": 0},
    ]
    assert overview["sales_minor"] == 1900
    assert overview["kits"] == {"kit-1": {"issued": 2, "left": 3, "initial": 5}}
    assert overview["optins"] == 2
    assert overview["coupons"] == 1
    assert overview["guests_in"] == 1


async def test_overview_site_and_catalogue(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    async with console_client(make_client) as console:
        overview = await call(console, "overview")

    commerce = site_config.commerce
    assert overview["night"] == commerce.night_of(overview["now"])
    assert overview["clock"] == {"trusted": True, "source": "ntp"}
    assert overview["site"] == {
        "id": "test",
        "name": "Test venue",
        "box": "box-1",
        "timezone": "UTC",
        "currency": "EUR",
        "minor_units": 2,
    }
    assert {"id": "beer", "name": "Beer", "price": 450} in overview["items"]
    assert {"id": "merch", "name": "Merch", "price": None} in overview["items"]
    assert {"id": "maya", "name": "Maya", "codes": ["MAYA"]} in overview["creators"]
    drops = {drop["id"]: drop for drop in overview["drops"]}
    assert drops["tee-drop"]["quota"] == 500
    assert drops["tee-drop"]["per_guest_limit"] == 2
    assert drops["vinyl"]["state"] == "scheduled"
    assert [reader["id"] for reader in overview["readers"]] == [
        "exit-1",
        "exit-2",
        "kit-1",
    ]
    assert overview["readers"][0]["role"] == "exit"
    assert overview["terminals"] == [
        "desk",
        "console",
        "bar-1",
        "bar-2",
        "merch-1",
        "desk-2",
    ]
    assert overview["wallet"]["max_charge"] == 20_000
    assert overview["stream"] is None
    assert overview["top_items"] == []
    assert sum(count for _minute, count in overview["exits_per_minute"]) == 0


async def test_optins_aggregates_only(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    terminal: TerminalFactory,
) -> None:
    await script_kits(box, make_client)
    async with console_client(make_client) as console:
        optins = await call(console, "optins")

    assert optins["total"] == 2
    assert optins["by_kind"] == {"email": 1, "wallet": 1}
    assert optins["coupons_issued"] == 1
    assert sorted(entry["band"] for entry in optins["recent"]) == ["ib-1-1", "ib-1-2"]
    assert set(optins["recent"][0]) == {"band", "contact_kind", "at"}
    text = orjson.dumps(optins).decode()
    assert EMAIL not in text
    assert "wallet:000042" not in text


async def test_nearby_lists_heard_bands(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    await cross_exits(site_config, make_client, [4, 5])
    async with console_client(make_client) as console:
        nearby = await call(console, "nearby", {"window_s": 60})
        filtered = await call(console, "nearby", {"reader": "exit-2", "window_s": 60})
        bad_reader = await refused(console, "nearby", {"reader": "exit-9"})
        bad_window = await refused(console, "nearby", {"window_s": 0})

    bands = {entry["band"]: entry for entry in nearby["bands"]}
    assert set(bands) == {"ib-1-4", "ib-1-5"}
    assert bands["ib-1-4"]["reader"] == "exit-1"
    assert bands["ib-1-4"]["rssi"] == -50.0
    assert bands["ib-1-4"]["n"] == 15
    assert bands["ib-1-4"]["format"] == "ibeacon"
    assert bands["ib-1-4"]["battery_mv"] is None
    assert filtered["bands"] == []
    assert bad_reader.code == "invalid-request"
    assert "'reader'" in bad_reader.message
    assert bad_window.code == "invalid-request"
    assert "'window_s'" in bad_window.message


async def test_nearby_other_terminal(box: Box, make_client: ClientFactory) -> None:
    async with make_client("terminal-bar-1", "terminal", "bar-1") as bar:
        error = await refused(bar, "nearby", {"idempotency_key": str(uuid.uuid4())})

    assert error.code == "not-console"
