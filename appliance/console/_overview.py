"""The figures of ``console/overview``: tonight's night, computed from the store.

Everything the dashboard needs that the bus does not already carry: exits
per minute over the last hour, the top items, kits, opt-ins, coupons, the
catalogue, drops, readers and terminals.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from appliance.currency import minor_unit_digits
from appliance.remote.telemetry import night_start
from appliance.store import Transaction
from provisioning.site_access import CONSOLE, DESK

if TYPE_CHECKING:
    from appliance.runtime import Box

MINUTES = 60
TOP_ITEMS = 5

# Charges and refunds that a void did not cancel, by item. A charge refunded
# in full sells no unit, so its quantity is left out; a partial refund only
# lowers the revenue.
_TOP_ITEMS = """
SELECT item,
    SUM(CASE WHEN kind = 'charge' AND refunded < amount THEN quantity ELSE 0 END),
    SUM(CASE WHEN kind = 'charge' THEN amount ELSE -amount END) AS revenue
FROM ledger_transactions
WHERE night = ? AND voided_by IS NULL AND kind IN ('charge', 'refund')
    AND item IS NOT NULL
GROUP BY item
ORDER BY revenue DESC, item
LIMIT ?
"""


def overview(box: Box, transaction: Transaction) -> dict[str, Any]:
    """Return the ``console/overview`` reply for the box's current night."""
    config = box.config
    commerce = config.commerce
    now = box.clock.now()
    night = commerce.night_of(now)
    start = night_start(commerce, now)
    telemetry = box.management.telemetry()
    names = {item.id: item.name for item in commerce.items}
    return {
        "night": night,
        "now": round(now, 3),
        "clock": {"trusted": box.clock.trusted, "source": str(box.clock.source)},
        "site": {
            "id": config.site_id,
            "name": config.site_name,
            "box": config.box_id,
            "timezone": commerce.timezone,
            "currency": commerce.wallet.currency,
            "minor_units": minor_unit_digits(commerce.wallet.currency),
        },
        "exits_per_minute": exits_per_minute(transaction, now),
        "top_items": [
            {"item": item, "name": names.get(item, item), "quantity": q, "revenue": r}
            for item, q, r in transaction.execute(_TOP_ITEMS, (night, TOP_ITEMS))
        ],
        "guests_in": telemetry["guests_in"],
        "checkouts": telemetry["checkouts"],
        "sales_minor": telemetry["sales_minor"],
        "kits": _kits(transaction, start),
        "optins": _count(
            transaction, "SELECT COUNT(*) FROM optins WHERE consented_at >= ?", start
        ),
        "coupons": _count(
            transaction, "SELECT COUNT(*) FROM coupons WHERE issued_at >= ?", start
        ),
        "items": [
            {"id": item.id, "name": item.name, "price": item.price}
            for item in commerce.items
        ],
        "creators": [
            {"id": creator.id, "name": creator.name, "codes": [creator.code]}
            for creator in commerce.creators
        ],
        "drops": [drop_record(box, drop.id) for drop in box.drops.all_drops()],
        "readers": [
            {
                "id": reader.id,
                "role": reader.role,
                "zone": reader.zone,
                "uplink": reader.uplink,
            }
            for reader in config.readers
        ],
        "terminals": list(dict.fromkeys([DESK, CONSOLE, *commerce.terminals])),
        "wallet": dataclasses.asdict(commerce.wallet),
        "stream": None if box.studio is None else box.studio.state(),
    }


def exits_per_minute(transaction: Transaction, now: float) -> list[list[int]]:
    """Return ``[minute_start, check-outs]`` for the last 60 minutes, oldest first.

    The last entry is the minute that contains ``now``.
    """
    first = int(now // 60) * 60 - (MINUTES - 1) * 60
    counts = dict(
        transaction.execute(
            "SELECT CAST((seen_at - ?) / 60 AS INTEGER), COUNT(*) FROM checkouts"
            " WHERE seen_at >= ? AND seen_at < ? GROUP BY 1",
            (first, first, first + MINUTES * 60),
        ).fetchall()
    )
    return [[first + 60 * index, counts.get(index, 0)] for index in range(MINUTES)]


def drop_record(box: Box, drop_id: str) -> dict[str, Any]:
    """Return a drop as ``overview.drops`` lists it, with its units in the store."""
    drop = box.drops.find(drop_id)
    if drop is None:
        raise KeyError(drop_id)
    row = box.store.query_one(
        "SELECT quota, available, state FROM drops WHERE id = ?", (drop_id,)
    )
    quota, available, state = row if row is not None else (0, 0, "scheduled")
    return {
        "id": drop.id,
        "item": drop.item,
        "price": drop.price,
        "quota": quota,
        "available": available,
        "state": state,
        "starts_at": drop.starts_at,
        "ends_at": drop.ends_at,
        "per_guest_limit": drop.per_guest_limit,
    }


def _kits(transaction: Transaction, start: float) -> dict[str, dict[str, int]]:
    issued = dict(
        transaction.execute(
            "SELECT station, COUNT(*) FROM kits WHERE issued_at >= ? GROUP BY station",
            (start,),
        ).fetchall()
    )
    return {
        station: {"issued": issued.get(station, 0), "left": left, "initial": initial}
        for station, initial, left in transaction.execute(
            "SELECT station, initial, remaining FROM kit_stock ORDER BY station"
        )
    }


def _count(transaction: Transaction, sql: str, start: float) -> int:
    row = transaction.execute(sql, (start,)).fetchone()
    return 0 if row is None else int(row[0])
