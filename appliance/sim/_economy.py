"""The economy of a simulated night: top-ups, bar sales and a microdrop.

Guests top up at the desk after they arrive and buy drinks at the bar while
they stay. Some claim a limited tee the moment its drop opens, all at once
from two terminals, which is the contention the drop is built for. The same
seed gives the same purchases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from appliance.bus.client import Bus
from appliance.commerce.config import (
    CommerceConfig,
    Creator,
    DropConfig,
    Item,
    PartnerOffer,
    SetSlot,
    WalletConfig,
)
from appliance.errors import RequestError
from appliance.sim._world import Guest, NightPlan

_LOGGER = logging.getLogger(__name__)

BAR = "bar-1"
MERCH = "merch-1"
DRINKS = {"beer": 450, "water": 250}
TEE_PRICE = 3500
LATE_DROP = "tee-late"
# The late drop opens at this fraction of the night.
LATE_DROP_AT = 0.5
# The late drop ends this long after the night. The demo's clock stops at the
# night's end, so with ``--hold`` a guest on a phone can still claim it.
LATE_DROP_AFTER_NIGHT_S = 12 * 3600.0
_TOP_UPS = (2000, 3000, 5000, 8000)


def demo_commerce(plan: NightPlan) -> CommerceConfig:
    """Return the demo site's economy: a bar, a creator's set and two tee drops.

    The first drop has a unit for about one guest in ten and opens at 40 % of
    the night, when most guests are inside. The late drop opens at
    ``LATE_DROP_AT`` of the night for guests claiming from the portal on their
    phones, and ends ``LATE_DROP_AFTER_NIGHT_S`` after the night. The
    simulated terminals never claim it, so it still has units when a guest
    on the portal claims one.
    """
    drop_start = plan.start_s + 0.4 * plan.duration_s
    partner_codes = tuple(f"NORD-{n:04d}" for n in range(max(1, len(plan.guests) // 8)))
    return CommerceConfig(
        wallet=WalletConfig(currency="EUR"),
        items=(
            Item("beer", "Beer", price=DRINKS["beer"]),
            Item("water", "Water", price=DRINKS["water"]),
            Item("tee", "Drop tee", price=TEE_PRICE),
        ),
        creators=(Creator("maya", "Maya", "MAYA"),),
        partner_offers=(
            PartnerOffer(
                "hotel-nord",
                "Hotel Nord",
                "Recovery microcation: 20% off",
                partner_codes,
            ),
        ),
        sets=(SetSlot("maya-live", "maya", plan.start_s, plan.end_s),),
        drops=(
            DropConfig(
                "tee-drop",
                "tee",
                price=TEE_PRICE,
                quantity=max(1, len(plan.guests) // 10),
                starts_at=drop_start,
                ends_at=plan.end_s,
                per_guest_limit=1,
                creator="maya",
            ),
            DropConfig(
                LATE_DROP,
                "tee",
                price=TEE_PRICE,
                quantity=max(1, len(plan.guests) // 50),
                starts_at=plan.start_s + LATE_DROP_AT * plan.duration_s,
                ends_at=plan.end_s + LATE_DROP_AFTER_NIGHT_S,
                per_guest_limit=1,
                creator="maya",
            ),
        ),
        terminals=(BAR, MERCH),
    )


@dataclass(frozen=True, slots=True)
class Terminal:
    """A terminal's bus client with its edge token."""

    bus: Bus
    token: str

    async def request(self, service: str, action: str, data: dict[str, Any]) -> Any:
        """Send a request with the terminal's token; return the reply data."""
        topic = self.bus.topics.api(service, action)
        return await self.bus.request(topic, data, timeout_s=5, token=self.token)


@dataclass
class EconomyTally:
    """Counts of the night's wallet requests and the box's refusals."""

    topups: int = 0
    topped_up: int = 0
    charges: int = 0
    charged: int = 0
    drop_sold: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    ledger_ok: bool | None = None


@dataclass(frozen=True, slots=True)
class Purchase:
    """One thing a guest does with their wallet."""

    at: float
    kind: str
    guest: Guest
    amount: int = 0
    item: str = ""
    number: int = 0


def plan_purchases(plan: NightPlan, commerce: CommerceConfig) -> list[Purchase]:
    """Return every top-up, drink and drop claim of the night, in time order."""
    rng = random.Random(plan.seed * 7919 + 1)
    drop = commerce.drops[0]
    purchases: list[Purchase] = []
    for guest in plan.guests:
        if rng.random() >= 0.7:
            continue
        leave = guest.leave_s if guest.leave_s is not None else plan.end_s
        top_up_at = guest.arrive_s + 90.0
        if top_up_at >= leave:
            continue
        inside_at_drop = top_up_at < drop.starts_at < leave
        claims = inside_at_drop and rng.random() < 0.35
        # Guests who want the tee top up enough for it and four drinks. Which
        # of them win a unit depends on the order the claims arrive in, so
        # no claim may fail for want of funds, or reruns would differ.
        amount = max(_TOP_UPS) if claims else rng.choice(_TOP_UPS)
        purchases.append(Purchase(top_up_at, "topup", guest, amount=amount))
        for _ in range(rng.randint(0, 4)):
            at = rng.uniform(top_up_at + 60.0, max(top_up_at + 61.0, leave - 30.0))
            item = "beer" if rng.random() < 0.75 else "water"
            purchases.append(Purchase(at, "drink", guest, DRINKS[item], item))
        if claims:
            purchases.append(Purchase(drop.starts_at, "drop", guest))
    purchases.sort(key=lambda p: (p.at, p.guest.band.index, p.kind))
    return [
        dataclasses.replace(purchase, number=number)
        for number, purchase in enumerate(purchases)
    ]


def _key(purchase: Purchase) -> str:
    # Keys are fixed by the plan, so a rerun of a seed sends the same keys.
    return str(uuid.UUID(int=(3 << 64) + purchase.number))


async def run_purchases(
    due: list[Purchase],
    bar: Terminal,
    merch: Terminal,
    tally: EconomyTally,
) -> None:
    """Send the purchases that are due; drop claims go out all at once."""
    claims = [p for p in due if p.kind == "drop"]
    for purchase in due:
        if purchase.kind == "drop":
            continue
        band = purchase.guest.band.band_id
        key = _key(purchase)
        try:
            if purchase.kind == "topup":
                data = {
                    "band": band,
                    "amount": purchase.amount,
                    "currency": "EUR",
                    "method": "cash" if purchase.guest.band.index % 3 else "card",
                    "idempotency_key": key,
                }
                await bar.request("wallet", "topup", data)
                tally.topups += 1
                tally.topped_up += purchase.amount
            else:
                data = {
                    "band": band,
                    "item": purchase.item,
                    "amount": purchase.amount,
                    "currency": "EUR",
                    "idempotency_key": key,
                }
                await bar.request("wallet", "charge", data)
                tally.charges += 1
                tally.charged += purchase.amount
        except RequestError as err:
            tally.refused[err.code] += 1
    if claims:
        await asyncio.gather(
            *(
                _claim(merch if index % 2 else bar, claim, tally)
                for index, claim in enumerate(claims)
            )
        )


async def _claim(terminal: Terminal, purchase: Purchase, tally: EconomyTally) -> None:
    data = {
        "drop": "tee-drop",
        "band": purchase.guest.band.band_id,
        "pay": True,
        "idempotency_key": _key(purchase),
    }
    try:
        await terminal.request("drops", "claim", data)
        tally.drop_sold += 1
    except RequestError as err:
        tally.refused[err.code] += 1
