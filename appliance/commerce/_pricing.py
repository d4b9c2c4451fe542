"""Discounts and attribution of a sale: promo codes, creator codes, member tiers.

Discounts do not stack: a sale gets the larger of its promo code discount
and its member tier's kit-bundle discount.

Promo codes come from the site file or are created while the box runs (from
the terminal console); a created code's terms live in the store's
``added_promo_codes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.commerce.config import CommerceConfig, Item, PromoCode, Tier
from appliance.errors import PayloadError
from appliance.requests import Refusal
from appliance.store import Store, Transaction


@dataclass(frozen=True, slots=True)
class Price:
    """The price of a sale after its discount, and the creator it is credited to."""

    list_amount: int
    discount: int
    promo_code: str | None
    creator: str | None

    @property
    def amount(self) -> int:
        """The amount the wallet pays."""
        return self.list_amount - self.discount


class Pricing:
    """Applies the site's promo codes, creator codes and member tiers."""

    def __init__(self, config: CommerceConfig) -> None:
        self._config = config
        self._promos = {promo.code: promo for promo in config.promo_codes}

    def seed(self, store: Store) -> None:
        """Write configured promo codes and members into the store."""
        with store.transaction() as transaction:
            for promo in self._config.promo_codes:
                # A lowered max_uses never goes below the uses already made.
                transaction.execute(
                    "INSERT INTO promo_codes (code, max_uses) VALUES (?, ?)"
                    " ON CONFLICT (code) DO UPDATE SET"
                    " max_uses = MAX(excluded.max_uses, uses)",
                    (promo.code, promo.max_uses),
                )
            for band, tier in self._config.members.items():
                transaction.execute(
                    "INSERT INTO members (band, tier, source) VALUES (?, ?, 'config')"
                    " ON CONFLICT (band) DO UPDATE SET tier = excluded.tier"
                    " WHERE source = 'config'",
                    (band, tier),
                )

    def tier_of(self, transaction: Transaction, band: str) -> Tier | None:
        """Return the membership tier of ``band``, or None."""
        row = transaction.execute(
            "SELECT tier FROM members WHERE band = ?", (band,)
        ).fetchone()
        return None if row is None else self._config.tier(row[0])

    def creator_of_code(self, data: dict[str, Any]) -> str | None:
        """Return the creator id named by the request's ``creator`` code, or None."""
        code = data.get("creator")
        if code is None:
            return None
        creator = self._config.creator_by_code(code) if isinstance(code, str) else None
        if creator is None:
            raise PayloadError(
                f"field 'creator' = {code!r:.40} is not a creator code of this site"
            )
        return creator.id

    def price(
        self,
        transaction: Transaction,
        *,
        band: str,
        item: Item | None,
        list_amount: int,
        data: dict[str, Any],
        use: str,
        now: float,
        default_creator: str | None = None,
    ) -> Price:
        """Return the price of a sale and take one use of its promo code.

        ``use`` is ``charges`` or ``drops``. Raises Refusal for a promo code
        that is expired, used up or not valid for this use.
        """
        creator = self.creator_of_code(data) or default_creator
        promo = self._promo(transaction, data.get("promo_code"), use, now)
        promo_discount = 0
        if promo is not None:
            if promo.percent is not None:
                promo_discount = list_amount * promo.percent // 100
            else:
                promo_discount = min(promo.amount or 0, list_amount)
            if promo.creator is not None and self.creator_of_code(data) is None:
                creator = promo.creator
        tier_discount = 0
        if item is not None and item.kit_bundle:
            tier = self.tier_of(transaction, band)
            if tier is not None:
                tier_discount = list_amount * tier.kit_bundle_discount_percent // 100
        if promo is not None and promo_discount >= tier_discount:
            used = transaction.execute(
                "UPDATE promo_codes SET uses = uses + 1"
                " WHERE code = ? AND uses < max_uses RETURNING uses",
                (promo.code,),
            ).fetchone()
            if used is None:
                raise Refusal(
                    "promo-used-up", f"promo code {promo.code} has no uses left"
                )
            return Price(list_amount, promo_discount, promo.code, creator)
        return Price(list_amount, tier_discount, None, creator)

    def find_promo(self, transaction: Transaction, code: str) -> PromoCode | None:
        """Return the configured or created promo code ``code`` (upper case)."""
        promo = self._promos.get(code)
        if promo is not None:
            return promo
        row = transaction.execute(
            "SELECT p.max_uses, a.percent, a.amount, a.expires_at, a.creator,"
            " a.applies_to FROM added_promo_codes a"
            " JOIN promo_codes p ON p.code = a.code WHERE a.code = ?",
            (code,),
        ).fetchone()
        if row is None:
            return None
        max_uses, percent, amount, expires_at, creator, applies_to = row
        return PromoCode(
            code=code,
            percent=percent,
            amount=amount,
            max_uses=max_uses,
            expires_at=expires_at,
            creator=creator,
            applies_to=applies_to,
        )

    def all_promos(self, transaction: Transaction) -> list[PromoCode]:
        """Return the configured promo codes, then the created ones."""
        added = [
            row[0]
            for row in transaction.execute(
                "SELECT code FROM added_promo_codes ORDER BY created_at, code"
            ).fetchall()
            if row[0] not in self._promos
        ]
        found = (self.find_promo(transaction, code) for code in added)
        return [*self._promos.values(), *(p for p in found if p is not None)]

    def create_promo(
        self, transaction: Transaction, promo: PromoCode, *, by: str, now: float
    ) -> None:
        """Add a validated promo code in ``transaction``, with its event.

        Raises Refusal ``promo-exists`` when the code exists.
        """
        if self.find_promo(transaction, promo.code) is not None:
            raise Refusal(
                "promo-exists",
                f"promo code {promo.code} exists already; choose another code",
                promo=promo.code,
            )
        transaction.execute(
            "INSERT INTO promo_codes (code, max_uses) VALUES (?, ?)",
            (promo.code, promo.max_uses),
        )
        transaction.execute(
            "INSERT INTO added_promo_codes (code, percent, amount, expires_at,"
            " creator, applies_to, created_at, created_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                promo.code,
                promo.percent,
                promo.amount,
                promo.expires_at,
                promo.creator,
                promo.applies_to,
                now,
                by,
            ),
        )
        transaction.emit(
            "promo_created",
            {
                "code": promo.code,
                "percent": promo.percent,
                "amount": promo.amount,
                "uses": promo.max_uses,
                "expires_at": promo.expires_at,
                "creator": promo.creator,
                "applies_to": promo.applies_to,
                "by": by,
            },
        )

    def _promo(
        self, transaction: Transaction, code: Any, use: str, now: float
    ) -> PromoCode | None:
        if code is None:
            return None
        promo = (
            self.find_promo(transaction, code.upper())
            if isinstance(code, str) and len(code) <= 40
            else None
        )
        if promo is None:
            raise Refusal("promo-unknown", f"promo code {code!r:.30} does not exist")
        if promo.expires_at is not None and now >= promo.expires_at:
            raise Refusal("promo-expired", f"promo code {promo.code} has expired")
        if promo.applies_to not in ("all", use):
            raise Refusal(
                "promo-not-applicable",
                f"promo code {promo.code} applies to {promo.applies_to} only",
            )
        return promo
