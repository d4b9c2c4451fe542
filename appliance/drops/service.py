"""Limited microdrops that never oversell, served over bus requests.

A claim reserves one unit for the drop's reservation time. Paying from the
wallet confirms it and gives a pick-up code, and an unpaid reservation
expires and returns its unit. Two SQLite guards make overselling impossible even
under a bug in this file: ``drops.available`` has ``CHECK (available >= 0)``
and is only taken with a conditional ``UPDATE``, and ``drop_holdings``
counts each guest's units against the per-guest limit the same way.

Each box sells only its own quota of a drop (``quotas`` in the site
configuration), so several boxes selling one drop never coordinate online.

Drops come from the site file, known at start, or are created while the box
runs (from the terminal console); a created drop's definition lives in the
store's ``added_drops`` and it is served like a configured one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from typing import Any

from appliance._tasks import cancel_and_wait
from appliance.clock import Clock
from appliance.commerce._pricing import Pricing
from appliance.commerce.config import CommerceConfig, DropConfig
from appliance.errors import PayloadError
from appliance.kits import _validation
from appliance.kits._coupons import coupon_code, normalise_coupon_code
from appliance.requests import Refusal, Request, RequestServer
from appliance.store import Store, Transaction
from appliance.wallet import _amounts
from appliance.wallet.service import HELD_UNITS, WalletService, return_drop_unit

_LOGGER = logging.getLogger(__name__)

_SWEEP_INTERVAL_S = 1.0


class DropService:
    """Serves ``api/drops/*`` and expires unpaid reservations."""

    def __init__(
        self,
        requests: RequestServer,
        store: Store,
        config: CommerceConfig,
        box_id: str,
        clock: Clock,
        pricing: Pricing,
        wallet: WalletService,
    ) -> None:
        self._requests = requests
        self._store = store
        self._config = config
        self._box_id = box_id
        self._clock = clock
        self._pricing = pricing
        self._wallet = wallet
        self._drops = {drop.id: drop for drop in config.drops}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Seed this box's quota of every drop and start serving requests."""
        with self._store.transaction() as transaction:
            for drop in self._config.drops:
                quota = drop.quota(self._box_id)
                # A changed quota keeps every unit already reserved or paid, and
                # the rest of the quota becomes available.
                transaction.execute(
                    "INSERT INTO drops (id, item, price, currency, quota, available)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                    " item = excluded.item, price = excluded.price,"
                    " quota = excluded.quota,"
                    " available = MAX(0, excluded.quota - (" + HELD_UNITS + "))",
                    (
                        drop.id,
                        drop.item,
                        drop.price,
                        self._config.wallet.currency,
                        quota,
                        quota,
                    ),
                )
        serve = self._requests.serve
        serve("drops", "claim", self._claim, scope="drops:claim")
        serve("drops", "pay", self._pay, scope="drops:claim")
        serve("drops", "cancel", self._cancel, scope="drops:claim")
        serve("drops", "pickup", self._pickup, scope="drops:pickup")
        serve("drops", "start", self._start_drop, scope="drops:manage")
        serve("drops", "stop", self._stop_drop, scope="drops:manage")
        serve("drops", "status", self._status, scope="drops:claim", mutating=False)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="drop-sweeper")

    async def stop(self) -> None:
        """Stop expiring reservations; expired ones are swept at the next start."""
        await cancel_and_wait(self._sweeper)

    def stock(self) -> dict[str, dict[str, int]]:
        """Return quota, available, reserved and paid units per drop."""
        result: dict[str, dict[str, int]] = {}
        for drop_id, quota, available in self._store.query(
            "SELECT id, quota, available FROM drops ORDER BY id"
        ):
            counts = dict(
                self._store.query(
                    "SELECT status, COUNT(*) FROM drop_claims WHERE drop_id = ?"
                    " AND status IN ('reserved', 'paid') GROUP BY status",
                    (drop_id,),
                )
            )
            result[drop_id] = {
                "quota": quota,
                "available": available,
                "reserved": counts.get("reserved", 0),
                "paid": counts.get("paid", 0),
            }
        return result

    def expire_reservations(self, transaction: Transaction, now: float) -> int:
        """Expire unpaid reservations whose time is up; return how many."""
        rows = transaction.execute(
            "SELECT id, drop_id, band FROM drop_claims"
            " WHERE status = 'reserved' AND expires_at <= ?",
            (now,),
        ).fetchall()
        for claim_id, drop_id, band in rows:
            transaction.execute(
                "UPDATE drop_claims SET status = 'expired' WHERE id = ?", (claim_id,)
            )
            return_drop_unit(transaction, drop_id, band)
            transaction.emit(
                "drop_claim_expired", {"claim": claim_id, "drop": drop_id, "band": band}
            )
        return len(rows)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                with self._store.transaction() as transaction:
                    expired = self.expire_reservations(transaction, self._clock.now())
                if expired:
                    _LOGGER.info("Expired %d unpaid drop reservations", expired)
            except sqlite3.Error as err:
                _LOGGER.warning("Could not expire drop reservations: %s", err)
            await asyncio.sleep(_SWEEP_INTERVAL_S)

    def find(self, drop_id: str) -> DropConfig | None:
        """Return the configured or created drop ``drop_id``, or None.

        A created drop is read on the event loop's connection, so one created
        earlier in the open transaction is found too.
        """
        drop = self._drops.get(drop_id)
        if drop is not None:
            return drop
        row = self._store.query_one(
            "SELECT d.item, d.price, d.quota, a.starts_at, a.ends_at,"
            " a.per_guest_limit, a.reservation_s, a.creator"
            " FROM added_drops a JOIN drops d ON d.id = a.id WHERE a.id = ?",
            (drop_id,),
        )
        if row is None:
            return None
        item, price, quota, starts_at, ends_at, limit, reservation_s, creator = row
        return DropConfig(
            id=drop_id,
            item=item,
            price=price,
            quantity=quota,
            starts_at=starts_at,
            ends_at=ends_at,
            per_guest_limit=limit,
            reservation_s=reservation_s,
            creator=creator,
        )

    def all_drops(self) -> list[DropConfig]:
        """Return the configured drops, then the created ones in creation order."""
        added = [
            row[0]
            for row in self._store.query(
                "SELECT id FROM added_drops ORDER BY created_at, id"
            )
            if row[0] not in self._drops
        ]
        found = (self.find(drop_id) for drop_id in added)
        return [*self._drops.values(), *(drop for drop in found if drop is not None)]

    def create(
        self, transaction: Transaction, drop: DropConfig, *, by: str
    ) -> DropConfig:
        """Add a validated drop for this box in ``transaction``, with its event.

        Raises Refusal ``drop-exists`` when a drop with its id exists.
        """
        if self.find(drop.id) is not None:
            raise Refusal(
                "drop-exists",
                f"drop {drop.id} exists already; choose another id",
                drop=drop.id,
            )
        now = self._clock.now()
        transaction.execute(
            "INSERT INTO drops (id, item, price, currency, quota, available)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                drop.id,
                drop.item,
                drop.price,
                self._config.wallet.currency,
                drop.quantity,
                drop.quantity,
            ),
        )
        transaction.execute(
            "INSERT INTO added_drops (id, starts_at, ends_at, per_guest_limit,"
            " reservation_s, creator, created_at, created_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                drop.id,
                drop.starts_at,
                drop.ends_at,
                drop.per_guest_limit,
                drop.reservation_s,
                drop.creator,
                now,
                by,
            ),
        )
        transaction.emit(
            "drop_created",
            {
                "drop": drop.id,
                "item": drop.item,
                "price": drop.price,
                "quota": drop.quantity,
                "starts_at": drop.starts_at,
                "ends_at": drop.ends_at,
                "per_guest_limit": drop.per_guest_limit,
                "creator": drop.creator,
                "by": by,
            },
        )
        _LOGGER.info("Drop %s created by %s: %d units", drop.id, by, drop.quantity)
        return drop

    def _drop(self, data: dict[str, Any]) -> DropConfig:
        drop_id = data.get("drop")
        drop = self.find(drop_id) if isinstance(drop_id, str) else None
        if drop is None:
            known = ", ".join(d.id for d in self.all_drops()) or "none exist"
            raise PayloadError(
                f"field 'drop' = {drop_id!r:.40} is not a drop of this site ({known})"
            )
        return drop

    def _check_open(
        self, transaction: Transaction, drop: DropConfig, band: str, now: float
    ) -> None:
        (state,) = transaction.execute(
            "SELECT state FROM drops WHERE id = ?", (drop.id,)
        ).fetchone()
        if state == "stopped":
            raise Refusal("drop-closed", f"drop {drop.id} was stopped")
        if now >= drop.ends_at:
            raise Refusal("drop-ended", f"drop {drop.id} has ended")
        if state == "live" or now >= drop.starts_at:
            return
        if now >= drop.starts_at - drop.early_access_s:
            tier = self._pricing.tier_of(transaction, band)
            if tier is not None and tier.early_access:
                return
            raise Refusal(
                "members-only",
                f"drop {drop.id} is open to members with early access until "
                f"{drop.starts_at:.0f}",
                opens_at=drop.starts_at,
            )
        raise Refusal(
            "not-started",
            f"drop {drop.id} opens at {drop.starts_at:.0f}",
            opens_at=drop.starts_at - drop.early_access_s,
        )

    def _claim(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        drop = self._drop(data)
        band = _validation.band_id(data)
        pay = data.get("pay", False)
        if not isinstance(pay, bool):
            raise PayloadError(f"field 'pay' must be true or false, not {pay!r:.20}")
        creator = self._pricing.creator_of_code(data) or drop.creator
        now = self._clock.now()
        self.expire_reservations(transaction, now)
        self._check_open(transaction, drop, band, now)
        held = transaction.execute(
            "INSERT INTO drop_holdings (drop_id, band, units) VALUES (?, ?, 1)"
            " ON CONFLICT (drop_id, band) DO UPDATE SET units = units + 1"
            " WHERE units < ? RETURNING units",
            (drop.id, band, drop.per_guest_limit),
        ).fetchone()
        if held is None:
            raise Refusal(
                "limit-reached",
                f"band {band} already holds {drop.per_guest_limit} of drop {drop.id}",
                limit=drop.per_guest_limit,
            )
        taken = transaction.execute(
            "UPDATE drops SET available = available - 1"
            " WHERE id = ? AND available > 0 RETURNING available",
            (drop.id,),
        ).fetchone()
        if taken is None:
            raise Refusal("sold-out", f"drop {drop.id} has no units left")
        claim_id = uuid.uuid4().hex
        expires_at = now + drop.reservation_s
        slot = self._config.set_at(now)
        transaction.execute(
            "INSERT INTO drop_claims (id, drop_id, band, status, terminal, creator,"
            " set_id, night, reserved_at, expires_at)"
            " VALUES (?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?)",
            (
                claim_id,
                drop.id,
                band,
                request.requester,
                creator,
                None if slot is None else slot.id,
                self._config.night_of(now),
                now,
                expires_at,
            ),
        )
        transaction.emit(
            "drop_claimed",
            {
                "claim": claim_id,
                "drop": drop.id,
                "band": band,
                "creator": creator,
                "set": None if slot is None else slot.id,
                "available": int(taken[0]),
            },
        )
        reply: dict[str, Any] = {
            "claim": claim_id,
            "drop": drop.id,
            "status": "reserved",
            "expires_at": round(expires_at, 3),
            "available": int(taken[0]),
        }
        if pay:
            reply.update(self._pay_claim(transaction, claim_id, data, request, now))
        return reply

    def _reserved_claim(
        self, transaction: Transaction, claim_id: str, now: float
    ) -> tuple[str, str, str | None]:
        row = transaction.execute(
            "SELECT drop_id, band, status, expires_at, creator FROM drop_claims"
            " WHERE id = ?",
            (claim_id,),
        ).fetchone()
        if row is None:
            raise Refusal("unknown-claim", f"claim {claim_id} does not exist")
        drop_id, band, status, expires_at, creator = row
        if status == "reserved" and expires_at <= now:
            self.expire_reservations(transaction, now)
            status = "expired"
        if status != "reserved":
            raise Refusal(
                f"claim-{status}", f"claim {claim_id} is {status}", status=status
            )
        return drop_id, band, creator

    def _pay(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        claim_id = _amounts.identifier(request.data, "claim") or ""
        return self._pay_claim(
            transaction, claim_id, request.data, request, self._clock.now()
        )

    def _pay_claim(
        self,
        transaction: Transaction,
        claim_id: str,
        data: dict[str, Any],
        request: Request,
        now: float,
    ) -> dict[str, Any]:
        drop_id, band, creator = self._reserved_claim(transaction, claim_id, now)
        drop = self._drop({"drop": drop_id})
        price = self._pricing.price(
            transaction,
            band=band,
            item=self._config.item(drop.item),
            list_amount=drop.price,
            data={key: data[key] for key in ("promo_code",) if key in data},
            use="drops",
            now=now,
            default_creator=creator,
        )
        payment = self._wallet.charge(
            transaction,
            band=band,
            item=drop.item,
            quantity=1,
            list_amount=price.list_amount,
            discount=price.discount,
            promo_code=price.promo_code,
            creator=price.creator,
            terminal=request.requester,
            now=now,
            drop_claim=claim_id,
        )
        code = self._pickup_code(transaction, claim_id, payment["transaction_id"])
        transaction.emit(
            "drop_claim_paid",
            {
                "claim": claim_id,
                "drop": drop_id,
                "band": band,
                "transaction_id": payment["transaction_id"],
                "creator": price.creator,
            },
        )
        return {
            "status": "paid",
            "pickup_code": code,
            "transaction_id": payment["transaction_id"],
            "amount": payment["amount"],
            "balance": payment["balance"],
        }

    def _pickup_code(
        self, transaction: Transaction, claim_id: str, transaction_id: str
    ) -> str:
        for _attempt in range(5):
            code = coupon_code()
            try:
                transaction.execute(
                    "UPDATE drop_claims SET status = 'paid', pickup_code = ?,"
                    " transaction_id = ? WHERE id = ?",
                    (normalise_coupon_code(code), transaction_id, claim_id),
                )
            except sqlite3.IntegrityError:
                continue  # a code collision, 1 in 2^35 per claim: draw again
            return code
        raise RuntimeError("could not draw a unique pick-up code in 5 attempts")

    def _cancel(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        claim_id = _amounts.identifier(request.data, "claim") or ""
        drop_id, band, _creator = self._reserved_claim(
            transaction, claim_id, self._clock.now()
        )
        transaction.execute(
            "UPDATE drop_claims SET status = 'cancelled' WHERE id = ?", (claim_id,)
        )
        available = return_drop_unit(transaction, drop_id, band)
        transaction.emit(
            "drop_claim_cancelled", {"claim": claim_id, "drop": drop_id, "band": band}
        )
        return {"claim": claim_id, "status": "cancelled", "available": available}

    def _pickup(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        text = request.data.get("code")
        if not isinstance(text, str) or len(text) > 20:
            raise PayloadError(
                "field 'code' must be a pick-up code like 'AB12-CD3E', "
                f"not {text!r:.30}"
            )
        row = transaction.execute(
            "SELECT id, drop_id, band, picked_up_at FROM drop_claims"
            " WHERE pickup_code = ?",
            (normalise_coupon_code(text),),
        ).fetchone()
        if row is None:
            raise Refusal("unknown-code", f"pick-up code {text!r} does not exist")
        claim_id, drop_id, band, picked_up_at = row
        if picked_up_at is not None:
            raise Refusal(
                "already-picked-up",
                f"the unit of code {text} was picked up",
                picked_up_at=picked_up_at,
            )
        now = self._clock.now()
        transaction.execute(
            "UPDATE drop_claims SET picked_up_at = ? WHERE id = ?", (now, claim_id)
        )
        transaction.emit(
            "drop_picked_up",
            {
                "claim": claim_id,
                "drop": drop_id,
                "band": band,
                "terminal": request.requester,
            },
        )
        return {"claim": claim_id, "drop": drop_id, "band": band, "picked_up_at": now}

    def set_state(
        self, transaction: Transaction, drop_id: Any, state: str, *, by: str
    ) -> dict[str, Any]:
        """Set a drop ``live`` or ``stopped`` in ``transaction``, with its event.

        Raises PayloadError when ``drop_id`` is not a drop of the site.
        """
        drop = self._drop({"drop": drop_id})
        transaction.execute("UPDATE drops SET state = ? WHERE id = ?", (state, drop.id))
        event = "drop_started" if state == "live" else "drop_stopped"
        transaction.emit(event, {"drop": drop.id, "by": by})
        _LOGGER.info("Drop %s set %s by %s", drop.id, state, by)
        return {"drop": drop.id, "state": state}

    def _start_drop(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        drop_id = request.data.get("drop")
        return self.set_state(transaction, drop_id, "live", by=request.requester)

    def _stop_drop(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        drop_id = request.data.get("drop")
        return self.set_state(transaction, drop_id, "stopped", by=request.requester)

    def _status(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        drop = self._drop(request.data)
        quota, available, state = transaction.execute(
            "SELECT quota, available, state FROM drops WHERE id = ?", (drop.id,)
        ).fetchone()
        return {
            "drop": drop.id,
            "item": drop.item,
            "price": drop.price,
            "currency": self._config.wallet.currency,
            "quota": quota,
            "available": available,
            "state": state,
            "starts_at": drop.starts_at,
            "ends_at": drop.ends_at,
            "per_guest_limit": drop.per_guest_limit,
        }
