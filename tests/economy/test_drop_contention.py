"""A drop under a rush of claims never oversells and never double-charges.

Four POS terminals send 10,000 claims for the 500 units of "tee-drop" (2 per
guest) for 2,000 guests over the real mosquitto, with up to 1,000 requests
in flight at once. A slice of the claims is sent twice with the
same idempotency key, as a terminal does after a lost reply. The store is
then checked row by row: exactly 500 units reserved, none oversold, no guest
above the limit, and every retry given the reply to its first send. Paying a
sample of claims twice at once from two terminals charges each one once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from economy_site import (
    TERMINALS,
    Terminal,
    TerminalFactory,
    economy_site_config,  # noqa: F401
    terminal_fixture,  # noqa: F401
    top_up,
)

from appliance.errors import RequestError
from appliance.runtime import Box
from appliance.wallet._ledger import ledger_check

QUANTITY = 500
LIMIT = 2
PRICE = 3500
CLAIMS = 10_000
GUESTS = 2_000
RETRIES = 1_000
PAID = 100
TOP_UP = 10_000
# Requests awaiting a reply at once, over all terminals. The broker's queue
# for the box (max_queued_messages 20000) has room for 20 times as many.
IN_FLIGHT = 1000
TIMEOUT_S = 60.0
SEED = 20261205

# (outcome, detail): ("ok", reply data) or (error code, error message).
Outcome = tuple[str, Any]


async def send_claim(
    bar: Terminal, key: str, band: str, slots: asyncio.Semaphore
) -> Outcome:
    async with slots:
        try:
            reply = await bar.call(
                "drops",
                "claim",
                drop="tee-drop",
                band=band,
                idempotency_key=key,
                timeout_s=TIMEOUT_S,
            )
        except RequestError as err:
            return err.code, err.message
    return "ok", reply


async def send_pay(bar: Terminal, claim_id: str) -> Outcome:
    try:
        reply = await bar.call("drops", "pay", claim=claim_id, timeout_s=TIMEOUT_S)
    except RequestError as err:
        return err.code, err.message
    return "ok", reply


def scalar(box: Box, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
    row = box.store.query_one(sql, parameters)
    assert row is not None, f"no row for {sql}"
    return row[0]


@dataclass(frozen=True, slots=True)
class PlannedClaim:
    """One claim of the rush: which terminal sends it, its key and its band."""

    terminal: int
    key: str
    band: str


def plan_rush(rng: random.Random) -> tuple[list[PlannedClaim], list[int], list[int]]:
    """Return the claims, the indices of those sent twice, and the send order."""
    claims = [
        PlannedClaim(
            index % len(TERMINALS),
            f"rush-claim-{index:05d}",
            f"ib-7-{rng.randrange(GUESTS)}",
        )
        for index in range(CLAIMS)
    ]
    retried = rng.sample(range(CLAIMS), RETRIES)
    # Retries are shuffled in with the first sends, so some share a commit
    # group with their original and some arrive after it.
    schedule = list(range(CLAIMS)) + retried
    rng.shuffle(schedule)
    return claims, retried, schedule


async def test_drop_rush_never_oversells(box: Box, terminal: TerminalFactory) -> None:
    claims, retried, schedule = plan_rush(random.Random(SEED))

    async with contextlib.AsyncExitStack() as stack:
        bars = [
            await stack.enter_async_context(terminal(terminal_id))
            for terminal_id in TERMINALS
        ]
        slots = asyncio.Semaphore(IN_FLIGHT)
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                send_claim(
                    bars[claims[i].terminal], claims[i].key, claims[i].band, slots
                )
                for i in schedule
            )
        )
        elapsed = time.perf_counter() - started
        print(
            f"\n{len(schedule)} claims ({RETRIES} of them retries) from {len(bars)} "
            f"terminals in {elapsed:.1f} s: {len(schedule) / elapsed:.0f} claims/s"
        )

        answers: dict[int, list[Outcome]] = {}
        for i, outcome in zip(schedule, outcomes, strict=True):
            answers.setdefault(i, []).append(outcome)
        codes = Counter(pair[0][0] for pair in answers.values())
        winners = {i: pair[0][1] for i, pair in answers.items() if pair[0][0] == "ok"}
        won_by_band = Counter(claims[i].band for i in winners)

        # Every claim got a reply: a reservation, sold-out or limit-reached.
        assert len(answers) == CLAIMS
        assert set(codes) <= {"ok", "sold-out", "limit-reached"}, codes
        assert codes["ok"] == QUANTITY
        assert codes["sold-out"] > 0
        assert codes["limit-reached"] > 0
        # Each unit was taken once: the replies count the stock down 499..0.
        available_seen = sorted(reply["available"] for reply in winners.values())
        assert available_seen == list(range(QUANTITY))
        assert len({reply["claim"] for reply in winners.values()}) == QUANTITY
        assert max(won_by_band.values()) <= LIMIT

        # A retry got the reply to its first send, claim id included.
        retry_answers = [answers[i] for i in retried]
        assert [len(pair) for pair in retry_answers] == [2] * RETRIES
        assert [pair for pair in retry_answers if pair[0] != pair[1]] == []
        assert box.requests.counts["replayed"] == RETRIES
        assert scalar(box, "SELECT COUNT(*) FROM requests") == CLAIMS

        # The store agrees with the replies, row by row.
        assert scalar(box, "SELECT available FROM drops WHERE id = 'tee-drop'") == 0
        units_taken = scalar(
            box,
            "SELECT COUNT(*) FROM drop_claims WHERE drop_id = 'tee-drop'"
            " AND status IN ('reserved', 'paid')",
        )
        assert units_taken == QUANTITY
        assert scalar(box, "SELECT COUNT(*) FROM drop_claims") == QUANTITY
        band_of_claim = dict(box.store.query("SELECT id, band FROM drop_claims"))
        assert set(band_of_claim) == {reply["claim"] for reply in winners.values()}
        claims_per_band = dict(
            box.store.query(
                "SELECT band, COUNT(*) FROM drop_claims WHERE drop_id = 'tee-drop'"
                " AND status IN ('reserved', 'paid') GROUP BY band"
            )
        )
        holdings = dict(
            box.store.query(
                "SELECT band, units FROM drop_holdings"
                " WHERE drop_id = 'tee-drop' AND units > 0"
            )
        )
        assert max(holdings.values()) <= LIMIT
        assert holdings == claims_per_band
        assert claims_per_band == dict(won_by_band)
        assert box.drops.stock()["tee-drop"] == {
            "quota": QUANTITY,
            "available": 0,
            "reserved": QUANTITY,
            "paid": 0,
        }

        # Pay a sample of the claims twice at once, from two terminals each.
        to_pay = sorted(reply["claim"] for reply in winners.values())[:PAID]
        paid_per_band = Counter(band_of_claim[claim_id] for claim_id in to_pay)
        await asyncio.gather(*(top_up(bars[0], band, TOP_UP) for band in paid_per_band))
        payments = await asyncio.gather(
            *(
                send_pay(bars[(n + offset) % len(bars)], claim_id)
                for n, claim_id in enumerate(to_pay)
                for offset in (1, 2)
            )
        )

        payment_codes = [
            sorted(code for code, _detail in payments[2 * n : 2 * n + 2])
            for n in range(PAID)
        ]
        assert payment_codes == [["claim-paid", "ok"]] * PAID
        charges = dict(
            box.store.query(
                "SELECT drop_claim, COUNT(*) FROM ledger_transactions"
                " WHERE kind = 'charge' GROUP BY drop_claim"
            )
        )
        assert charges == {claim_id: 1 for claim_id in to_pay}
        balances = dict(box.store.query("SELECT band, balance FROM wallets"))
        assert balances == {
            band: TOP_UP - PRICE * count for band, count in paid_per_band.items()
        }
        assert box.drops.stock()["tee-drop"] == {
            "quota": QUANTITY,
            "available": 0,
            "reserved": QUANTITY - PAID,
            "paid": PAID,
        }
        check = ledger_check(box.store)
        assert check.ok, check.to_json()
