"""Wristband wallets over bus requests: top-up, charge, refund, void, balance.

Every mutating request is idempotent (see :mod:`appliance.requests`) and
commits its ledger rows, the wallet's cached balance and its outbox event in
one transaction. Limits per transaction and per band per night come from
``[wallet]`` in the site configuration.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.clock import Clock
from appliance.commerce._pricing import Pricing
from appliance.commerce.config import CommerceConfig
from appliance.errors import PayloadError
from appliance.kits import _validation
from appliance.requests import Refusal, Request, RequestServer
from appliance.store import Transaction
from appliance.wallet import _amounts
from appliance.wallet._ledger import (
    Posting,
    credit_topup,
    night_topped_up,
    post,
    wallet_account,
)

_LOGGER = logging.getLogger(__name__)

DESK_METHODS = ("cash", "card")


class WalletService:
    """Serves ``api/wallet/*`` and posts charges for other services."""

    def __init__(
        self,
        requests: RequestServer,
        config: CommerceConfig,
        pricing: Pricing,
        clock: Clock,
    ) -> None:
        self._requests = requests
        self._config = config
        self._pricing = pricing
        self._clock = clock
        self._currency = config.wallet.currency

    def start(self) -> None:
        """Start serving wallet requests."""
        serve = self._requests.serve
        serve("wallet", "topup", self._topup, scope="wallet:topup")
        serve("wallet", "charge", self._charge, scope="pos:charge")
        serve("wallet", "refund", self._refund, scope="pos:refund")
        serve("wallet", "void", self._void, scope="pos:void")
        serve("wallet", "balance", self._balance, scope="pos:charge", mutating=False)

    def balance(self, transaction: Transaction, band: str) -> int:
        """Return a band's balance in minor units, 0 without a wallet."""
        row = transaction.execute(
            "SELECT balance FROM wallets WHERE band = ?", (band,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _night_spent(self, transaction: Transaction, band: str, night: str) -> int:
        # Spending is the night's charges minus their refunds. A refund counts
        # for the night of its charge, whenever it is posted, so refunding the
        # night before gives no room tonight.
        row = transaction.execute(
            "SELECT COALESCE(SUM(c.amount - c.refunded), 0) FROM ledger_transactions c"
            " WHERE c.band = ? AND c.night = ? AND c.kind = 'charge'"
            " AND c.voided_by IS NULL",
            (band, night),
        ).fetchone()
        return int(row[0])

    def _topup(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        band = _validation.band_id(data)
        _amounts.currency(data, self._currency)
        amount = _amounts.amount(data)
        method = data.get("method")
        if method not in DESK_METHODS:
            raise PayloadError(
                f"field 'method' must be one of {', '.join(DESK_METHODS)}, "
                f"not {method!r:.20}"
            )

        limits = self._config.wallet
        if amount > limits.max_topup:
            raise Refusal(
                "limit-exceeded",
                f"top-up of {amount} is above the limit of {limits.max_topup} per "
                "top-up",
                limit=limits.max_topup,
            )
        now = self._clock.now()
        night = self._config.night_of(now)
        topped_up = night_topped_up(transaction, band, night)
        if topped_up + amount > limits.night_topup_limit:
            raise Refusal(
                "limit-exceeded",
                f"band {band} has topped up {topped_up} tonight; {amount} more "
                f"passes the limit of {limits.night_topup_limit} per night",
                limit=limits.night_topup_limit,
            )

        record = credit_topup(
            transaction,
            band=band,
            currency=self._currency,
            amount=amount,
            method=method,
            terminal=request.requester,
            night=night,
            now=now,
        )
        _LOGGER.info("Topped up band %s with %d by %s", band, amount, method)
        return record

    def _charge(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        band = _validation.band_id(data)
        _amounts.currency(data, self._currency)
        item_id = _amounts.identifier(data, "item")
        item = self._config.item(item_id or "")
        if item is None:
            raise PayloadError(f"field 'item' = {item_id!r} is not in the catalogue")
        quantity = _amounts.quantity(data)
        # A sale of nothing would post a zero charge, so the list amount of
        # an open-price item must be positive too (priced items are >= 1).
        list_amount = _amounts.amount(data)
        if item.price is not None and list_amount != item.price * quantity:
            raise PayloadError(
                f"field 'amount' = {list_amount} does not match {quantity} x "
                f"{item.id} at {item.price}; send {item.price * quantity}"
            )

        now = self._clock.now()
        price = self._pricing.price(
            transaction,
            band=band,
            item=item,
            list_amount=list_amount,
            data=data,
            use="charges",
            now=now,
        )
        return self.charge(
            transaction,
            band=band,
            item=item.id,
            quantity=quantity,
            list_amount=price.list_amount,
            discount=price.discount,
            promo_code=price.promo_code,
            creator=price.creator,
            terminal=request.requester,
            now=now,
        )

    def charge(
        self,
        transaction: Transaction,
        *,
        band: str,
        item: str,
        quantity: int,
        list_amount: int,
        discount: int,
        promo_code: str | None,
        creator: str | None,
        terminal: str,
        now: float,
        drop_claim: str | None = None,
    ) -> dict[str, Any]:
        """Take a sale's price from a wallet; raise Refusal when it cannot pay."""
        amount = list_amount - discount
        limits = self._config.wallet
        if amount > limits.max_charge:
            raise Refusal(
                "limit-exceeded",
                f"charge of {amount} is above the limit of {limits.max_charge} "
                "per charge",
                limit=limits.max_charge,
            )
        night = self._config.night_of(now)
        spent = self._night_spent(transaction, band, night)
        if spent + amount > limits.night_spend_limit:
            raise Refusal(
                "limit-exceeded",
                f"band {band} has spent {spent} tonight; {amount} more passes "
                f"the limit of {limits.night_spend_limit} per night",
                limit=limits.night_spend_limit,
            )

        row = transaction.execute(
            "UPDATE wallets SET balance = balance - ? WHERE band = ? AND balance >= ?"
            " RETURNING balance",
            (amount, band, amount),
        ).fetchone()
        if row is None:
            balance = self.balance(transaction, band)
            raise Refusal(
                "insufficient-funds",
                f"band {band} has {balance} and the charge is {amount}",
                balance=balance,
                amount=amount,
            )

        slot = self._config.set_at(now)
        record = post(
            transaction,
            Posting(
                kind="charge",
                band=band,
                currency=self._currency,
                amount=amount,
                terminal=terminal,
                night=night,
                item=item,
                quantity=quantity,
                list_amount=list_amount,
                discount=discount,
                promo_code=promo_code,
                creator=creator,
                set_id=None if slot is None else slot.id,
                drop_claim=drop_claim,
                entries=((wallet_account(band), -amount), (f"revenue:{item}", amount)),
            ),
            now,
        )
        return {**record, "balance": int(row[0])}

    def _refund(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        charge_id = _amounts.identifier(data, "transaction_id")
        charge = self._transaction(transaction, charge_id or "")
        if charge["kind"] != "charge":
            raise Refusal(
                "not-refundable",
                f"transaction {charge_id} is a {charge['kind']}; only charges are "
                "refunded",
            )
        if charge["voided_by"] is not None:
            raise Refusal("already-voided", f"charge {charge_id} was voided")
        refundable = charge["amount"] - charge["refunded"]
        amount = _amounts.amount(data) if data.get("amount") is not None else refundable
        if "currency" in data:
            _amounts.currency(data, charge["currency"])
        if refundable == 0:
            raise Refusal(
                "over-refund",
                f"charge {charge_id} is refunded in full already",
                refundable=refundable,
            )
        if amount > refundable:
            raise Refusal(
                "over-refund",
                f"charge {charge_id} has {refundable} left to refund, not {amount}",
                refundable=refundable,
            )
        if charge["drop_claim"] is not None and amount != charge["amount"]:
            raise Refusal(
                "over-refund",
                f"charge {charge_id} paid for a drop unit; refund it in full",
                refundable=refundable,
            )

        now = self._clock.now()
        transaction.execute(
            "UPDATE ledger_transactions SET refunded = refunded + ? WHERE id = ?",
            (amount, charge_id),
        )
        release_drop_claim(transaction, charge["drop_claim"], now)
        band = charge["band"]
        balance = transaction.execute(
            "UPDATE wallets SET balance = balance + ? WHERE band = ? RETURNING balance",
            (amount, band),
        ).fetchone()[0]
        record = post(
            transaction,
            Posting(
                kind="refund",
                band=band,
                currency=charge["currency"],
                amount=amount,
                terminal=request.requester,
                night=self._config.night_of(now),
                item=charge["item"],
                creator=charge["creator"],
                set_id=charge["set_id"],
                refers_to=charge_id,
                entries=(
                    (wallet_account(band), amount),
                    (f"revenue:{charge['item']}", -amount),
                ),
            ),
            now,
        )
        return {**record, "balance": balance}

    def _void(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        target_id = _amounts.identifier(data, "transaction_id")
        target = self._transaction(transaction, target_id or "")
        now = self._clock.now()
        if target["kind"] not in ("topup", "charge"):
            raise Refusal(
                "not-voidable", f"transaction {target_id} is a {target['kind']}"
            )
        if target["voided_by"] is not None:
            raise Refusal("already-voided", f"transaction {target_id} was voided")
        if target["refunded"]:
            raise Refusal(
                "not-voidable",
                f"charge {target_id} has refunds; refund what is left instead",
            )
        night = self._config.night_of(now)
        if target["night"] != night:
            raise Refusal(
                "not-voidable",
                f"transaction {target_id} belongs to the night of {target['night']};"
                " only tonight's transactions can be voided",
            )

        band = target["band"]
        amount = target["amount"]
        # Reverse every entry of the target, so the ledger nets to zero.
        entries = tuple(
            (account, -value)
            for account, value in transaction.execute(
                "SELECT account, amount FROM ledger_entries WHERE transaction_id = ?",
                (target_id,),
            ).fetchall()
        )
        change = sum(
            value for account, value in entries if account.startswith("wallet:")
        )
        row = transaction.execute(
            "UPDATE wallets SET balance = balance + ? WHERE band = ?"
            " AND balance + ? >= 0 RETURNING balance",
            (change, band, change),
        ).fetchone()
        if row is None:
            raise Refusal(
                "insufficient-funds",
                f"band {band} has already spent part of top-up {target_id}",
                balance=self.balance(transaction, band),
            )

        release_drop_claim(transaction, target["drop_claim"], now)
        record = post(
            transaction,
            Posting(
                kind="void",
                band=band,
                currency=target["currency"],
                amount=amount,
                terminal=request.requester,
                night=night,
                method=target["method"],
                item=target["item"],
                creator=target["creator"],
                set_id=target["set_id"],
                refers_to=target_id,
                entries=entries,
            ),
            now,
        )
        transaction.execute(
            "UPDATE ledger_transactions SET voided_by = ? WHERE id = ?",
            (record["transaction_id"], target_id),
        )
        return {**record, "balance": int(row[0])}

    def _balance(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        band = _validation.band_id(request.data)
        night = self._config.night_of(self._clock.now())
        return {
            "band": band,
            "balance": self.balance(transaction, band),
            "currency": self._currency,
            "night": night,
            "spent_tonight": self._night_spent(transaction, band, night),
        }

    def _transaction(
        self, transaction: Transaction, transaction_id: str
    ) -> dict[str, Any]:
        cursor = transaction.execute(
            "SELECT id, kind, band, currency, amount, method, item, creator, set_id,"
            " drop_claim, refunded, voided_by, night FROM ledger_transactions"
            " WHERE id = ?",
            (transaction_id,),
        )
        row = cursor.fetchone()
        if row is None:
            raise Refusal(
                "unknown-transaction", f"transaction {transaction_id} does not exist"
            )
        return dict(zip([column[0] for column in cursor.description], row, strict=True))


def release_drop_claim(
    transaction: Transaction, claim_id: str | None, now: float
) -> None:
    """Cancel a paid drop claim whose payment is returned, giving its unit back.

    Raises Refusal when the unit was already picked up.
    """
    if claim_id is None:
        return
    row = transaction.execute(
        "SELECT drop_id, band, picked_up_at FROM drop_claims WHERE id = ?",
        (claim_id,),
    ).fetchone()
    if row is None:
        return
    drop_id, band, picked_up_at = row
    if picked_up_at is not None:
        raise Refusal(
            "already-picked-up",
            f"the drop unit of claim {claim_id} was picked up; it cannot be returned",
        )
    transaction.execute(
        "UPDATE drop_claims SET status = 'cancelled', pickup_code = NULL WHERE id = ?",
        (claim_id,),
    )
    return_drop_unit(transaction, drop_id, band)
    transaction.emit(
        "drop_claim_cancelled", {"claim": claim_id, "drop": drop_id, "band": band}
    )


def return_drop_unit(transaction: Transaction, drop_id: str, band: str) -> int:
    """Give one unit of a drop back to its stock and to the guest's limit."""
    transaction.execute(
        "UPDATE drop_holdings SET units = units - 1 WHERE drop_id = ? AND band = ?",
        (drop_id, band),
    )
    # The unit returns only within the quota, which may have been lowered
    # below the units held since they were sold.
    (available,) = transaction.execute(
        "UPDATE drops SET available = MAX(0, MIN(available + 1, quota - ("
        + HELD_UNITS
        + "))) WHERE id = ? RETURNING available",
        (drop_id,),
    ).fetchone()
    return int(available)


# The units of a drop that guests hold, reserved or paid, in an UPDATE of
# the drops table.
HELD_UNITS = (
    "SELECT COUNT(*) FROM drop_claims WHERE drop_claims.drop_id = drops.id"
    " AND drop_claims.status IN ('reserved', 'paid')"
)
