"""The double-entry ledger behind the wristband wallets.

Every wallet transaction writes entries whose amounts sum to zero. Accounts:

- ``wallet:<band>``: the guest's money held by the venue; its sum is the
  wallet's balance and never drops below zero;
- ``tender:<method>``: money taken in at the desk (cash, card, online), as
  the negative of what the wallets received;
- ``revenue:<item>``: sales, net of discounts and refunds.

The ``wallets`` table caches each balance with a ``CHECK (balance >= 0)``,
and :func:`ledger_check` proves the cache against the entries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from appliance.store import Store, Transaction


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger transaction before it is written."""

    kind: str
    band: str
    currency: str
    amount: int
    terminal: str
    night: str
    entries: tuple[tuple[str, int], ...]
    method: str | None = None
    item: str | None = None
    quantity: int | None = None
    list_amount: int | None = None
    discount: int = 0
    promo_code: str | None = None
    creator: str | None = None
    set_id: str | None = None
    drop_claim: str | None = None
    refers_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def wallet_account(band: str) -> str:
    """Return the ledger account of a band's wallet."""
    return f"wallet:{band}"


def post(transaction: Transaction, posting: Posting, now: float) -> dict[str, Any]:
    """Write ``posting`` with its entries and outbox event; return the event data.

    Raises ValueError when the entries do not sum to zero, which is a bug in
    the caller; the request's savepoint then rolls the change back.
    """
    if sum(amount for _account, amount in posting.entries) != 0:
        raise ValueError(f"unbalanced {posting.kind} entries {posting.entries}")
    transaction_id = uuid.uuid4().hex
    data: dict[str, Any] = {
        "transaction_id": transaction_id,
        "kind": posting.kind,
        "band": posting.band,
        "amount": posting.amount,
        "currency": posting.currency,
        "terminal": posting.terminal,
        "night": posting.night,
    }
    optional = {
        "method": posting.method,
        "item": posting.item,
        "quantity": posting.quantity,
        "list_amount": posting.list_amount,
        "discount": posting.discount or None,
        "promo_code": posting.promo_code,
        "creator": posting.creator,
        "set": posting.set_id,
        "drop_claim": posting.drop_claim,
        "refers_to": posting.refers_to,
    }
    data.update({key: value for key, value in optional.items() if value is not None})
    data.update(posting.extra)
    event = transaction.emit(f"wallet_{posting.kind}", data)
    transaction.execute(
        "INSERT INTO ledger_transactions (id, kind, band, currency, amount, method,"
        " terminal, item, quantity, list_amount, discount, promo_code, creator,"
        " set_id, drop_claim, refers_to, night, created_at, event_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            transaction_id,
            posting.kind,
            posting.band,
            posting.currency,
            posting.amount,
            posting.method,
            posting.terminal,
            posting.item,
            posting.quantity,
            posting.list_amount,
            posting.discount,
            posting.promo_code,
            posting.creator,
            posting.set_id,
            posting.drop_claim,
            posting.refers_to,
            posting.night,
            now,
            event.id,
        ),
    )
    transaction.execute_many(
        "INSERT INTO ledger_entries (transaction_id, account, amount, currency)"
        " VALUES (?, ?, ?, ?)",
        [
            (transaction_id, account, amount, posting.currency)
            for account, amount in posting.entries
        ],
    )
    return data


def night_topped_up(transaction: Transaction, band: str, night: str) -> int:
    """Return what ``band`` topped up on ``night``; voided top-ups count nothing."""
    row = transaction.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM ledger_transactions"
        " WHERE band = ? AND night = ? AND kind = 'topup' AND voided_by IS NULL",
        (band, night),
    ).fetchone()
    return int(row[0])


def credit_topup(
    transaction: Transaction,
    *,
    band: str,
    currency: str,
    amount: int,
    method: str,
    terminal: str,
    night: str,
    now: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add a top-up to a band's wallet, opening the wallet on first use.

    Posts the top-up against ``tender:<method>`` with its outbox event and
    returns the event data with the new ``balance``. The caller checks the
    amount and the limits first.
    """
    balance = transaction.execute(
        "INSERT INTO wallets (band, currency, balance) VALUES (?, ?, ?)"
        " ON CONFLICT (band) DO UPDATE SET balance = balance + excluded.balance"
        " RETURNING balance",
        (band, currency, amount),
    ).fetchone()[0]
    record = post(
        transaction,
        Posting(
            kind="topup",
            band=band,
            currency=currency,
            amount=amount,
            terminal=terminal,
            night=night,
            method=method,
            entries=((wallet_account(band), amount), (f"tender:{method}", -amount)),
            extra=extra or {},
        ),
        now,
    )
    return {**record, "balance": int(balance)}


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    """The result of proving the ledger; ``ok`` only when every list is empty."""

    transactions: int
    entries: int
    unbalanced: list[str]
    without_entries: list[str]
    balance_mismatches: list[str]
    negative_balances: list[str]

    @property
    def ok(self) -> bool:
        """Whether the ledger passed every check."""
        return not (
            self.unbalanced
            or self.without_entries
            or self.balance_mismatches
            or self.negative_balances
        )

    def to_json(self) -> dict[str, Any]:
        """Return the check as a JSON object."""
        return {
            "ok": self.ok,
            "transactions": self.transactions,
            "entries": self.entries,
            "unbalanced": self.unbalanced,
            "without_entries": self.without_entries,
            "balance_mismatches": self.balance_mismatches,
            "negative_balances": self.negative_balances,
        }


def ledger_check(store: Store) -> LedgerCheck:
    """Prove the whole ledger: entries sum to zero and balances match entries."""
    (transactions,) = store.query_one("SELECT COUNT(*) FROM ledger_transactions") or (
        0,
    )
    (entries,) = store.query_one("SELECT COUNT(*) FROM ledger_entries") or (0,)
    unbalanced = [
        row[0]
        for row in store.query(
            "SELECT transaction_id FROM ledger_entries GROUP BY transaction_id"
            " HAVING SUM(amount) != 0 ORDER BY transaction_id"
        )
    ]
    without_entries = [
        row[0]
        for row in store.query(
            "SELECT t.id FROM ledger_transactions t WHERE NOT EXISTS"
            " (SELECT 1 FROM ledger_entries e WHERE e.transaction_id = t.id)"
            " AND t.amount > 0 ORDER BY t.id"
        )
    ]
    mismatches = [
        f"{band}: balance {balance}, entries {total}"
        for band, balance, total in store.query(
            "SELECT w.band, w.balance, COALESCE(SUM(e.amount), 0) FROM wallets w"
            " LEFT JOIN ledger_entries e ON e.account = 'wallet:' || w.band"
            " GROUP BY w.band HAVING w.balance != COALESCE(SUM(e.amount), 0)"
            " ORDER BY w.band"
        )
    ]
    negative = [
        f"{account}: {total}"
        for account, total in store.query(
            "SELECT account, SUM(amount) FROM ledger_entries"
            " WHERE account LIKE 'wallet:%' GROUP BY account HAVING SUM(amount) < 0"
        )
    ]
    return LedgerCheck(
        transactions=int(transactions),
        entries=int(entries),
        unbalanced=unbalanced,
        without_entries=without_entries,
        balance_mismatches=mismatches,
        negative_balances=negative,
    )
