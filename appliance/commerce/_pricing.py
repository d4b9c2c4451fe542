"""Discounts and attribution of a sale: promo codes, creator codes, member tiers.

Discounts do not stack: a sale gets the larger of its promo code discount
and its member tier's kit-bundle discount.
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
        promo = self._promo(data.get("promo_code"), use, now)
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

    def _promo(self, code: Any, use: str, now: float) -> PromoCode | None:
        if code is None:
            return None
        promo = self._promos.get(code.upper()) if isinstance(code, str) else None
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
