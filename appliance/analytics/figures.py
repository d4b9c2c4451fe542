"""The figures of one night: drop funnels, creator uplift, kits and exits.

Every figure counts distinct guests (bands) and is computed from the box's
store. :func:`night_figures` returns them only after
:func:`~appliance.analytics.suppression.suppress` has hidden every group of
fewer than five guests and every figure that would give one back, so the
document is safe to show, write or publish as it is.

Money follows ``appliance/wallet/report.py``: voided transactions and their
voids are left out, and refunds are subtracted from charges.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.analytics._creators import creator_groups
from appliance.analytics.suppression import (
    MIN_GROUP,
    Figure,
    Group,
    Partition,
    Relation,
    render,
    suppress,
)
from appliance.commerce.config import CommerceConfig
from appliance.config import SiteConfig

BUCKET_S = 15 * 60
"""The width of one bucket of exits over time, in seconds."""


class ReadableStore(Protocol):
    """A store that runs read-only SQL queries, like :class:`appliance.store.Store`."""

    def query(
        self, sql: str, parameters: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a read-only query and return every row."""
        ...


def night_window(commerce: CommerceConfig, night: str) -> tuple[float, float]:
    """Return the Unix times at which ``night`` (an ISO date) begins and ends.

    A night runs from ``night_rollover_hour`` local time to the same hour the
    next day, as :meth:`CommerceConfig.night_of` counts it.
    """
    zone = zoneinfo.ZoneInfo(commerce.timezone)
    day = dt.date.fromisoformat(night)
    rollover = dt.time(hour=commerce.night_rollover_hour)
    start = dt.datetime.combine(day, rollover, tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), rollover, tzinfo=zone)
    return start.timestamp(), end.timestamp()


def night_has_data(store: ReadableStore, config: SiteConfig, night: str) -> bool:
    """Return whether the store has a view, sale, claim, kit or exit of ``night``."""
    start, end = night_window(config.commerce, night)
    checks = (
        ("SELECT 1 FROM page_views WHERE night = ? LIMIT 1", (night,)),
        ("SELECT 1 FROM drop_claims WHERE night = ? LIMIT 1", (night,)),
        ("SELECT 1 FROM ledger_transactions WHERE night = ? LIMIT 1", (night,)),
        (
            "SELECT 1 FROM kits WHERE issued_at >= ? AND issued_at < ? LIMIT 1",
            (start, end),
        ),
        (
            "SELECT 1 FROM checkouts WHERE seen_at >= ? AND seen_at < ? LIMIT 1",
            (start, end),
        ),
    )
    return any(store.query(sql, parameters) for sql, parameters in checks)


@dataclass(slots=True)
class NightGroups:
    """The groups of a night before suppression and the relations between them."""

    night: str
    groups: dict[str, Group]
    rules: list[Partition | Relation]
    drops: list[tuple[str, str | None, int, int]]
    """``(drop, item, views, try-on views)`` of each drop that was viewed or claimed."""
    creators: list[tuple[str, str]]
    """``(creator id, name)`` in the order of the site file."""
    buckets: list[tuple[int, float, str]]
    """``(index, start, HH:MM)`` of each bucket of exits."""


def night_groups(store: ReadableStore, config: SiteConfig, night: str) -> NightGroups:
    """Count the groups of ``night`` (an ISO date); nothing is suppressed yet."""
    groups: dict[str, Group] = {}
    rules: list[Partition | Relation] = []
    drops = _drop_groups(store, night, groups, rules)
    drop_ids = [drop_id for drop_id, _, _, _ in drops]
    creators = creator_groups(store, config.commerce, night, drop_ids, groups, rules)
    _kit_groups(store, config.commerce, night, groups, rules)
    buckets = _exit_groups(store, config.commerce, night, groups, rules)
    return NightGroups(night, groups, rules, drops, creators, buckets)


def night_figures(
    store: ReadableStore, config: SiteConfig, night: str
) -> dict[str, Any]:
    """Return the figures of ``night`` (an ISO date) with small groups suppressed.

    The result is a JSON object: ``drops``, ``creators``, ``kits`` and
    ``exits``, each group as ``{"guests", <values>, "suppressed"}`` with
    nulls in place of a suppressed group's numbers.
    """
    counted = night_groups(store, config, night)
    return figures_document(counted, config, suppress(counted.groups, counted.rules))


def figures_document(
    counted: NightGroups, config: SiteConfig, hidden: set[str]
) -> dict[str, Any]:
    """Return the JSON object of ``counted`` with the groups in ``hidden`` as nulls.

    Only :func:`night_figures` passes the result of
    :func:`~appliance.analytics.suppression.suppress`; any other ``hidden``
    is for tests of the rule.
    """
    groups = counted.groups

    def shown(key: str) -> dict[str, Any]:
        return render(groups[key], key in hidden)

    return {
        "night": counted.night,
        "site": config.site_id,
        "site_name": config.site_name,
        "box": config.box_id,
        "currency": config.commerce.wallet.currency,
        "timezone": config.commerce.timezone,
        "min_group": MIN_GROUP,
        "drops": [
            {
                "drop": drop_id,
                "item": item,
                "views": views,
                "try_on_views": try_on_views,
                "claimed": shown(f"drop:{drop_id}:claimed"),
                "paid": shown(f"drop:{drop_id}:paid"),
                "picked_up": shown(f"drop:{drop_id}:picked_up"),
            }
            for drop_id, item, views, try_on_views in counted.drops
        ],
        "creators": _creator_section(counted.creators, groups, hidden),
        "kits": {
            "kits": shown("kits:kits"),
            "coupons_issued": shown("kits:coupons"),
            "coupons_redeemed": shown("kits:redeemed"),
        },
        "exits": {
            "bucket_minutes": BUCKET_S // 60,
            "total": shown("exits:total"),
            "buckets": [
                {"start": start, "label": label, **shown(f"exits:{index}")}
                for index, start, label in counted.buckets
            ],
        },
        "suppressed": sum(1 for key in hidden if groups[key].shown),
    }


def _drop_groups(
    store: ReadableStore,
    night: str,
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> list[tuple[str, str | None, int, int]]:
    """Add each drop's funnel stages; return ``(drop, item, views, try-on views)``."""
    views: dict[tuple[str, str], int] = {
        (str(page), str(subject)): int(count)
        for page, subject, count in store.query(
            "SELECT page, subject, views FROM page_views WHERE night = ?", (night,)
        )
    }
    stages = {
        str(drop_id): (int(claimed), int(paid), int(picked_up))
        for drop_id, claimed, paid, picked_up in store.query(
            "SELECT drop_id, COUNT(DISTINCT band),"
            " COUNT(DISTINCT CASE WHEN status = 'paid' THEN band END),"
            " COUNT(DISTINCT CASE WHEN status = 'paid'"
            " AND picked_up_at IS NOT NULL THEN band END)"
            " FROM drop_claims WHERE night = ? GROUP BY drop_id",
            (night,),
        )
    }
    items = {
        str(drop_id): str(item)
        for drop_id, item in store.query("SELECT id, item FROM drops")
    }
    drop_ids = sorted(
        set(stages) | {subject for page, subject in views if page == "drop"}
    )
    result = []
    for drop_id in drop_ids:
        claimed, paid, picked_up = stages.get(drop_id, (0, 0, 0))
        prefix = f"drop:{drop_id}"
        groups[f"{prefix}:claimed"] = Group(claimed)
        groups[f"{prefix}:paid"] = Group(paid)
        groups[f"{prefix}:picked_up"] = Group(picked_up)
        # Subtracting two shown stages gives the guests who dropped out
        # between them, so those are implicit parts.
        groups[f"{prefix}:unpaid"] = Group(claimed - paid, shown=False)
        groups[f"{prefix}:waiting"] = Group(paid - picked_up, shown=False)
        rules.append(
            Partition(f"{prefix}:claimed", (f"{prefix}:paid", f"{prefix}:unpaid"))
        )
        rules.append(
            Partition(f"{prefix}:paid", (f"{prefix}:picked_up", f"{prefix}:waiting"))
        )
        item = items.get(drop_id)
        try_on = views.get(("try-on", item), 0) if item is not None else 0
        result.append((drop_id, item, views.get(("drop", drop_id), 0), try_on))
    return result


def _creator_section(
    creators: list[tuple[str, str]], groups: dict[str, Group], hidden: set[str]
) -> dict[str, Any]:
    """Return the creator figures with the uplift of each shown group."""
    baseline = groups["creators:without"]

    def uplift(key: str) -> float | None:
        group = groups[key]
        # The uplift is derived from both groups, so it hides with either.
        # It divides the exact averages, not the rounded ones shown.
        if key in hidden or "creators:without" in hidden:
            return None
        if not group.guests or not baseline.guests or not baseline.values["spend"]:
            return None
        average = group.values["spend"] / group.guests
        return round(average / (baseline.values["spend"] / baseline.guests), 2)

    return {
        "all_guests": render(groups["creators:all"], "creators:all" in hidden),
        "with_creator": {
            **render(groups["creators:with"], "creators:with" in hidden),
            "uplift": uplift("creators:with"),
        },
        "without_creator": render(baseline, "creators:without" in hidden),
        "by_creator": [
            {
                "creator": creator_id,
                "name": name,
                **render(
                    groups[f"creator:{creator_id}"], f"creator:{creator_id}" in hidden
                ),
                "uplift": uplift(f"creator:{creator_id}"),
            }
            for creator_id, name in creators
        ],
    }


def _kit_groups(
    store: ReadableStore,
    commerce: CommerceConfig,
    night: str,
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> None:
    """Add the kit -> coupon -> redemption funnel of the night's kits."""
    start, end = night_window(commerce, night)
    row = store.query(
        "SELECT COUNT(DISTINCT band) FROM kits WHERE issued_at >= ? AND issued_at < ?",
        (start, end),
    )
    kits = int(row[0][0])
    # Coupons are issued with kits, so the night's coupons are those of its
    # kits, and a redemption counts whenever it happened.
    row = store.query(
        "SELECT COUNT(DISTINCT band), COUNT(DISTINCT CASE WHEN redeemed_at IS NOT NULL"
        " THEN band END) FROM coupons WHERE issued_at >= ? AND issued_at < ?",
        (start, end),
    )
    coupons, redeemed = int(row[0][0]), int(row[0][1])
    groups["kits:kits"] = Group(kits)
    groups["kits:coupons"] = Group(coupons)
    groups["kits:redeemed"] = Group(redeemed)
    groups["kits:no_coupon"] = Group(max(kits - coupons, 0), shown=False)
    groups["kits:unredeemed"] = Group(coupons - redeemed, shown=False)
    rules.append(Partition("kits:kits", ("kits:coupons", "kits:no_coupon")))
    rules.append(Partition("kits:coupons", ("kits:redeemed", "kits:unredeemed")))


def _exit_groups(
    store: ReadableStore,
    commerce: CommerceConfig,
    night: str,
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> list[tuple[int, float, str]]:
    """Add check-outs per bucket; return ``(index, start, HH:MM)`` of each bucket.

    The buckets run from the first to the last one with a check-out, empty
    ones between them included.
    """
    start, end = night_window(commerce, night)
    rows = store.query(
        "SELECT band, seen_at FROM checkouts WHERE seen_at >= ? AND seen_at < ?",
        (start, end),
    )
    checkouts: dict[int, list[str]] = defaultdict(list)
    for band, seen_at in rows:
        checkouts[int((float(seen_at) - start) // BUCKET_S)].append(str(band))
    everyone = [str(band) for band, _ in rows]
    groups["exits:total"] = Group(len(set(everyone)), {"checkouts": len(everyone)})
    _add_repeats("exits:total", everyone, groups, rules)
    if not checkouts:
        return []
    zone = zoneinfo.ZoneInfo(commerce.timezone)
    buckets = []
    for index in range(min(checkouts), max(checkouts) + 1):
        bands = checkouts.get(index, [])
        key = f"exits:{index}"
        groups[key] = Group(len(set(bands)), {"checkouts": len(bands)})
        _add_repeats(key, bands, groups, rules)
        bucket_start = start + index * BUCKET_S
        label = dt.datetime.fromtimestamp(bucket_start, zone).strftime("%H:%M")
        buckets.append((index, bucket_start, label))
    keys = [f"exits:{index}" for index, _, _ in buckets]
    rules.append(
        Relation(
            Figure("exits:total", "checkouts"),
            tuple(Figure(key, "checkouts") for key in keys),
        )
    )
    # A guest who left in two buckets is counted in both, so the buckets'
    # guests add up to the total's plus those extra counts.
    buckets_of: dict[str, int] = defaultdict(int)
    for index in range(min(checkouts), max(checkouts) + 1):
        for band in set(checkouts.get(index, [])):
            buckets_of[band] += 1
    spread = [count for count in buckets_of.values() if count > 1]
    groups["exits:spread"] = Group(
        len(spread), {"extra": sum(spread) - len(spread)}, shown=False
    )
    rules.append(
        Relation(
            Figure("exits:total"),
            (*(Figure(key) for key in keys), Figure("exits:spread", "extra", -1)),
        )
    )
    return buckets


def _add_repeats(
    key: str,
    bands: list[str],
    groups: dict[str, Group],
    rules: list[Partition | Relation],
) -> None:
    """Add the guests of ``key`` who checked out more than once, an implicit group.

    Check-outs minus guests are their extra check-outs, so a reader learns
    about them from the two shown figures.
    """
    counts: dict[str, int] = defaultdict(int)
    for band in bands:
        counts[band] += 1
    again = [count for count in counts.values() if count > 1]
    groups[f"{key}:again"] = Group(
        len(again), {"extra": sum(again) - len(again)}, shown=False
    )
    rules.append(
        Relation(
            Figure(key, "checkouts"), (Figure(key), Figure(f"{key}:again", "extra"))
        )
    )
