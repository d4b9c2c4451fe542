"""Partner offers: pools of single-use codes handed out after a recovery kit.

A local hotel's microcation or a merch credit arrives as a list of codes in
the site configuration. The kit station hands one to each opted-in guest as
their follow-up coupon, and the partner or merch desk redeems it once.

``api/offers/redeem`` also redeems the box's own follow-up coupons (the
Crockford codes of :mod:`appliance.kits._coupons`) until they expire. Both
kinds of redemption are recorded on the coupon's row, so the night's kit,
coupon and redemption funnel counts them.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.clock import Clock
from appliance.commerce.config import CommerceConfig
from appliance.errors import PayloadError
from appliance.kits._coupons import is_valid_coupon_code, normalise_coupon_code
from appliance.requests import Refusal, Request, RequestServer
from appliance.store import Store, Transaction

_LOGGER = logging.getLogger(__name__)


class PartnerOffers:
    """Hands out and redeems partner offer codes."""

    def __init__(
        self,
        requests: RequestServer,
        store: Store,
        config: CommerceConfig,
        clock: Clock,
    ) -> None:
        self._requests = requests
        self._store = store
        self._offers = {offer.id: offer for offer in config.partner_offers}
        self._clock = clock

    def start(self) -> None:
        """Load new codes into the store and start serving redemptions."""
        with self._store.transaction() as transaction:
            for offer in self._offers.values():
                for code in offer.codes:
                    transaction.execute(
                        "INSERT OR IGNORE INTO partner_codes (code, offer)"
                        " VALUES (?, ?)",
                        (code, offer.id),
                    )
        self._requests.serve("offers", "redeem", self._redeem, scope="offers:redeem")

    def remaining(self) -> dict[str, int]:
        """Return the codes not yet handed out, per offer."""
        counts = dict(
            self._store.query(
                "SELECT offer, COUNT(*) FROM partner_codes WHERE band IS NULL"
                " GROUP BY offer"
            )
        )
        return {offer: counts.get(offer, 0) for offer in self._offers}

    def hand_out(
        self, transaction: Transaction, band: str, now: float
    ) -> dict[str, Any] | None:
        """Give ``band`` the next free code of the first offer that has one."""
        if not self._offers:
            return None
        row = transaction.execute(
            "UPDATE partner_codes SET band = ?, issued_at = ? WHERE code ="
            " (SELECT code FROM partner_codes WHERE band IS NULL"
            " ORDER BY offer, code LIMIT 1) RETURNING code, offer",
            (band, now),
        ).fetchone()
        if row is None:
            return None
        code, offer_id = row
        offer = self._offers.get(offer_id)
        title = offer.title if offer else offer_id
        transaction.emit(
            "partner_code_issued", {"band": band, "offer": offer_id, "code": code}
        )
        return {
            "code": code,
            "offer": title,
            "partner": offer.partner if offer else None,
        }

    def _redeem(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        text = request.data.get("code")
        if not isinstance(text, str) or not 3 <= len(text) <= 24:
            raise PayloadError(
                f"field 'code' must be a partner code of 3-24 characters, "
                f"not {text!r:.30}"
            )
        code = text.strip().upper()
        row = transaction.execute(
            "SELECT offer, band, redeemed_at FROM partner_codes WHERE code = ?",
            (code,),
        ).fetchone()
        if row is None:
            return self._redeem_coupon(transaction, request, code)
        offer_id, band, redeemed_at = row
        if band is None:
            raise Refusal(
                "not-issued", f"partner code {code} was never handed to a guest"
            )
        if redeemed_at is not None:
            raise Refusal(
                "already-redeemed",
                f"partner code {code} was redeemed",
                redeemed_at=redeemed_at,
            )
        now = self._clock.now()
        transaction.execute(
            "UPDATE partner_codes SET redeemed_at = ?, redeemed_by = ? WHERE code = ?",
            (now, request.requester, code),
        )
        # The partner code is also the guest's follow-up coupon.
        transaction.execute(
            "UPDATE coupons SET redeemed_at = ?, redeemed_by = ? WHERE code = ?",
            (now, request.requester, code),
        )
        transaction.emit(
            "partner_code_redeemed",
            {"code": code, "offer": offer_id, "band": band, "by": request.requester},
        )
        _LOGGER.info("Redeemed partner code %s of %s", code, offer_id)
        return {
            "code": code,
            "offer": offer_id,
            "band": band,
            "redeemed_at": now,
            "kind": "partner",
        }

    def _redeem_coupon(
        self, transaction: Transaction, request: Request, text: str
    ) -> dict[str, Any]:
        """Redeem a follow-up coupon code of this box, or reject it with a Refusal."""
        if not is_valid_coupon_code(text):
            raise Refusal(
                "unknown-code",
                f"{text} is neither a partner code nor a coupon code with a valid "
                "check symbol; check the code for a typing error",
            )
        normalised = normalise_coupon_code(text)
        code = f"{normalised[:4]}-{normalised[4:]}"
        row = transaction.execute(
            "SELECT band, offer, expires_at, redeemed_at FROM coupons WHERE code = ?",
            (code,),
        ).fetchone()
        if row is None:
            raise Refusal("unknown-code", f"coupon code {code} was not issued here")
        band, offer, expires_at, redeemed_at = row
        if redeemed_at is not None:
            raise Refusal(
                "already-redeemed",
                f"coupon {code} was redeemed",
                redeemed_at=redeemed_at,
            )
        now = self._clock.now()
        if now >= expires_at:
            raise Refusal(
                "coupon-expired",
                f"coupon {code} expired",
                expires_at=expires_at,
            )
        transaction.execute(
            "UPDATE coupons SET redeemed_at = ?, redeemed_by = ? WHERE code = ?",
            (now, request.requester, code),
        )
        # Like every event, this one carries the band but never the contact.
        transaction.emit(
            "coupon_redeemed",
            {"code": code, "offer": offer, "band": band, "by": request.requester},
        )
        _LOGGER.info("Redeemed coupon %s", code)
        return {
            "code": code,
            "offer": offer,
            "band": band,
            "redeemed_at": now,
            "kind": "coupon",
        }
