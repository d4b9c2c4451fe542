"""Live figures per creator and set, published as sales and claims commit.

The figures are computed from the ledger and the drop claims of the current
night, never counted in memory, so a restart or a refund cannot skew them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiomqtt

from appliance._tasks import cancel_and_wait
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
        """Return tonight's sales and drop claims of ``creator``, by set."""
        night = self._config.night_of(self._clock.now())
        sets: dict[str, dict[str, int]] = {}

        def slot(set_id: str | None) -> dict[str, int]:
            return sets.setdefault(
                set_id or "none",
                {"sales": 0, "revenue": 0, "claims": 0, "claims_paid": 0},
            )

        for set_id, kind, count, total in self._store.query(
            "SELECT set_id, kind, COUNT(*), SUM(amount) FROM ledger_transactions"
            " WHERE creator = ? AND night = ? AND kind IN ('charge', 'refund')"
            " AND voided_by IS NULL GROUP BY set_id, kind",
            (creator, night),
        ):
            figures = slot(set_id)
            if kind == "charge":
                figures["sales"] += count
                figures["revenue"] += total
            else:
                figures["revenue"] -= total
        for set_id, status, count in self._store.query(
            "SELECT c.set_id, c.status, COUNT(*) FROM drop_claims c"
            " WHERE c.creator = ? AND c.night = ? GROUP BY c.set_id, c.status",
            (creator, night),
        ):
            figures = slot(set_id)
            if status in ("reserved", "paid"):
                figures["claims"] += count
            if status == "paid":
                figures["claims_paid"] += count
        return {
            "creator": creator,
            "night": night,
            "currency": self._config.wallet.currency,
            "sets": sets,
        }

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
