"""The reconciliation of one night: totals by item, terminal, creator and method.

Voided transactions and their voids cancel out, so neither appears in the
totals; the report counts them separately. The ledger check covers the whole
ledger, not only the night.
"""

from __future__ import annotations

from typing import Any

from appliance.store import Store
from appliance.wallet._ledger import ledger_check

_LIVE = "night = ? AND voided_by IS NULL AND kind != 'void'"


def night_report(store: Store, night: str, currency: str) -> dict[str, Any]:
    """Return the reconciliation of ``night`` (an ISO date) as a JSON object."""
    topups = {
        method: {"count": count, "amount": total}
        for method, count, total in store.query(
            "SELECT method, COUNT(*), SUM(amount) FROM ledger_transactions"
            f" WHERE kind = 'topup' AND {_LIVE} GROUP BY method ORDER BY method",
            (night,),
        )
    }
    items: dict[str, dict[str, int]] = {}
    for item, count, quantity, listed, discount, net in store.query(
        "SELECT item, COUNT(*), SUM(quantity), SUM(list_amount), SUM(discount),"
        " SUM(amount) FROM ledger_transactions"
        f" WHERE kind = 'charge' AND {_LIVE} GROUP BY item ORDER BY item",
        (night,),
    ):
        items[item] = {
            "sales": count,
            "quantity": quantity,
            "list_amount": listed,
            "discount": discount,
            "charged": net,
            "refunded": 0,
        }
    for item, refunded in store.query(
        "SELECT item, SUM(amount) FROM ledger_transactions"
        f" WHERE kind = 'refund' AND {_LIVE} GROUP BY item",
        (night,),
    ):
        items.setdefault(
            item,
            {
                "sales": 0,
                "quantity": 0,
                "list_amount": 0,
                "discount": 0,
                "charged": 0,
                "refunded": 0,
            },
        )["refunded"] = refunded
    for figures in items.values():
        figures["net"] = figures["charged"] - figures["refunded"]
    terminals: dict[str, dict[str, int]] = {}
    for terminal, kind, count, total in store.query(
        "SELECT terminal, kind, COUNT(*), SUM(amount) FROM ledger_transactions"
        f" WHERE {_LIVE} GROUP BY terminal, kind ORDER BY terminal, kind",
        (night,),
    ):
        figures = terminals.setdefault(terminal, {})
        figures[f"{kind}_count"] = count
        figures[f"{kind}_amount"] = total
    creators: dict[str, dict[str, int]] = {}
    for creator, kind, count, total in store.query(
        "SELECT creator, kind, COUNT(*), SUM(amount) FROM ledger_transactions"
        f" WHERE creator IS NOT NULL AND kind IN ('charge', 'refund') AND {_LIVE}"
        " GROUP BY creator, kind ORDER BY creator",
        (night,),
    ):
        figures = creators.setdefault(creator, {"sales": 0, "net": 0, "claims": 0})
        if kind == "charge":
            figures["sales"] = count
            figures["net"] += total
        else:
            figures["net"] -= total
    for creator, claims in store.query(
        "SELECT creator, COUNT(*) FROM drop_claims WHERE creator IS NOT NULL"
        " AND night = ? AND status IN ('reserved', 'paid') GROUP BY creator",
        (night,),
    ):
        creators.setdefault(creator, {"sales": 0, "net": 0, "claims": 0})["claims"] = (
            claims
        )
    (voids,) = store.query_one(
        "SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'void' AND night = ?",
        (night,),
    ) or (0,)
    (balances,) = store.query_one("SELECT COALESCE(SUM(balance), 0) FROM wallets") or (
        0,
    )
    topped_up = sum(method["amount"] for method in topups.values())
    charged = sum(item["charged"] for item in items.values())
    refunded = sum(item["refunded"] for item in items.values())
    return {
        "night": night,
        "currency": currency,
        "topups_by_method": topups,
        "sales_by_item": items,
        "by_terminal": terminals,
        "by_creator": creators,
        "totals": {
            "topped_up": topped_up,
            "charged": charged,
            "refunded": refunded,
            "net_sales": charged - refunded,
            "voids": voids,
            "wallet_balances_now": balances,
        },
        "ledger_check": ledger_check(store).to_json(),
    }


def format_report(report: dict[str, Any]) -> str:
    """Render a report from :func:`night_report` as plain text tables."""
    currency = report["currency"]

    def money(minor: int) -> str:
        sign = "-" if minor < 0 else ""
        return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d} {currency}"

    lines = [f"Night of {report['night']}", ""]
    lines.append("Top-ups by payment method")
    for method, figures in report["topups_by_method"].items():
        lines.append(
            f"  {method:<12} {figures['count']:>6}  {money(figures['amount']):>16}"
        )
    lines += ["", "Sales by item (net of discounts and refunds)"]
    for item, figures in report["sales_by_item"].items():
        lines.append(
            f"  {item:<12} {figures['sales']:>6} sales  qty {figures['quantity']:>5}"
            f"  discount {money(figures['discount']):>14}"
            f"  refunded {money(figures['refunded']):>14}"
            f"  net {money(figures['net']):>14}"
        )
    lines += ["", "By terminal"]
    for terminal, figures in report["by_terminal"].items():
        parts = [
            f"{kind.removesuffix('_amount')} {money(value)}"
            for kind, value in figures.items()
            if kind.endswith("_amount")
        ]
        lines.append(f"  {terminal:<12} " + ", ".join(parts))
    lines += ["", "By creator"]
    for creator, figures in report["by_creator"].items():
        lines.append(
            f"  {creator:<12} {figures['sales']:>6} sales  net "
            f"{money(figures['net']):>14}  drop claims {figures['claims']}"
        )
    totals = report["totals"]
    lines += [
        "",
        f"Topped up {money(totals['topped_up'])}; charged {money(totals['charged'])};"
        f" refunded {money(totals['refunded'])}; net sales "
        f"{money(totals['net_sales'])}; voids {totals['voids']}.",
        f"Wallet balances now: {money(totals['wallet_balances_now'])}.",
    ]
    check = report["ledger_check"]
    if check["ok"]:
        lines.append(
            f"Ledger check: OK ({check['transactions']} transactions, "
            f"{check['entries']} entries, every transaction sums to zero, "
            "balances match entries)."
        )
    else:
        lines.append("Ledger check: FAILED")
        for name in (
            "unbalanced",
            "without_entries",
            "balance_mismatches",
            "negative_balances",
        ):
            for problem in check[name]:
                lines.append(f"  {name}: {problem}")
    return "\n".join(lines)
