"""Live figures per creator and set, published as sales and claims commit.

The figures are computed from the ledger and the drop claims of the current
night, never counted in memory, so a restart or a refund cannot skew them.

Creators see these figures, the operator's console shows them and the
studio burns them into the stream, so they follow the box's rule for figures
about guests (:mod:`appliance.analytics.suppression`): a figure behind which
one to four distinct guests (bands) stand is published as null. No night
totals per creator are published, so a hidden set cannot be recovered by
subtracting the shown sets from a total. The exact amounts stay in the
ledger and in ``nightbox wallet report``, the organiser's reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance.analytics.suppression import Figure, Group, Relation, suppress
from appliance.bus.client import Bus
from appliance.clock import Clock
from appliance.commerce.config import CommerceConfig
from appliance.store import OutboxEvent, Store

_LOGGER = logging.getLogger(__name__)

_EVENTS = {
    "wallet_charge",
    "wallet_refund",
    "wallet_void",
    "drop_claimed",
    "drop_claim_paid",
    "drop_claim_expired",
    "drop_claim_cancelled",
}

# The published figures of a set, in the order they appear in its object.
SET_FIGURES = ("sales", "revenue", "claims", "claims_paid")

# Each published group of a set and the figures it shows. Sales and revenue
# are about the same guests, the buyers.
_SHOWN_GROUPS = {
    "buyers": ("sales", "revenue"),
    "claimers": ("claims",),
    "paid_claimers": ("claims_paid",),
}

# A reader who subtracts two shown figures learns about the guests behind
# the difference, so those guests form implicit groups. claims - claims_paid
# counts the open reservations, and sales - claims_paid the sales that paid
# for no drop claim (each paid claim is one charge).
_RELATIONS = (
    Relation(
        Figure("claimers", "claims"),
        (Figure("paid_claimers", "claims_paid"), Figure("reserving", "claims")),
    ),
    Relation(
        Figure("buyers", "sales"),
        (Figure("paid_claimers", "claims_paid"), Figure("other_buyers", "sales")),
    ),
)


@dataclass(slots=True)
class _SetTally:
    """The counts of one set's figures and the distinct bands behind each."""

    sales: int = 0
    revenue: int = 0
    claims: int = 0
    claims_paid: int = 0
    other_sales: int = 0
    guests: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("buyers", "other_buyers", "claimers", "paid_claimers", "reserving"), 0
        )
    )

    def published(self) -> dict[str, Any]:
        """Return the set's published figures, those of suppressed groups as None."""
        groups = {
            name: Group(
                self.guests[name],
                {figure: getattr(self, figure) for figure in figure_names},
            )
            for name, figure_names in _SHOWN_GROUPS.items()
        }
        groups["reserving"] = Group(
            self.guests["reserving"],
            {"claims": self.claims - self.claims_paid},
            shown=False,
        )
        groups["other_buyers"] = Group(
            self.guests["other_buyers"], {"sales": self.other_sales}, shown=False
        )
        hidden = suppress(groups, _RELATIONS)
        result: dict[str, Any] = {
            figure: getattr(self, figure) for figure in SET_FIGURES
        }
        for name in hidden & _SHOWN_GROUPS.keys():
            result.update(dict.fromkeys(_SHOWN_GROUPS[name]))
        result["suppressed"] = any(value is None for value in result.values())
        return result


class CreatorFigures:
    """Publishes retained figures on ``creators/<id>/figures`` for each creator."""

    def __init__(
        self, bus: Bus, store: Store, config: CommerceConfig, clock: Clock
    ) -> None:
        self._bus = bus
        self._store = store
        self._config = config
        self._clock = clock
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        store.on_commit(self._on_commit)
        bus.on_connect(self._on_connect)

    def _on_commit(self, events: list[OutboxEvent]) -> None:
        for event in events:
            if event.type in _EVENTS:
                creator = event.data.get("creator")
                if isinstance(creator, str):
                    self._dirty.add(creator)
                elif event.type.startswith("drop_claim_"):
                    # Expiry and cancel events name the claim, not its creator.
                    self._dirty.update(c.id for c in self._config.creators)
        if self._dirty:
            self._wake.set()

    async def _on_connect(self) -> None:
        self._dirty.update(creator.id for creator in self._config.creators)
        self._wake.set()

    async def start(self) -> None:
        """Start publishing."""
        self._task = asyncio.create_task(self._run(), name="creator-figures")

    async def stop(self) -> None:
        """Stop publishing."""
        # The flag ends the loop even if a cancellation is dropped (see
        # cancel_and_wait).
        self._stopping = True
        self._wake.set()
        await cancel_and_wait(self._task)

    def figures(self, creator: str) -> dict[str, Any]:
        """Return tonight's sales and drop claims of ``creator``, by set.

        Each set lists ``sales``, ``revenue``, ``claims`` and ``claims_paid``.
        A figure about one to four distinct guests is None, and so is a
        figure that would give such a figure back by subtraction. The set's
        ``suppressed`` is True when any of its figures is None.
        """
        night = self._config.night_of(self._clock.now())
        tallies = self._tally(creator, night)
        return {
            "creator": creator,
            "night": night,
            "currency": self._config.wallet.currency,
            "sets": {set_id: tally.published() for set_id, tally in tallies.items()},
        }

    def _tally(self, creator: str, night: str) -> dict[str, _SetTally]:
        """Count the figures of ``creator`` on ``night`` and the guests behind them."""
        tallies: dict[str, _SetTally] = {}

        def tally(set_id: str | None) -> _SetTally:
            return tallies.setdefault(set_id or "none", _SetTally())

        for set_id, kind, count, total in self._store.query(
            "SELECT set_id, kind, COUNT(*), SUM(amount) FROM ledger_transactions"
            " WHERE creator = ? AND night = ? AND kind IN ('charge', 'refund')"
            " AND voided_by IS NULL GROUP BY set_id, kind",
            (creator, night),
        ):
            figures = tally(set_id)
            if kind == "charge":
                figures.sales += count
                figures.revenue += total
            else:
                figures.revenue -= total
        # A refund goes back to the band that was charged, so the buyers are
        # the bands of the charges and refunds alike.
        for set_id, buyers, other_buyers, other_sales in self._store.query(
            "SELECT set_id, COUNT(DISTINCT band),"
            " COUNT(DISTINCT CASE WHEN kind = 'charge' AND drop_claim IS NULL"
            " THEN band END),"
            " COUNT(CASE WHEN kind = 'charge' AND drop_claim IS NULL THEN 1 END)"
            " FROM ledger_transactions WHERE creator = ? AND night = ?"
            " AND kind IN ('charge', 'refund') AND voided_by IS NULL"
            " GROUP BY set_id",
            (creator, night),
        ):
            figures = tally(set_id)
            figures.other_sales = other_sales
            figures.guests["buyers"] = buyers
            figures.guests["other_buyers"] = other_buyers
        for set_id, status, count in self._store.query(
            "SELECT c.set_id, c.status, COUNT(*) FROM drop_claims c"
            " WHERE c.creator = ? AND c.night = ? GROUP BY c.set_id, c.status",
            (creator, night),
        ):
            figures = tally(set_id)
            if status in ("reserved", "paid"):
                figures.claims += count
            if status == "paid":
                figures.claims_paid += count
        for set_id, claimers, paid_claimers, reserving in self._store.query(
            "SELECT set_id,"
            " COUNT(DISTINCT CASE WHEN status IN ('reserved', 'paid') THEN band END),"
            " COUNT(DISTINCT CASE WHEN status = 'paid' THEN band END),"
            " COUNT(DISTINCT CASE WHEN status = 'reserved' THEN band END)"
            " FROM drop_claims WHERE creator = ? AND night = ? GROUP BY set_id",
            (creator, night),
        ):
            guests = tally(set_id).guests
            guests["claimers"] = claimers
            guests["paid_claimers"] = paid_claimers
            guests["reserving"] = reserving
        return tallies

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for creator in sorted(dirty):
                topic = self._bus.topics.creator_figures(creator)
                try:
                    await self._bus.publish_json(
                        topic, {"data": self.figures(creator)}, retain=True
                    )
                except (aiomqtt.MqttError, TimeoutError) as err:
                    _LOGGER.warning("Could not publish figures of %s: %s", creator, err)
                    self._dirty.add(creator)
