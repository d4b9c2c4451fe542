"""Suppression of small groups, in the rule itself and in every export.

The rule is tested on its own first. Then nights filled through the box's
services are exported with ``write_report``, and the HTML and JSON files
are searched for the values of every hidden group: none may appear, while
a group of exactly five guests appears.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from analytics_site import (  # noqa: F401 - registers the fixtures
    EVENING,
    NIGHT,
    Night,
    config_path_fixture,
    load_json,
    night_fixture,
    site_config_fixture,
)

from appliance.analytics.figures import night_figures
from appliance.analytics.report import ReportFiles, write_report
from appliance.analytics.suppression import (
    Figure,
    Group,
    Partition,
    Relation,
    render,
    suppress,
)

HIDDEN = {"guests": None, "suppressed": True}


def test_suppress_small_groups() -> None:
    groups = {
        key: Group(size) for key, size in (("a", 0), ("b", 1), ("c", 4), ("d", 5))
    }

    assert suppress(groups) == {"b", "c"}


def test_suppress_single_hidden_part_hides_smallest_other() -> None:
    groups = {
        "total": Group(21),
        "small": Group(2),
        "empty": Group(0),
        "big": Group(12),
        "medium": Group(7),
    }
    partition = Partition("total", ("small", "empty", "big", "medium"))

    assert suppress(groups, [partition]) == {"small", "medium"}


def test_suppress_without_other_part_hides_total() -> None:
    groups = {"total": Group(9), "small": Group(3), "empty": Group(0)}

    assert suppress(groups, [Partition("total", ("small", "empty"))]) == {
        "small",
        "total",
    }


def test_suppress_cascades_to_outer_partition() -> None:
    # Hiding "inner" as the total of a partition leaves it as the single
    # hidden part of "outer", so the other part of "outer" hides too.
    groups = {
        "outer": Group(20),
        "inner": Group(8),
        "rest": Group(12),
        "small": Group(2),
    }
    partitions = [
        Partition("inner", ("small",)),
        Partition("outer", ("inner", "rest")),
    ]

    assert suppress(groups, partitions) == {"small", "inner", "rest"}


def test_suppress_implicit_part() -> None:
    # The implicit part is never shown, so a small one hides a shown part;
    # a large one can be recovered harmlessly and changes nothing.
    small = {"total": Group(7), "shown": Group(6), "gap": Group(1, shown=False)}
    large = {"total": Group(17), "shown": Group(6), "gap": Group(11, shown=False)}
    rule = [Partition("total", ("shown", "gap"))]

    assert suppress(small, rule) == {"gap", "shown"}
    assert suppress(large, rule) == set()


def test_suppress_two_hidden_parts_stand() -> None:
    groups = {"total": Group(30), "a": Group(2), "b": Group(3), "c": Group(25)}

    assert suppress(groups, [Partition("total", ("a", "b", "c"))]) == {"a", "b"}


def test_suppress_hidden_total_rebuilt_from_parts() -> None:
    # Hiding "with" would not help: 10 + 6 gives it back, and 20 - 16 the
    # small "without". Only hiding the total "all" covers it.
    groups = {
        "all": Group(20, {"spend": 9000}),
        "with": Group(16, {"spend": 8000}),
        "without": Group(4, {"spend": 1000}),
        "maya": Group(10, {"spend": 5000}),
        "kofi": Group(6, {"spend": 3000}),
    }
    rules = [
        Partition("all", ("with", "without"), ("spend",)),
        Partition("with", ("maya", "kofi"), ("spend",)),
    ]

    assert suppress(groups, rules) == {"without", "all"}


def test_suppress_drop_revenue_relation() -> None:
    # Maya's attributed sales are her drop's revenue (20 paid guests times
    # the public 42.00) plus one guest's beer: the beer's guest is hidden,
    # so Maya's group is hidden.
    groups = {
        "maya": Group(21, {"attributed": 84450}),
        "paid": Group(20),
        "revenue": Group(20, {"spend": 84000}, shown=False),
        "outside": Group(1, {"attributed": 450}, shown=False),
    }
    rules = [
        Relation(
            Figure("maya", "attributed"),
            (Figure("revenue", "spend"), Figure("outside", "attributed")),
        ),
        Relation(Figure("revenue", "spend"), (Figure("paid", "guests", 4200),)),
    ]

    assert suppress(groups, rules) == {"outside", "maya"}
    # Without the link to the paid guests the revenue is unknown, and the
    # beer cannot be recovered.
    assert suppress(groups, rules[:1]) == {"outside"}


def test_suppress_values_of_one_group() -> None:
    # 7 check-outs by 6 guests: one guest left twice, a group of one.
    groups = {
        "bucket": Group(6, {"checkouts": 7}),
        "again": Group(1, {"extra": 1}, shown=False),
    }
    rule = Relation(
        Figure("bucket", "checkouts"), (Figure("bucket"), Figure("again", "extra"))
    )

    assert suppress(groups, [rule]) == {"again", "bucket"}


def test_suppress_unknown_group_in_partition() -> None:
    with pytest.raises(KeyError, match="unknown group 'missing'"):
        suppress({"total": Group(9)}, [Partition("total", ("missing",))])


def test_render_hides_every_value() -> None:
    group = Group(3, {"spend": 1110, "average": 370})

    assert render(group, True) == {
        "guests": None,
        "spend": None,
        "average": None,
        "suppressed": True,
    }
    assert render(group, False) == {
        "guests": 3,
        "spend": 1110,
        "average": 370,
        "suppressed": False,
    }


def exported(night: Night, folder: Path) -> tuple[ReportFiles, str, str]:
    """Write the night's report; return its files and their text."""
    figures = night_figures(night.box.store, night.box.config, NIGHT)
    files = write_report(figures, folder)
    return files, files.html.read_text(), files.json.read_text()


def absent(pattern: str, *texts: str) -> bool:
    """Return whether no text contains ``pattern`` as a whole number or amount."""
    expression = re.compile(rf"(?<![\d.]){pattern}(?![\d])")
    return not any(expression.search(text) for text in texts)


async def test_creator_subtraction_blocked(night: Night, tmp_path: Path) -> None:
    # Maya: 6 guests, 2 beers each with her code (900). Kofi: 3 guests, a
    # shot each (370). No code: 5 guests, a beer each (450).
    for number in range(1, 15):
        await night.top_up(number)
    for number in range(1, 7):
        await night.charge(number, "beer", 450, quantity=2, creator="MAYA")
    for number in range(7, 10):
        await night.charge(number, "shot", 370, creator="KOFI")
    for number in range(10, 15):
        await night.charge(number, "beer", 450)

    files, page, text = exported(night, tmp_path)
    creators = load_json(files.json)["creators"]
    by_creator = {entry["creator"]: entry for entry in creators["by_creator"]}

    # Kofi's 3 guests are hidden. With creator = Maya + Kofi + Zed, so
    # showing Maya (6) would give Kofi back as 9 - 6: Maya hides too.
    hidden = {"spend": None, "average": None, "attributed": None, "uplift": None}
    assert by_creator["kofi"] == {
        "creator": "kofi",
        "name": "DJ Kofi",
        **HIDDEN,
        **hidden,
    }
    assert by_creator["maya"] == {"creator": "maya", "name": "Maya", **HIDDEN, **hidden}
    assert by_creator["zed"]["guests"] == 0
    assert by_creator["zed"]["suppressed"] is False
    assert creators["with_creator"]["guests"] == 9
    assert creators["with_creator"]["spend"] == 6510
    assert creators["with_creator"]["uplift"] == 1.61
    # Exactly five guests are shown, with their spend.
    assert creators["without_creator"] == {
        "guests": 5,
        "spend": 2250,
        "average": 450,
        "suppressed": False,
    }
    assert creators["all_guests"]["guests"] == 14
    assert "22.50 EUR" in page
    assert "65.10 EUR" in page
    # Neither file contains Kofi's spend (1110) and average (370) or Maya's
    # spend and attributed sales (5400) and average (900).
    for pattern in ("1110", "370", "5400", "900"):
        assert absent(pattern, text), pattern
    for pattern in (r"11\.10 EUR", r"3\.70 EUR", r"54\.00 EUR", r"9\.00 EUR"):
        assert absent(pattern, page), pattern


async def test_exit_buckets_suppressed(night: Night, tmp_path: Path) -> None:
    await night.check_out(list(range(1, 7)), EVENING + 10)
    await night.check_out(list(range(7, 10)), EVENING + 900 + 10)
    await night.check_out(list(range(10, 15)), EVENING + 1800 + 10)

    files, page, text = exported(night, tmp_path)
    exits = load_json(files.json)["exits"]

    assert exits["total"] == {"guests": 14, "checkouts": 14, "suppressed": False}
    buckets = {bucket["label"]: bucket for bucket in exits["buckets"]}
    assert buckets["20:00"]["checkouts"] == 6
    # 3 check-outs are too few, and 14 - 6 would give them back if the
    # bucket of 5 were shown.
    assert buckets["20:15"] == {
        "start": EVENING + 900,
        "label": "20:15",
        **HIDDEN,
        "checkouts": None,
    }
    assert buckets["20:30"]["checkouts"] is None
    assert buckets["20:30"]["suppressed"] is True
    assert "<tr><td>20:00</td><td>6</td></tr>" in page
    assert '<tr><td>20:15</td><td class="suppressed">suppressed</td></tr>' in page
    assert '<tr><td>20:30</td><td class="suppressed">suppressed</td></tr>' in page
    assert '"checkouts": 3' not in text
    assert '"checkouts": 5' not in text


async def test_exit_twice_hides_total(night: Night, tmp_path: Path) -> None:
    # Guest 1 leaves at 20:00 and again at 20:30: 12 check-outs by 11
    # guests would show that one guest left twice.
    await night.check_out(list(range(1, 7)), EVENING + 10)
    await night.check_out([1, *range(7, 12)], EVENING + 1800 + 10)

    files, page, _ = exported(night, tmp_path)
    exits = load_json(files.json)["exits"]

    assert exits["total"] == {"guests": None, "checkouts": None, **HIDDEN}
    buckets = {bucket["label"]: bucket for bucket in exits["buckets"]}
    assert buckets["20:00"]["checkouts"] == 6
    assert buckets["20:30"]["checkouts"] == 6
    assert "suppressed check-outs in all" in page


async def test_drop_of_four_hidden_five_shown(night: Night, tmp_path: Path) -> None:
    for number in range(1, 10):
        await night.top_up(number)
    for number in range(1, 5):
        await night.buy_drop(number, "cap-drop", pick_up=True)
    for number in range(5, 10):
        await night.buy_drop(number, "tee-drop", pick_up=True)

    files, page, _ = exported(night, tmp_path)
    drops = {drop["drop"]: drop for drop in load_json(files.json)["drops"]}

    for stage in ("claimed", "paid", "picked_up"):
        assert drops["cap-drop"][stage] == HIDDEN, stage
        assert drops["tee-drop"][stage] == {"guests": 5, "suppressed": False}, stage
    cap_section = page[page.index("Drop cap-drop") : page.index("Drop tee-drop")]
    assert absent("4", cap_section.split("</p>", 1)[1])
    assert "<tr><td>claimed</td><td>5</td></tr>" in page


async def test_html_and_json_share_figures(night: Night, tmp_path: Path) -> None:
    for number in range(1, 7):
        await night.top_up(number)
        await night.charge(number, "beer", 450, creator="MAYA")

    figures = night_figures(night.box.store, night.box.config, NIGHT)
    files = write_report(figures, tmp_path / "out")
    page = files.html.read_text()

    assert files.html.name == f"report-{NIGHT}.html"
    assert files.json.name == f"report-{NIGHT}.json"
    assert load_json(files.json) == figures
    assert "27.00 EUR" in page
    # The page is self-contained: no script, nothing loaded from elsewhere.
    lowered = page.lower()
    for forbidden in ("<script", "src=", "href=", "url(", "@import", "<link"):
        assert forbidden not in lowered, forbidden
    assert re.findall(r"https?://[^\"' ]+", page) == [
        "http://www.w3.org/2000/svg"
    ] * page.count("<svg")
    # The site's name is escaped, not markup.
    assert "Analytics &amp; &lt;Test&gt; venue" in page
    assert "<Test>" not in page
    # Every chart has a title and axis labels.
    assert page.count("<svg") == page.count("<title>") - 1
    assert "average spend per guest, EUR" in page
    assert ">guests</text>" in page
