"""Per-night limits across the night's rollover, on a clock the test moves.

Requests go through ``RequestServer.call``, the box's in-process path, which
runs the same handlers and commits as requests over the bus.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from economy_site import (
    economy_site_config,  # noqa: F401 - registers the site_config fixture
)

from appliance.bus.broker import BrokerHandle
from appliance.clock import ManualClock
from appliance.config import SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials

# 2026-12-05 20:00 UTC; the test site's nights roll over at 12:00 UTC.
EVENING = 1_796_500_800.0
NEXT_EVENING = EVENING + 24 * 3600
BAND = "ib-1-5"
SCOPES = ("wallet:topup", "pos:charge", "pos:refund")


@pytest.fixture
async def clock_box(
    site_config: SiteConfig, credentials: SiteCredentials, mosquitto: BrokerHandle
) -> AsyncIterator[tuple[Box, ManualClock, str]]:
    """A box on a clock the test moves, with a token for terminal bar-1."""
    clock = ManualClock(EVENING)
    async with Box(
        site_config, clock, credentials, mosquitto.host, mosquitto.port
    ) as box:
        token = box.tokens.issue("bar-1", SCOPES, 24 * 3600).token
        yield box, clock, token


async def call(box: Box, token: str, action: str, **data: Any) -> dict[str, Any]:
    data["idempotency_key"] = uuid.uuid4().hex
    return await box.requests.call(
        "wallet", action, data, token=token, terminal="bar-1"
    )


async def test_refund_counts_for_charge_night(
    clock_box: tuple[Box, ManualClock, str],
) -> None:
    box, clock, token = clock_box
    limit = box.config.commerce.wallet.night_spend_limit
    charge_amount = box.config.commerce.wallet.max_charge
    await call(
        box, token, "topup", band=BAND, amount=50_000, currency="EUR", method="card"
    )
    first = await call(
        box,
        token,
        "charge",
        band=BAND,
        item="merch",
        amount=charge_amount,
        currency="EUR",
    )
    await call(
        box,
        token,
        "charge",
        band=BAND,
        item="merch",
        amount=limit - charge_amount,
        currency="EUR",
    )

    clock.advance_to(NEXT_EVENING)
    await call(box, token, "refund", transaction_id=first["data"]["transaction_id"])
    tonight = [
        await call(
            box,
            token,
            "charge",
            band=BAND,
            item="merch",
            amount=charge_amount,
            currency="EUR",
        )
        for _ in range(2)
    ]

    # Yesterday's refund gives no extra room tonight: the second charge of
    # 20,000 passes the night's limit of 30,000.
    assert first["ok"] is True
    assert tonight[0]["ok"] is True
    assert tonight[1]["ok"] is False
    assert tonight[1]["error"]["code"] == "limit-exceeded"
    assert tonight[1]["error"]["limit"] == limit


async def test_deeply_nested_data_invalid(
    clock_box: tuple[Box, ManualClock, str],
) -> None:
    box, _clock, token = clock_box
    nested: dict[str, Any] = {}
    for _ in range(1000):
        nested = {"a": nested}

    reply = await call(
        box,
        token,
        "topup",
        band=BAND,
        amount=100,
        currency="EUR",
        method="card",
        extra=nested,
    )

    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid-request"
    assert "nested too deeply" in reply["error"]["message"]
    assert box.store.query("SELECT COUNT(*) FROM ledger_transactions") == [(0,)]
