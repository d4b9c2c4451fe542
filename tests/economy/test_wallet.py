"""Wristband wallets over a real mosquitto and SQLite: money, limits, ledger.

Terminals send signed requests on the bus, and each test reads the box's
store to see what was committed. The site (see ``economy_site``) counts
money in EUR cents: max top-up 50,000, max charge 20,000, and per band per
night 60,000 topped up and 30,000 spent. Beer costs 450, merch has an open
price and the kit bundle costs 1500. Set ``set-maya`` plays all test long.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest
from economy_site import (
    MEMBER_BAND,
    Terminal,
    TerminalFactory,
    economy_site_config,  # noqa: F401 - registers the site_config fixture
    terminal_fixture,  # noqa: F401 - registers the terminal fixture
    top_up,
)

from appliance.errors import RequestError
from appliance.runtime import Box
from appliance.wallet._ledger import ledger_check

PRICES = {"beer": 450, "kit-bundle": 1500}
BAND = "ib-1-5"
OTHER_BAND = "ib-1-6"
MAX_TOPUP = 50_000
MAX_CHARGE = 20_000
NIGHT_TOPUP_LIMIT = 60_000
NIGHT_SPEND_LIMIT = 30_000
LEDGER_TABLES = ("ledger_transactions", "ledger_entries", "wallets", "promo_codes")


async def charge(
    till: Terminal,
    band: str,
    item: str = "beer",
    quantity: int = 1,
    amount: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Charge ``band`` for ``quantity`` of ``item``, at list price unless given."""
    if amount is None:
        amount = PRICES[item] * quantity
    return await till.call(
        "wallet",
        "charge",
        band=band,
        item=item,
        quantity=quantity,
        amount=amount,
        currency="EUR",
        **extra,
    )


async def rejection(call: Awaitable[Any]) -> RequestError:
    """Await a request that must fail and return its error."""
    with pytest.raises(RequestError) as caught:
        await call
    return caught.value


def stored_balance(box: Box, band: str) -> int | None:
    """Return the cached balance of ``band``, None when it has no wallet."""
    row = box.store.query_one("SELECT balance FROM wallets WHERE band = ?", (band,))
    return None if row is None else int(row[0])


def entries_of(box: Box, transaction_id: str) -> list[tuple[str, int]]:
    """Return a ledger transaction's entries as sorted (account, amount) pairs."""
    return sorted(
        box.store.query(
            "SELECT account, amount FROM ledger_entries WHERE transaction_id = ?",
            (transaction_id,),
        )
    )


def snapshot(box: Box) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the wallet and ledger tables, for change checks."""
    return {
        table: box.store.query(f"SELECT * FROM {table} ORDER BY rowid")
        for table in LEDGER_TABLES
    }


def promo_uses(box: Box, code: str) -> int:
    row = box.store.query_one("SELECT uses FROM promo_codes WHERE code = ?", (code,))
    assert row is not None, code
    return int(row[0])


# Top-ups, charges, refunds and voids


async def test_topup_records_method(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        assert stored_balance(box, BAND) is None
        cash = await top_up(desk, BAND, 2000, "cash")
        card = await top_up(desk, BAND, 1000, "card")

    assert cash["method"] == "cash"
    assert cash["balance"] == 2000
    assert card["method"] == "card"
    assert card["balance"] == 3000
    assert stored_balance(box, BAND) == 3000
    methods = box.store.query(
        "SELECT method, amount, terminal FROM ledger_transactions"
        " WHERE kind = 'topup' ORDER BY created_at"
    )
    assert methods == [("cash", 2000, "desk-2"), ("card", 1000, "desk-2")]
    assert entries_of(box, card["transaction_id"]) == [
        ("tender:card", -1000),
        (f"wallet:{BAND}", 1000),
    ]


async def test_charge_lowers_balance(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        charged = await charge(bar, BAND, quantity=2)

    assert charged["amount"] == 900
    assert charged["balance"] == 1100
    assert charged["item"] == "beer"
    assert charged["terminal"] == "bar-1"
    assert stored_balance(box, BAND) == 1100
    assert entries_of(box, charged["transaction_id"]) == [
        ("revenue:beer", 900),
        (f"wallet:{BAND}", -900),
    ]


async def test_refund_partial_then_full(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        charged = await charge(bar, BAND, quantity=2)
        charge_id = charged["transaction_id"]
        partial = await bar.call(
            "wallet", "refund", transaction_id=charge_id, amount=300
        )
        rest = await bar.call("wallet", "refund", transaction_id=charge_id)
        nothing_left = await rejection(
            bar.call("wallet", "refund", transaction_id=charge_id, amount=1)
        )

    assert partial["amount"] == 300
    assert partial["balance"] == 1400
    assert partial["refers_to"] == charge_id
    assert rest["amount"] == 600
    assert rest["balance"] == 2000
    assert nothing_left.code == "over-refund"
    assert nothing_left.details["refundable"] == 0
    assert stored_balance(box, BAND) == 2000
    assert entries_of(box, partial["transaction_id"]) == [
        ("revenue:beer", -300),
        (f"wallet:{BAND}", 300),
    ]


async def test_over_refund_rejected(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        charged = await charge(bar, BAND, quantity=2)
        before = snapshot(box)
        error = await rejection(
            bar.call(
                "wallet",
                "refund",
                transaction_id=charged["transaction_id"],
                amount=901,
            )
        )

    assert error.code == "over-refund"
    assert error.details["refundable"] == 900
    assert snapshot(box) == before


async def test_refund_of_topup_rejected(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        topped = await top_up(desk, BAND, 2000)
        error = await rejection(
            desk.call("wallet", "refund", transaction_id=topped["transaction_id"])
        )

    assert error.code == "not-refundable"
    assert stored_balance(box, BAND) == 2000


async def test_void_topup_reverses(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        await top_up(desk, BAND, 1000)
        topped = await top_up(desk, BAND, 2500, "card")
        voided = await desk.call(
            "wallet", "void", transaction_id=topped["transaction_id"]
        )

    assert voided["kind"] == "void"
    assert voided["refers_to"] == topped["transaction_id"]
    assert voided["balance"] == 1000
    assert stored_balance(box, BAND) == 1000
    assert entries_of(box, voided["transaction_id"]) == [
        ("tender:card", 2500),
        (f"wallet:{BAND}", -2500),
    ]
    (voided_by,) = box.store.query_one(
        "SELECT voided_by FROM ledger_transactions WHERE id = ?",
        (topped["transaction_id"],),
    ) or (None,)
    assert voided_by == voided["transaction_id"]


async def test_void_charge_reverses(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        charged = await charge(bar, BAND, quantity=3)
        voided = await bar.call(
            "wallet", "void", transaction_id=charged["transaction_id"]
        )
        again = await rejection(
            bar.call("wallet", "void", transaction_id=charged["transaction_id"])
        )
        refund = await rejection(
            bar.call("wallet", "refund", transaction_id=charged["transaction_id"])
        )

    assert voided["balance"] == 2000
    assert stored_balance(box, BAND) == 2000
    assert entries_of(box, voided["transaction_id"]) == [
        ("revenue:beer", -1350),
        (f"wallet:{BAND}", 1350),
    ]
    assert again.code == "already-voided"
    assert refund.code == "already-voided"


async def test_void_of_spent_topup_rejected(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        topped = await top_up(bar, BAND, 1000)
        await charge(bar, BAND)
        before = snapshot(box)
        error = await rejection(
            bar.call("wallet", "void", transaction_id=topped["transaction_id"])
        )

    assert error.code == "insufficient-funds"
    assert error.details["balance"] == 550
    assert snapshot(box) == before


async def test_charge_above_balance_rejected(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 400)
        before = snapshot(box)
        short = await rejection(charge(bar, BAND))
        no_wallet = await rejection(charge(bar, OTHER_BAND))

    assert short.code == "insufficient-funds"
    assert short.details["balance"] == 400
    assert short.details["amount"] == 450
    assert no_wallet.code == "insufficient-funds"
    assert no_wallet.details["balance"] == 0
    assert snapshot(box) == before
    assert stored_balance(box, OTHER_BAND) is None


# Limits


async def test_topup_limit_per_topup(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        error = await rejection(top_up(desk, BAND, MAX_TOPUP + 1))
        at_limit = await top_up(desk, BAND, MAX_TOPUP)

    assert error.code == "limit-exceeded"
    assert error.details["limit"] == MAX_TOPUP
    assert at_limit["balance"] == MAX_TOPUP


async def test_charge_limit_per_charge(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("merch-1") as merch:
        await top_up(merch, BAND, MAX_TOPUP)
        error = await rejection(charge(merch, BAND, "merch", amount=MAX_CHARGE + 1))
        at_limit = await charge(merch, BAND, "merch", amount=MAX_CHARGE)

    assert error.code == "limit-exceeded"
    assert error.details["limit"] == MAX_CHARGE
    assert at_limit["balance"] == MAX_TOPUP - MAX_CHARGE


async def test_night_topup_limit(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk:
        await top_up(desk, BAND, MAX_TOPUP)
        await top_up(desk, BAND, NIGHT_TOPUP_LIMIT - MAX_TOPUP)
        error = await rejection(top_up(desk, BAND, 1))
        other = await top_up(desk, OTHER_BAND, 1000)

    assert error.code == "limit-exceeded"
    assert error.details["limit"] == NIGHT_TOPUP_LIMIT
    assert stored_balance(box, BAND) == NIGHT_TOPUP_LIMIT
    assert other["balance"] == 1000


async def test_night_spend_limit(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, MAX_TOPUP)
        first = await charge(bar, BAND, "merch", amount=MAX_CHARGE)
        await charge(bar, BAND, "merch", amount=NIGHT_SPEND_LIMIT - MAX_CHARGE)
        over = await rejection(charge(bar, BAND))
        await bar.call(
            "wallet", "refund", transaction_id=first["transaction_id"], amount=500
        )
        after_refund = await charge(bar, BAND)
        over_again = await rejection(charge(bar, BAND))

    assert over.code == "limit-exceeded"
    assert over.details["limit"] == NIGHT_SPEND_LIMIT
    assert after_refund["amount"] == 450
    assert over_again.code == "limit-exceeded"
    assert stored_balance(box, BAND) == MAX_TOPUP - NIGHT_SPEND_LIMIT + 500 - 450


# Catalogue, promo codes, creators and members


async def test_priced_item_wrong_amount(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        error = await rejection(charge(bar, BAND, quantity=2, amount=450))

    assert error.code == "invalid-request"
    assert "'amount' = 450" in error.message
    assert "send 900" in error.message
    assert stored_balance(box, BAND) == 2000


async def test_unknown_item_invalid(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        error = await rejection(charge(bar, BAND, "wine", amount=700))

    assert error.code == "invalid-request"
    assert "'wine'" in error.message
    assert stored_balance(box, BAND) == 2000


async def test_percent_promo_max_uses(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 5000)
        sales = [await charge(bar, BAND, promo_code="SAVE10") for _ in range(3)]
        before = snapshot(box)
        used_up = await rejection(charge(bar, BAND, promo_code="save10"))

    for sale in sales:
        assert sale["discount"] == 45
        assert sale["amount"] == 405
        assert sale["list_amount"] == 450
        assert sale["promo_code"] == "SAVE10"
    assert used_up.code == "promo-used-up"
    assert snapshot(box) == before
    assert promo_uses(box, "SAVE10") == 3


async def test_amount_promo_credits_creator(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("merch-1") as merch:
        await top_up(merch, BAND, 5000)
        sale = await charge(merch, BAND, "merch", amount=2000, promo_code="FIVEOFF")
        used_up = await rejection(
            charge(merch, BAND, "merch", amount=2000, promo_code="FIVEOFF")
        )

    assert sale["discount"] == 500
    assert sale["amount"] == 1500
    assert sale["creator"] == "kofi"
    assert used_up.code == "promo-used-up"
    (creator,) = box.store.query_one(
        "SELECT creator FROM ledger_transactions WHERE id = ?",
        (sale["transaction_id"],),
    ) or (None,)
    assert creator == "kofi"


async def test_expired_promo_rejected(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        error = await rejection(charge(bar, BAND, promo_code="OLD"))

    assert error.code == "promo-expired"
    assert stored_balance(box, BAND) == 2000


async def test_unknown_promo_rejected(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        error = await rejection(charge(bar, BAND, promo_code="NOSUCHCODE"))

    assert error.code == "promo-unknown"
    assert stored_balance(box, BAND) == 2000


async def test_charges_only_promo_on_drop(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("merch-1") as merch:
        await top_up(merch, BAND, 5000)
        claim = await merch.call("drops", "claim", drop="tee-drop", band=BAND)
        error = await rejection(
            merch.call("drops", "pay", claim=claim["claim"], promo_code="FIVEOFF")
        )
        # The rejected payment took no use of the code, so a charge may use it.
        sale = await charge(merch, BAND, "merch", amount=2000, promo_code="FIVEOFF")

    assert error.code == "promo-not-applicable"
    assert sale["discount"] == 500
    (status,) = box.store.query_one(
        "SELECT status FROM drop_claims WHERE id = ?", (claim["claim"],)
    ) or (None,)
    assert status == "reserved"
    assert stored_balance(box, BAND) == 5000 - 1500


async def test_creator_code_credits_creator(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        upper = await charge(bar, BAND, creator="MAYA")
        lower = await charge(bar, BAND, creator="kofi")
        unknown = await rejection(charge(bar, BAND, creator="NOBODY"))

    assert upper["creator"] == "maya"
    assert lower["creator"] == "kofi"
    assert unknown.code == "invalid-request"
    assert "'NOBODY'" in unknown.message


async def test_charges_record_current_set(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 5000)
        plain = await charge(bar, BAND)
        coded = await charge(bar, BAND, creator="KOFI")
        bundle = await charge(bar, BAND, "kit-bundle")
        refund = await bar.call(
            "wallet", "refund", transaction_id=plain["transaction_id"]
        )

    for record in (plain, coded, bundle, refund):
        assert record["set"] == "set-maya"
    sets = box.store.query(
        "SELECT DISTINCT set_id FROM ledger_transactions"
        " WHERE kind IN ('charge', 'refund')"
    )
    assert sets == [("set-maya",)]


async def test_member_kit_bundle_discount(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, MEMBER_BAND, 5000)
        await top_up(bar, BAND, 5000)
        member = await charge(bar, MEMBER_BAND, "kit-bundle")
        member_beer = await charge(bar, MEMBER_BAND)
        guest = await charge(bar, BAND, "kit-bundle")

    assert member["discount"] == 300
    assert member["amount"] == 1200
    assert "discount" not in member_beer
    assert member_beer["amount"] == 450
    assert "discount" not in guest
    assert guest["amount"] == 1500


async def test_promo_and_tier_not_stacked(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, MEMBER_BAND, 5000)
        # SAVE10 takes 150 off, less than the member's 300, so it is not used.
        tier_wins = await charge(bar, MEMBER_BAND, "kit-bundle", promo_code="SAVE10")
        # FIVEOFF takes 500 off, more than the member's 300.
        promo_wins = await charge(bar, MEMBER_BAND, "kit-bundle", promo_code="FIVEOFF")

    assert tier_wins["discount"] == 300
    assert "promo_code" not in tier_wins
    assert promo_uses(box, "SAVE10") == 0
    assert promo_wins["discount"] == 500
    assert promo_wins["promo_code"] == "FIVEOFF"
    assert promo_uses(box, "FIVEOFF") == 1
    assert stored_balance(box, MEMBER_BAND) == 5000 - 1200 - 1000


# The ledger


async def test_ledger_balanced_after_mix(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("desk-2") as desk, terminal("bar-1") as bar:
        await top_up(desk, BAND, 10_000, "cash")
        await top_up(desk, MEMBER_BAND, 8000, "card")
        spare = await top_up(desk, OTHER_BAND, 3000, "card")
        beers = await charge(bar, BAND, quantity=3, promo_code="SAVE10")
        await charge(bar, MEMBER_BAND, "kit-bundle", creator="MAYA")
        merch = await charge(bar, BAND, "merch", amount=2500, promo_code="FIVEOFF")
        await bar.call(
            "wallet", "refund", transaction_id=beers["transaction_id"], amount=405
        )
        await bar.call("wallet", "void", transaction_id=merch["transaction_id"])
        await desk.call("wallet", "void", transaction_id=spare["transaction_id"])
        await bar.call("drops", "claim", drop="tee-drop", band=MEMBER_BAND, pay=True)
        await rejection(charge(bar, OTHER_BAND))
        await rejection(charge(bar, BAND, promo_code="OLD"))

    check = ledger_check(box.store)
    assert check.ok, check.to_json()
    assert check.transactions == 10
    unbalanced = box.store.query(
        "SELECT transaction_id, SUM(amount) FROM ledger_entries"
        " GROUP BY transaction_id HAVING SUM(amount) != 0"
    )
    assert unbalanced == []
    without_entries = box.store.query(
        "SELECT id FROM ledger_transactions t WHERE NOT EXISTS"
        " (SELECT 1 FROM ledger_entries e WHERE e.transaction_id = t.id)"
    )
    assert without_entries == []
    for band, balance in box.store.query("SELECT band, balance FROM wallets"):
        (total,) = box.store.query_one(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE account = ?",
            (f"wallet:{band}",),
        ) or (None,)
        assert balance == total, band
        assert balance >= 0, band
    assert stored_balance(box, BAND) == 10_000 - 1215 + 405
    assert stored_balance(box, MEMBER_BAND) == 8000 - 1200 - 3500
    assert stored_balance(box, OTHER_BAND) == 0


async def test_outbox_event_per_transaction(
    box: Box, terminal: TerminalFactory
) -> None:
    async with terminal("bar-1") as bar:
        topped = await top_up(bar, BAND, 5000)
        sold = await charge(bar, BAND, quantity=2)
        await bar.call(
            "wallet", "refund", transaction_id=sold["transaction_id"], amount=450
        )
        other = await charge(bar, BAND)
        await bar.call("wallet", "void", transaction_id=other["transaction_id"])
        await bar.call("drops", "claim", drop="tee-drop", band=BAND, pay=True)
        await rejection(charge(bar, BAND, "merch", amount=MAX_CHARGE + 1))
        await rejection(
            bar.call("wallet", "refund", transaction_id=topped["transaction_id"])
        )

    events: dict[str, list[tuple[str, str]]] = {}
    for event_id, event_type, body in box.store.query(
        "SELECT id, type, body FROM outbox WHERE type IN"
        " ('wallet_topup', 'wallet_charge', 'wallet_refund', 'wallet_void')"
    ):
        transaction_id = json.loads(body)["transaction_id"]
        events.setdefault(transaction_id, []).append((event_id, event_type))
    transactions = box.store.query("SELECT id, kind, event_id FROM ledger_transactions")
    assert len(transactions) == 6
    assert sorted(events) == sorted(row[0] for row in transactions)
    for transaction_id, kind, event_id in transactions:
        assert events[transaction_id] == [(event_id, f"wallet_{kind}")]


# Idempotency


async def test_retried_charge_charges_once(box: Box, terminal: TerminalFactory) -> None:
    key = uuid.uuid4().hex
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        first = await charge(bar, BAND, quantity=2, idempotency_key=key)
        retry = await charge(bar, BAND, quantity=2, idempotency_key=key)

    assert retry == first
    assert stored_balance(box, BAND) == 1100
    assert box.store.query(
        "SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'charge'"
    ) == [(1,)]
    assert box.requests.counts["replayed"] == 1


async def test_reused_key_other_data(box: Box, terminal: TerminalFactory) -> None:
    key = uuid.uuid4().hex
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        await charge(bar, BAND, idempotency_key=key)
        error = await rejection(charge(bar, BAND, quantity=2, idempotency_key=key))

    assert error.code == "idempotency-key-reused"
    assert stored_balance(box, BAND) == 1550


async def test_retried_refusal_same_refusal(
    box: Box, terminal: TerminalFactory
) -> None:
    key = uuid.uuid4().hex
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 100)
        first = await rejection(charge(bar, BAND, idempotency_key=key))
        # With money on the wallet, the retry still gets the stored refusal.
        await top_up(bar, BAND, 2000)
        retry = await rejection(charge(bar, BAND, idempotency_key=key))
        new_key = await charge(bar, BAND)

    assert first.code == "insufficient-funds"
    assert retry.code == first.code
    assert retry.message == first.message
    assert retry.details == first.details
    assert new_key["balance"] == 2100 - 450


# Concurrency


async def test_concurrent_charges_stop_at_balance(
    box: Box, terminal: TerminalFactory
) -> None:
    requests = 200
    start = 9100
    affordable = start // PRICES["beer"]  # 20 beers, 100 cents left
    async with (
        terminal("bar-1") as bar_1,
        terminal("bar-2") as bar_2,
        terminal("merch-1") as merch,
    ):
        await top_up(bar_1, BAND, start)
        tills = (bar_1, bar_2, merch)
        results = await asyncio.gather(
            *(
                tills[index % len(tills)].call(
                    "wallet",
                    "charge",
                    timeout_s=30.0,
                    band=BAND,
                    item="beer",
                    amount=PRICES["beer"],
                    currency="EUR",
                )
                for index in range(requests)
            ),
            return_exceptions=True,
        )

    successes = [result for result in results if isinstance(result, dict)]
    errors = [result for result in results if isinstance(result, RequestError)]
    assert len(successes) == affordable
    assert len(errors) == requests - affordable
    assert {error.code for error in errors} == {"insufficient-funds"}
    final = start - affordable * PRICES["beer"]
    assert final >= 0
    assert stored_balance(box, BAND) == final
    assert min(success["balance"] for success in successes) == final
    assert ledger_check(box.store).ok
    assert box.store.query(
        "SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'charge'"
    ) == [(affordable,)]


async def test_concurrent_retries_charge_once(
    box: Box, terminal: TerminalFactory
) -> None:
    key = uuid.uuid4().hex
    async with terminal("bar-1") as bar_1:
        await top_up(bar_1, BAND, 2000)
        replies = await asyncio.gather(
            *(
                bar_1.call(
                    "wallet",
                    "charge",
                    timeout_s=30.0,
                    idempotency_key=key,
                    band=BAND,
                    item="beer",
                    amount=PRICES["beer"],
                    currency="EUR",
                )
                for index in range(100)
            )
        )

    assert len({json.dumps(reply, sort_keys=True) for reply in replies}) == 1
    assert stored_balance(box, BAND) == 2000 - 450
    assert box.store.query(
        "SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'charge'"
    ) == [(1,)]
    assert ledger_check(box.store).ok


async def test_same_key_other_terminal_independent(
    box: Box, terminal: TerminalFactory
) -> None:
    # Keys belong to the terminal that sends them: another terminal's equal
    # key neither replays nor blocks its reply.
    key = "order-0001"
    async with terminal("bar-1") as bar_1, terminal("bar-2") as bar_2:
        await top_up(bar_1, BAND, 2000)
        first = await charge(bar_1, BAND, idempotency_key=key)
        second = await charge(bar_2, BAND, idempotency_key=key)

    assert first["transaction_id"] != second["transaction_id"]
    assert first["terminal"] == "bar-1"
    assert second["terminal"] == "bar-2"
    assert stored_balance(box, BAND) == 2000 - 2 * 450
    assert box.store.query(
        "SELECT requester FROM requests WHERE key = ? ORDER BY requester", (key,)
    ) == [("terminal/bar-1",), ("terminal/bar-2",)]


# Balance


async def test_balance_query_without_key(box: Box, terminal: TerminalFactory) -> None:
    async with terminal("bar-1") as bar:
        await top_up(bar, BAND, 2000)
        sold = await charge(bar, BAND, quantity=2)
        await bar.call(
            "wallet", "refund", transaction_id=sold["transaction_id"], amount=450
        )
        topic = bar.bus.topics.api("wallet", "balance")
        balance = await bar.bus.request(topic, {"band": BAND}, token=bar.token)
        empty = await bar.bus.request(topic, {"band": OTHER_BAND}, token=bar.token)

    assert balance == {
        "band": BAND,
        "balance": 1550,
        "currency": "EUR",
        "night": box.config.commerce.night_of(time.time()),
        "spent_tonight": 450,
    }
    assert empty["balance"] == 0
    assert empty["spent_tonight"] == 0
    assert box.store.query(
        "SELECT COUNT(*) FROM requests WHERE action = 'wallet/balance'"
    ) == [(0,)]
