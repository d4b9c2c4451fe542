"""Invalid amounts and currencies on wallet requests, over a real mosquitto.

Each case sends one top-up, charge or refund with a bad ``amount`` or
``currency``. The box must reply ``invalid-request`` with a message naming
the field and the value, store nothing, count the rejection, and then serve
a valid request that reuses the rejected request's idempotency key.

The bad requests are encoded with the standard json module, because orjson,
which terminals use, cannot encode integers beyond 64 bits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import ClientFactory, TokenFactory
from economy_site import (
    ALL_SCOPES,
    TerminalFactory,
    economy_site_config,  # noqa: F401 - registers the site_config fixture
    terminal_fixture,  # noqa: F401 - registers the terminal fixture
    top_up,
)

from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.runtime import Box

BAND = "ib-1-5"
TIMEOUT_S = 10.0
# What a wallet request writes, as queries; an invalid request changes none.
# The outbox's published_at is left out because the publisher sets it.
TABLES = {
    table: f"SELECT * FROM {table} ORDER BY rowid"
    for table in (
        "ledger_transactions",
        "ledger_entries",
        "wallets",
        "requests",
        "promo_codes",
    )
} | {"outbox": "SELECT seq, id, type, body FROM outbox ORDER BY seq"}
MISSING = object()  # the field is left out of the request

# (case label, value, text of the value that the error message must contain)
AMOUNTS: list[tuple[str, Any, str]] = [
    ("malformed", "4,50", "'4,50'"),
    ("list", [450], "[450]"),
    ("null", None, "missing field 'amount'"),
    ("missing", MISSING, "missing field 'amount'"),
    ("negative", -450, "= -450"),
    ("zero", 0, "= 0"),
    ("fractional", 4.5, "not 4.5"),
    ("string", "450", "not '450'"),
    ("boolean", True, "not True"),
    ("above-max", 10**12, f"= {10**12}"),
    ("int64-overflow", 2**63, f"= {2**63}"),
    # orjson 3.13 decodes an integer beyond 64 bits as a float, so the box
    # checks 1e+30.
    ("huge", 10**30, "not 1e+30"),
]
CURRENCIES: list[tuple[str, Any, str]] = [
    ("usd", "USD", "is 'USD'"),
    ("lowercase", "eur", "is 'eur'"),
    ("missing", MISSING, "missing field 'currency'"),
    ("number", 1, "is 1,"),
]
# A refund without an amount refunds the rest of the charge, and one
# without a currency uses the charge's, so leaving either out is valid.
REFUND_OPTIONAL = {"null", "missing"}


@dataclass(frozen=True)
class Case:
    action: str
    field: str
    value: Any
    expected: str


def cases() -> list[Any]:
    table = []
    for action in ("topup", "charge", "refund"):
        for field, rows in (("amount", AMOUNTS), ("currency", CURRENCIES)):
            for label, value, expected in rows:
                if action == "refund" and label in REFUND_OPTIONAL:
                    continue
                table.append(
                    pytest.param(
                        Case(action, field, value, expected),
                        id=f"{action}-{field}-{label}",
                    )
                )
    return table


def valid_data(action: str, charge_id: str) -> dict[str, Any]:
    """Return a valid request for ``action``; a refund refunds ``charge_id``."""
    if action == "topup":
        return {"band": BAND, "amount": 1000, "currency": "EUR", "method": "card"}
    if action == "charge":
        return {"band": BAND, "item": "merch", "amount": 700, "currency": "EUR"}
    return {"transaction_id": charge_id, "amount": 300, "currency": "EUR"}


def snapshot(box: Box) -> dict[str, list[tuple[Any, ...]]]:
    return {table: box.store.query(query) for table, query in TABLES.items()}


@dataclass
class JsonTerminal:
    """A terminal that sends requests encoded with the standard json module."""

    bus: Bus
    token: str
    replies: asyncio.Queue[Incoming]

    async def call(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send ``api/wallet/<action>`` and return the reply's body."""
        body = {
            "v": envelope.SCHEMA_VERSION,
            "id": str(uuid.uuid4()),
            "ts": time.time(),
            "src": self.bus.settings.src,
            "data": data,
            "deadline": time.time() + TIMEOUT_S,
            "token": self.token,
        }
        correlation = uuid.uuid4().bytes
        await self.bus.publish(
            self.bus.topics.device_api(
                "terminal", self.bus.settings.device_id, "wallet", action
            ),
            json.dumps(body).encode(),
            response_topic=self.bus.topics.reply(
                "terminal", self.bus.settings.device_id
            ),
            correlation=correlation,
            timeout_s=TIMEOUT_S,
        )
        reply = await asyncio.wait_for(self.replies.get(), TIMEOUT_S)
        assert reply.correlation == correlation
        result: dict[str, Any] = envelope.decode(reply.payload).body
        return result


JsonTerminalFactory = Callable[
    [str], contextlib.AbstractAsyncContextManager[JsonTerminal]
]


@pytest.fixture
def json_terminal(
    make_client: ClientFactory, issue_token: TokenFactory
) -> JsonTerminalFactory:
    """Return ``async with json_terminal("bar-2") as till``, with every scope."""

    @contextlib.asynccontextmanager
    async def factory(terminal_id: str) -> AsyncIterator[JsonTerminal]:
        replies: asyncio.Queue[Incoming] = asyncio.Queue()

        async def on_reply(incoming: Incoming) -> None:
            replies.put_nowait(incoming)

        async with make_client(
            f"terminal-{terminal_id}", "terminal", terminal_id, wait=False
        ) as bus:
            # This replaces the client's own reply handler, which would drop
            # replies to requests that Bus.request did not send.
            bus.subscribe(bus.topics.reply("terminal", terminal_id), on_reply)
            await asyncio.wait_for(bus.connected.wait(), TIMEOUT_S)
            token = issue_token(terminal_id, *ALL_SCOPES)
            yield JsonTerminal(bus, token, replies)

    return factory


@pytest.mark.parametrize("case", cases())
async def test_invalid_amount_rejected(
    box: Box,
    terminal: TerminalFactory,
    json_terminal: JsonTerminalFactory,
    case: Case,
) -> None:
    async with terminal("desk-2") as desk, json_terminal("bar-2") as till:
        await top_up(desk, BAND, 5000)
        sale = await desk.call(
            "wallet", "charge", band=BAND, item="merch", amount=2000, currency="EUR"
        )
        key = uuid.uuid4().hex
        valid = valid_data(case.action, sale["transaction_id"])
        valid["idempotency_key"] = key
        invalid = dict(valid)
        if case.value is MISSING:
            del invalid[case.field]
        else:
            invalid[case.field] = case.value
        before = snapshot(box)
        rejected = await till.call(case.action, invalid)
        after = snapshot(box)
        accepted = await till.call(case.action, valid)

    error = rejected["error"]
    assert rejected["ok"] is False
    assert error["code"] == "invalid-request"
    assert f"'{case.field}'" in error["message"]
    assert case.expected in error["message"]
    assert after == before
    assert box.requests.counts["invalid-request"] == 1
    assert accepted["ok"] is True
    assert accepted["data"]["kind"] == case.action
    assert accepted["data"]["amount"] == valid["amount"]
