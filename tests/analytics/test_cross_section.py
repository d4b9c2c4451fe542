"""No hidden money figure comes back by subtracting figures of other sections.

A drop's price is public and its paid guests are shown, so a reader knows
its revenue as paid guests times price. These tests fill nights through the
box's services, write the report, and try every figure, every difference of
two and every difference of three shown money figures, drop revenues
included. None may equal the money of a group of one to four guests or of
one guest. A check on a document that hides only the small groups
themselves shows that the search finds such a leak when there is one.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from analytics_site import (  # noqa: F401 - registers the fixtures
    NIGHT,
    Night,
    load_json,
    night_fixture,
    site_config_fixture,
    site_toml,
)

from appliance.analytics.figures import (
    NightGroups,
    figures_document,
    night_figures,
    night_groups,
)
from appliance.analytics.report import write_report
from appliance.analytics.suppression import is_small, suppress
from appliance.config import SiteConfig

CREATOR_CODES = {"maya": "MAYA", "kofi": "KOFI", "zed": "ZED"}
# Wide limits let the generated nights charge amounts that rarely add up
# to the same sum by chance.
WIDE_LIMITS = {
    "max_topup = 50000": "max_topup = 5000000",
    "max_charge = 20000": "max_charge = 2000000",
    "night_topup_limit = 60000": "night_topup_limit = 50000000",
    "night_spend_limit = 30000": "night_spend_limit = 50000000",
}


@pytest.fixture(name="config_path")
def wide_config_path_fixture(tmp_path: Path) -> Path:
    """The analytics site with wallet limits wide enough for large amounts."""
    text = site_toml(tmp_path / "box")
    for old, new in WIDE_LIMITS.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


@dataclass
class Purchases:
    """The money of each guest as the test charged it, by creator and drop."""

    rows: list[tuple[int, str | None, str | None, int]] = field(default_factory=list)

    def add(self, number: int, creator: str | None, drop: str | None, amount: int):
        """Record ``amount`` of guest ``number`` credited to ``creator`` in ``drop``."""
        self.rows.append((number, creator, drop, amount))

    def per_guest(self) -> dict[str, int]:
        """Return each guest's spend, credited and non-drop money, by name."""
        values: dict[str, int] = {}
        for number, creator, drop, amount in self.rows:
            keys = [f"guest {number} spend"]
            if creator is not None:
                keys.append(f"guest {number} credited to {creator}")
            if drop is None:
                keys.append(f"guest {number} outside drops")
            for key in keys:
                values[key] = values.get(key, 0) + amount
        return values


def shown_money(document: dict[str, Any], config: SiteConfig) -> dict[str, int]:
    """Return every shown money figure and every drop revenue a reader derives."""
    figures: dict[str, int] = {}
    creators = document["creators"]
    groups = {
        "all guests": creators["all_guests"],
        "with creator": creators["with_creator"],
        "without creator": creators["without_creator"],
        **{f"creator {entry['creator']}": entry for entry in creators["by_creator"]},
    }
    for label, group in groups.items():
        for name in ("spend", "average", "attributed"):
            if group.get(name) is not None:
                figures[f"{label} {name}"] = group[name]
    prices = {drop.id: drop.price for drop in config.commerce.drops}
    for drop in document["drops"]:
        guests = drop["paid"]["guests"]
        if guests is not None:
            figures[f"{drop['drop']} paid x price"] = guests * prices[drop["drop"]]
    return figures


def protected_money(counted: NightGroups) -> dict[str, int]:
    """Return the nonzero money of every group of one to four guests."""
    values = {}
    for key, group in counted.groups.items():
        if not is_small(group.guests):
            continue
        for name in ("spend", "attributed", "average"):
            value = group.values.get(name)
            if value:
                values[f"{key} {name}"] = value
    return values


def recoveries(
    figures: dict[str, int], targets: dict[str, int]
) -> list[tuple[str, str]]:
    """Return ``(expression, target)`` for each a, a - b, a - b - c in ``targets``."""
    by_value: dict[int, list[str]] = {}
    for name, value in targets.items():
        by_value.setdefault(value, []).append(name)
    found = []
    names = sorted(figures)
    for size in (1, 2, 3):
        for chosen in itertools.permutations(names, size):
            first, *rest = chosen
            value = figures[first] - sum(figures[name] for name in rest)
            for target in by_value.get(value, ()):
                found.append((" - ".join(chosen), target))
    return found


def money_texts(page: str) -> set[str]:
    """Return every amount the report page writes as money."""
    return set(re.findall(r"-?\d+\.\d\d EUR", page))


def as_money(minor: int) -> str:
    """Return ``minor`` cents as the report writes them."""
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d} EUR"


def check_report(night: Night, folder: Path, purchases: Purchases) -> dict[str, Any]:
    """Write the report and check it against every subtraction; return its JSON."""
    config = night.box.config
    figures = night_figures(night.box.store, config, NIGHT)
    files = write_report(figures, folder)
    document = load_json(files.json)
    assert document == figures
    counted = night_groups(night.box.store, config, NIGHT)
    targets = {**protected_money(counted), **purchases.per_guest()}

    shown = shown_money(document, config)
    assert recoveries(shown, targets) == []
    # The page writes no amount that the JSON does not show.
    page = files.html.read_text()
    assert money_texts(page) <= {as_money(value) for value in shown.values()}
    for name, value in protected_money(counted).items():
        assert as_money(value) not in page, name
    # Every count in a table cell or beside a bar is a count the JSON shows.
    counts = set(re.findall(r"<td>(\d+)</td>", page))
    counts |= set(re.findall(r">(\d+)</text>", page))
    assert counts <= {str(value) for value in shown_counts(document)} | {"0"}
    return document


def shown_counts(document: Any) -> list[int]:
    """Return every whole number in the JSON document, at any depth."""
    if isinstance(document, dict):
        return [n for value in document.values() for n in shown_counts(value)]
    if isinstance(document, list):
        return [n for value in document for n in shown_counts(value)]
    if isinstance(document, int) and not isinstance(document, bool):
        return [document]
    return []


async def test_creator_drop_subtraction_blocked(night: Night, tmp_path: Path) -> None:
    # Twenty guests buy Maya's drop, which credits Maya. One more guest
    # uses Maya's code on a beer: her attributed sales minus 20 x 42.00 EUR
    # would be that guest's 4.50 EUR. Six guests buy a beer without a code.
    purchases = Purchases()
    for number in range(1, 28):
        await night.top_up(number)
    for number in range(1, 21):
        await night.buy_drop(number, "maya-drop", pick_up=False)
        purchases.add(number, "maya", "maya-drop", 4200)
    await night.charge(21, "beer", 450, creator="MAYA")
    purchases.add(21, "maya", None, 450)
    for number in range(22, 28):
        await night.charge(number, "beer", 450)
        purchases.add(number, None, None, 450)

    document = check_report(night, tmp_path, purchases)

    (maya_drop,) = document["drops"]
    assert maya_drop["paid"] == {"guests": 20, "suppressed": False}
    maya = document["creators"]["by_creator"][0]
    assert maya["creator"] == "maya"
    assert maya["suppressed"] is True
    assert maya["attributed"] is None
    assert maya["spend"] is None
    # With Maya hidden, with_creator (Maya's guests alone) would give the
    # beer back as its spend minus the drop's revenue. With with_creator
    # hidden too, all_guests minus without_creator would, so the smaller
    # part, without_creator, is hidden as well.
    creators = document["creators"]
    assert creators["with_creator"]["suppressed"] is True
    assert creators["without_creator"]["suppressed"] is True
    assert creators["all_guests"] == {
        "guests": 27,
        "spend": 20 * 4200 + 7 * 450,
        "average": round((20 * 4200 + 7 * 450) / 27),
        "suppressed": False,
    }


async def test_unprotected_document_leaks(night: Night) -> None:
    # The same night with only the small groups hidden: the search must
    # find the one guest's 4.50 EUR, or it proves nothing above.
    purchases = Purchases()
    for number in range(1, 22):
        await night.top_up(number)
    for number in range(1, 21):
        await night.buy_drop(number, "maya-drop", pick_up=False)
        purchases.add(number, "maya", "maya-drop", 4200)
    await night.charge(21, "beer", 450, creator="MAYA")
    purchases.add(21, "maya", None, 450)
    config = night.box.config
    counted = night_groups(night.box.store, config, NIGHT)
    small = {key for key, group in counted.groups.items() if is_small(group.guests)}

    leaky = figures_document(counted, config, small)
    found = recoveries(shown_money(leaky, config), purchases.per_guest())

    assert (
        "creator maya attributed - maya-drop paid x price",
        "guest 21 credited to maya",
    ) in found
    assert suppress(counted.groups, counted.rules) > small


async def generate_night(night: Night, seed: int) -> Purchases:
    """Fill the night with guests whose choices and amounts come from ``seed``."""
    rng = random.Random(seed)
    purchases = Purchases()
    guests = rng.randint(14, 24)
    tab_chance = rng.choice((0.15, 0.35, 0.6))
    # Kofi and Zed are rare, so their groups are often small.
    creators = ["maya", "kofi", "zed", None]
    weights = [0.3, 0.12, 0.05, 0.53]
    for number in range(1, guests + 1):
        await night.top_up(number, 5_000_000)
        if rng.random() < 0.5:
            await night.buy_drop(number, "maya-drop", pick_up=rng.random() < 0.7)
            purchases.add(number, "maya", "maya-drop", 4200)
        if rng.random() < 0.35:
            creator = rng.choices(creators, weights)[0]
            extra = {} if creator is None else {"creator": CREATOR_CODES[creator]}
            await night.call(
                "drops",
                "claim",
                drop="tee-drop",
                band=f"ib-1-{number}",
                pay=True,
                **extra,
            )
            purchases.add(number, creator, "tee-drop", 3500)
        for _ in range(rng.choice((0, 1, 1, 2))):
            if rng.random() >= tab_chance:
                continue
            creator = rng.choices(creators, weights)[0]
            amount = rng.randint(1_000, 1_000_000)
            extra = {} if creator is None else {"creator": CREATOR_CODES[creator]}
            await night.charge(number, "tab", amount, **extra)
            purchases.add(number, creator, None, amount)
    return purchases


@pytest.mark.parametrize("seed", [11, 23, 37, 41, 59])
async def test_generated_nights_hide_money(
    night: Night, tmp_path: Path, seed: int
) -> None:
    purchases = await generate_night(night, seed)

    document = check_report(night, tmp_path, purchases)

    # The night had small groups to protect and shown money to subtract.
    counted = night_groups(night.box.store, night.box.config, NIGHT)
    assert protected_money(counted)
    assert document["suppressed"] > 0
    assert shown_money(document, night.box.config)
