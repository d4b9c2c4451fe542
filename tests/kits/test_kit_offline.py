"""Kits that a station handed out while the box was unreachable.

The station sends those requests later with ``offline_at``. The box checks
them like any other and, when it refuses one, commits a
``kit_offline_conflict`` event with the stored refusal, because the guest
already has the kit.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ClientFactory, make_site_config

from appliance.bus.client import Bus, Incoming
from appliance.config import SiteConfig
from appliance.errors import RequestError
from appliance.runtime import Box

TIMEOUT_S = 10.0
OFFLINE_AT = round(time.time() - 600.0, 3)


@pytest.fixture
def site_config(tmp_path: Path, request: pytest.FixtureRequest) -> SiteConfig:
    changes: dict[str, Any] = getattr(request, "param", {})
    return make_site_config(tmp_path / "box", **changes)


@pytest.fixture
async def station(make_client: ClientFactory) -> AsyncIterator[Bus]:
    async with make_client("reader-kit-1", "reader", "kit-1") as client:
        yield client


async def issue(
    station: Bus, band: str, key: str | None = None, **fields: Any
) -> dict[str, Any]:
    data = {
        "station": "kit-1",
        "band": band,
        "idempotency_key": key or str(uuid.uuid4()),
        **fields,
    }
    return await station.request(
        station.topics.api("kits", "issue"), data, timeout_s=TIMEOUT_S
    )


async def refusal(
    station: Bus, band: str, key: str | None = None, **fields: Any
) -> RequestError:
    with pytest.raises(RequestError) as caught:
        await issue(station, band, key, **fields)
    return caught.value


def events(box: Box, event_type: str) -> list[dict[str, Any]]:
    rows = box.store.query(
        "SELECT body FROM outbox WHERE type = ? ORDER BY seq", (event_type,)
    )
    return [json.loads(body) for (body,) in rows]


async def test_offline_issue_recorded(box: Box, station: Bus) -> None:
    reply = await issue(station, "ib-1-1", offline_at=OFFLINE_AT)

    assert reply["band"] == "ib-1-1"
    assert reply["remaining"] == 4
    assert events(box, "kit_issued") == [
        {"band": "ib-1-1", "station": "kit-1", "remaining": 4, "offline_at": OFFLINE_AT}
    ]
    assert events(box, "kit_offline_conflict") == []


async def test_offline_already_issued_conflict(box: Box, station: Bus) -> None:
    await issue(station, "ib-1-2")
    key = str(uuid.uuid4())

    error = await refusal(station, "ib-1-2", key, offline_at=OFFLINE_AT)
    retry = await refusal(station, "ib-1-2", key, offline_at=OFFLINE_AT)

    assert error.code == "already-issued"
    assert retry.code == "already-issued"
    # The retry gets the stored refusal and commits no second event.
    assert events(box, "kit_offline_conflict") == [
        {
            "band": "ib-1-2",
            "station": "kit-1",
            "reason": "already-issued",
            "offline_at": OFFLINE_AT,
        }
    ]
    stored = box.store.query("SELECT reply FROM requests WHERE key = ?", (key,))
    assert json.loads(stored[0][0])["error"]["code"] == "already-issued"
    assert box.kits.stock()["kit-1"]["remaining"] == 4


async def test_offline_out_of_stock_conflict(box: Box, station: Bus) -> None:
    for minor in range(10, 15):
        await issue(station, f"ib-1-{minor}")

    error = await refusal(station, "ib-1-20", offline_at=OFFLINE_AT + 1)

    assert error.code == "out-of-stock"
    assert events(box, "kit_offline_conflict") == [
        {
            "band": "ib-1-20",
            "station": "kit-1",
            "reason": "out-of-stock",
            "offline_at": OFFLINE_AT + 1,
        }
    ]


@pytest.mark.parametrize(
    "site_config", [{"kits_require_checkout": True}], indirect=True, ids=["checkout"]
)
async def test_offline_not_checked_out_conflict(box: Box, station: Bus) -> None:
    error = await refusal(station, "ib-1-21", offline_at=OFFLINE_AT)

    assert error.code == "not-checked-out"
    assert [event["reason"] for event in events(box, "kit_offline_conflict")] == [
        "not-checked-out"
    ]
    assert box.store.query("SELECT * FROM kits") == []


async def test_online_refusal_no_conflict(box: Box, station: Bus) -> None:
    await issue(station, "ib-1-3")

    error = await refusal(station, "ib-1-3")

    assert error.code == "already-issued"
    assert events(box, "kit_offline_conflict") == []


@pytest.mark.parametrize(
    "value",
    ["1780000000", True, -1, 0, 1_500_000_000, 2**32, 1e300, [1], {"t": 1}],
    ids=["text", "bool", "negative", "zero", "2017", "2106", "huge", "list", "dict"],
)
async def test_offline_at_invalid(box: Box, station: Bus, value: Any) -> None:
    key = str(uuid.uuid4())

    error = await refusal(station, "ib-1-4", key, offline_at=value)

    assert error.code == "invalid-request"
    assert "'offline_at'" in error.message
    assert box.store.query("SELECT * FROM kits") == []
    assert box.store.query("SELECT * FROM requests") == []
    assert events(box, "kit_offline_conflict") == []


async def test_offline_conflict_published(
    box: Box, station: Bus, make_client: ClientFactory
) -> None:
    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def on_event(incoming: Incoming) -> None:
        await received.put((incoming.topic, json.loads(incoming.payload)))

    async with make_client(
        "observer", "observer", "kits", announce=False, wait=False
    ) as observer:
        # Subscriptions registered before the connect go out before
        # ``connected`` is set.
        observer.subscribe(observer.topics.event("kit_offline_conflict"), on_event)
        await asyncio.wait_for(observer.connected.wait(), TIMEOUT_S)
        await issue(station, "ib-1-5")
        await refusal(station, "ib-1-5", offline_at=OFFLINE_AT)
        topic, body = await asyncio.wait_for(received.get(), TIMEOUT_S)

    assert topic == "nightbox/test/events/kit_offline_conflict"
    assert body["type"] == "kit_offline_conflict"
    assert body["data"]["band"] == "ib-1-5"
    assert body["data"]["reason"] == "already-issued"
