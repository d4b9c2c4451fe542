"""The spend groups of the creator section and the relations a reader can use.

The creator section shows spend for all paying guests, for those with and
without a creator, and per creator, with the creator's attributed sales.
A drop's price is public and its paid guests are shown, so a reader can
take a drop's revenue to be its paid guests times its price and subtract
it from a spend figure. What remains is the money of the guests who spent
outside that drop. For example, a creator's attributed sales minus the
revenue of the creator's drop are the sales of the guests who used the
creator's code outside the drop, and there may be only one of them.

Each spend group is therefore split by drop into implicit groups: its
guests who paid in a drop, the money they spent there, its guests who did
not pay in the drop, and its guests and money outside every drop. A
creator's attributed sales are split the same way, and each drop's revenue
into the parts credited to each creator and the part credited to none. The
relations between those groups and the shown ones let
:func:`~appliance.analytics.suppression.suppress` find every such
subtraction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.analytics.suppression import Figure, Group, Partition, Relation
from appliance.commerce.config import CommerceConfig

if TYPE_CHECKING:
    from appliance.analytics.figures import ReadableStore

# One live money row of the night: neither voided nor a void, with the drop
# its charge paid for (a refund names its charge through refers_to).
_MONEY_ROWS = (
    "SELECT t.band, t.kind, t.amount, t.creator,"
    " COALESCE(own.drop_id, charged.drop_id)"
    " FROM ledger_transactions AS t"
    " LEFT JOIN drop_claims AS own ON own.id = t.drop_claim"
    " LEFT JOIN ledger_transactions AS charge ON charge.id = t.refers_to"
    " LEFT JOIN drop_claims AS charged ON charged.id = charge.drop_claim"
    " WHERE t.night = ? AND t.kind IN ('charge', 'refund')"
    " AND t.voided_by IS NULL"
)


@dataclass(slots=True)
class _Money:
    """Net money per band and the bands with at least one live charge."""

    net: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged: set[str] = field(default_factory=set)

    def add(self, band: str, kind: str, amount: int) -> None:
        """Count a charge (added) or a refund (subtracted) of ``band``."""
        if kind == "charge":
            self.net[band] += amount
            self.charged.add(band)
        else:
            self.net[band] -= amount

    def total(self, bands: Iterable[str]) -> int:
        """Return the net money of ``bands``."""
        return sum(self.net.get(band, 0) for band in bands)


@dataclass(slots=True)
class _Ledger:
    """The night's money by band, drop and creator.

    The key ``None`` stands for money outside every drop, or credited to no
    creator.
    """

    all: _Money = field(default_factory=_Money)
    by_drop: dict[str | None, _Money] = field(
        default_factory=lambda: defaultdict(_Money)
    )
    by_creator: dict[tuple[str | None, str | None], _Money] = field(
        default_factory=lambda: defaultdict(_Money)
    )


def _read_ledger(store: ReadableStore, night: str, drop_ids: list[str]) -> _Ledger:
    """Read the night's money; a drop outside ``drop_ids`` counts as no drop."""
    ledger = _Ledger()
    for band, kind, amount, creator, drop in store.query(_MONEY_ROWS, (night,)):
        band, kind, amount = str(band), str(kind), int(amount)
        drop_id = str(drop) if drop in drop_ids else None
        creator_id = None if creator is None else str(creator)
        ledger.all.add(band, kind, amount)
        ledger.by_drop[drop_id].add(band, kind, amount)
        ledger.by_creator[creator_id, drop_id].add(band, kind, amount)
    return ledger


def creator_groups(
    store: ReadableStore,
    commerce: CommerceConfig,
    night: str,
    drop_ids: list[str],
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> list[tuple[str, str]]:
    """Add the creator section's groups and relations; return ``(creator, name)``.

    ``drop_ids`` are the drops whose ``drop:<id>:paid`` groups exist.
    """
    ledger = _read_ledger(store, night, drop_ids)
    paid: dict[str, set[str]] = defaultdict(set)
    for drop_id, band in store.query(
        "SELECT DISTINCT drop_id, band FROM drop_claims"
        " WHERE night = ? AND status = 'paid'",
        (night,),
    ):
        paid[str(drop_id)].add(str(band))
    prices = {
        str(drop_id): int(price)
        for drop_id, price in store.query("SELECT id, price FROM drops")
    }
    guests_of: dict[str, set[str]] = defaultdict(set)
    for (creator, _), money in ledger.by_creator.items():
        if creator is not None:
            guests_of[creator] |= money.charged

    names = {creator.id: creator.name for creator in commerce.creators}
    creator_ids = list(names) + sorted(set(guests_of) - set(names))
    spenders = ledger.all.charged
    with_creator = set().union(*guests_of.values()) if guests_of else set()
    members = {
        "creators:all": spenders,
        "creators:with": with_creator,
        "creators:without": spenders - with_creator,
        **{f"creator:{key}": guests_of.get(key, set()) for key in creator_ids},
    }
    for key, bands in members.items():
        groups[key] = _spend_group(bands, ledger.all)
        _split_by_drop(key, bands, ledger, paid, drop_ids, groups, rules)
    for creator_id in creator_ids:
        key = f"creator:{creator_id}"
        groups[key].values["attributed"] = sum(
            money.total(money.net)
            for (creator, _), money in ledger.by_creator.items()
            if creator == creator_id
        )
        _split_attributed(creator_id, ledger, drop_ids, groups, rules)

    creator_keys = tuple(f"creator:{key}" for key in creator_ids)
    for suffix in ("", *_split_suffixes(drop_ids)):
        values = () if suffix.startswith(":not:") else ("spend",)
        rules.append(
            Partition(
                f"creators:all{suffix}",
                (f"creators:with{suffix}", f"creators:without{suffix}"),
                values,
            )
        )
        if creator_keys:
            # A guest may use two creators' codes, so the parts can overlap;
            # the rule then hides more than it strictly has to, never less.
            rules.append(
                Partition(
                    f"creators:with{suffix}",
                    tuple(f"{key}{suffix}" for key in creator_keys),
                    values,
                )
            )
    for drop_id in drop_ids:
        _link_drop(drop_id, prices.get(drop_id, 0), creator_ids, ledger, groups, rules)
    return [
        (creator_id, names.get(creator_id, creator_id)) for creator_id in creator_ids
    ]


def _spend_group(bands: set[str], money: _Money) -> Group:
    """Return the group of ``bands`` with their net spend and the average per guest."""
    total = money.total(bands)
    average = round(total / len(bands)) if bands else None
    return Group(len(bands), {"spend": total, "average": average})


def _split_suffixes(drop_ids: list[str]) -> list[str]:
    """Return the key suffixes of the implicit groups that split a spend group."""
    suffixes = [":outside"]
    for drop_id in drop_ids:
        suffixes += [f":drop:{drop_id}", f":not:{drop_id}"]
    return suffixes


def _split_by_drop(
    key: str,
    bands: set[str],
    ledger: _Ledger,
    paid: dict[str, set[str]],
    drop_ids: list[str],
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> None:
    """Split the spend group ``key`` into its money in each drop and outside."""
    outside = ledger.by_drop[None]
    groups[f"{key}:outside"] = Group(
        len(bands & outside.charged), {"spend": outside.total(bands)}, shown=False
    )
    spend_parts = [Figure(f"{key}:outside", "spend")]
    for drop_id in drop_ids:
        in_drop = bands & paid[drop_id]
        groups[f"{key}:drop:{drop_id}"] = Group(
            len(in_drop), {"spend": ledger.by_drop[drop_id].total(bands)}, shown=False
        )
        groups[f"{key}:not:{drop_id}"] = Group(len(bands - in_drop), shown=False)
        rules.append(Partition(key, (f"{key}:drop:{drop_id}", f"{key}:not:{drop_id}")))
        spend_parts.append(Figure(f"{key}:drop:{drop_id}", "spend"))
    rules.append(Relation(Figure(key, "spend"), tuple(spend_parts)))


def _split_attributed(
    creator_id: str,
    ledger: _Ledger,
    drop_ids: list[str],
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> None:
    """Split a creator's attributed sales into each drop's and the rest."""
    key = f"creator:{creator_id}"
    parts = []
    for drop_id in (*drop_ids, None):
        money = ledger.by_creator.get((creator_id, drop_id), _Money())
        part = f"{key}:credited:{drop_id or 'outside'}"
        groups[part] = Group(
            len(money.charged), {"attributed": money.total(money.net)}, shown=False
        )
        parts.append(Figure(part, "attributed"))
    rules.append(Relation(Figure(key, "attributed"), tuple(parts)))


def _link_drop(
    drop_id: str,
    price: int,
    creator_ids: list[str],
    ledger: _Ledger,
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> None:
    """Add what a reader knows of a drop's revenue from its shown paid guests."""
    revenue = f"creators:all:drop:{drop_id}"
    paid = f"drop:{drop_id}:paid"
    # All paying guests include every guest who paid in the drop.
    rules.append(Relation(Figure(revenue), (Figure(paid),)))
    # The revenue is the paid guests times the public price when each guest
    # bought one unit at full price, as a reader may assume.
    rules.append(Relation(Figure(revenue, "spend"), (Figure(paid, "guests", price),)))
    uncredited = ledger.by_creator.get((None, drop_id), _Money())
    groups[f"drop:{drop_id}:uncredited"] = Group(
        len(uncredited.charged),
        {"spend": uncredited.total(uncredited.net)},
        shown=False,
    )
    credited = [f"creator:{key}:credited:{drop_id}" for key in creator_ids]
    for value, part_value in (("guests", "guests"), ("spend", "attributed")):
        rules.append(
            Relation(
                Figure(revenue, value),
                (
                    *(Figure(part, part_value) for part in credited),
                    Figure(f"drop:{drop_id}:uncredited", value),
                ),
            )
        )
