"""The commerce sections of the site configuration: parsed values and named errors.

Each bad-value case changes one key of a full commerce example and expects a
ConfigError whose message names that key and the value that was given.
"""

from __future__ import annotations

import copy
import datetime as dt
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance.commerce.config import (
    CommerceConfig,
    Creator,
    Item,
    PartnerOffer,
    SetSlot,
    Tier,
    WalletConfig,
)
from appliance.config import SiteConfig, load_config, parse_config
from appliance.errors import ConfigError

SAMPLE = Path(appliance.__file__).parent / "samples" / "site.toml"
UTC = dt.UTC

EXAMPLE = """
[site]
id = "club"
name = "Club Nord"
timezone = "Europe/Berlin"
night_rollover_hour = 12
portal_url = "https://club.example.org/"

[box]
id = "box-1"
data_dir = "var"

[[readers]]
id = "exit-1"
role = "exit"

[wallet]
currency = "EUR"
max_topup = 40000
max_charge = 15000
night_topup_limit = 80000
night_spend_limit = 60000

[tokens]
max_ttl_h = 12

[[items]]
id = "beer"
name = "Beer"
price = 450

[[items]]
id = "merch"
name = "Merch"

[[items]]
id = "kit-bundle"
name = "Recovery kit bundle"
price = 1500
kit_bundle = true

[[items]]
id = "tee"
price = 3500

[[creators]]
id = "maya"
name = "Maya"
code = "maya"

[[creators]]
id = "kofi"
name = "DJ Kofi"
code = "KOFI"

[[promo_codes]]
code = "save10"
percent = 10
max_uses = 3
expires_at = 2026-12-06T06:00:00

[[promo_codes]]
code = "FIVEOFF"
amount = 500
creator = "kofi"
applies_to = "charges"

[[tiers]]
id = "gold"
early_access = true
kit_bundle_discount_percent = 20

[[tiers]]
id = "silver"

[[members]]
band = "ib-1-900"
tier = "gold"

[[members]]
band = "uid-00000000002a"
tier = "silver"

[[partner_offers]]
id = "hotel"
partner = "Hotel Nord"
title = "Recovery microcation"
codes = ["hotel-001", "HOTEL-002"]

[[sets]]
id = "set-maya"
creator = "maya"
starts_at = 2026-12-05T23:00:00+01:00
ends_at = 2026-12-06T01:00:00+01:00

[[sets]]
id = "set-open"
starts_at = 2026-12-06T01:00:00
ends_at = 2026-12-06T03:00:00

[[drops]]
id = "tee-drop"
item = "tee"
price = 3500
quantity = 100
starts_at = 2026-12-06T00:30:00Z
ends_at = 2026-12-06T02:00:00Z
per_guest_limit = 2
early_access_min = 15
reservation_s = 300
creator = "maya"

[drops.quotas]
box-1 = 60
box-2 = 40

[[drops]]
id = "vinyl"
item = "merch"
price = 0
quantity = 10
starts_at = 2026-12-06T01:30:00
ends_at = 2026-12-06T04:00:00

[[terminals]]
id = "bar-1"

[[terminals]]
id = "bar-2"
"""

EXAMPLE_RAW: dict[str, Any] = tomllib.loads(EXAMPLE)

Change = Callable[[dict[str, Any]], None]


def example() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE_RAW)


def parse(raw: dict[str, Any]) -> SiteConfig:
    return parse_config(raw, base_dir=Path("/srv/nightbox"))


def utc(*fields: int) -> float:
    """Return the Unix time of a UTC date-time given as year, month, day, ..."""
    return dt.datetime(*fields, tzinfo=UTC).timestamp()


def test_commerce_example_parsed() -> None:
    commerce = parse(example()).commerce

    assert commerce.timezone == "Europe/Berlin"
    assert commerce.night_rollover_hour == 12
    assert commerce.portal_url == "https://club.example.org/"
    assert commerce.wallet == WalletConfig("EUR", 40000, 15000, 80000, 60000)
    assert commerce.token_max_ttl_s == 12 * 3600.0
    assert commerce.items == (
        Item("beer", "Beer", 450),
        Item("merch", "Merch", None),
        Item("kit-bundle", "Recovery kit bundle", 1500, kit_bundle=True),
        Item("tee", "tee", 3500),
    )
    assert commerce.creators == (
        Creator("maya", "Maya", "MAYA"),
        Creator("kofi", "DJ Kofi", "KOFI"),
    )
    assert commerce.tiers == (
        Tier("gold", early_access=True, kit_bundle_discount_percent=20),
        Tier("silver"),
    )
    assert commerce.members == {"ib-1-900": "gold", "uid-00000000002a": "silver"}
    assert commerce.partner_offers == (
        PartnerOffer(
            "hotel", "Hotel Nord", "Recovery microcation", ("HOTEL-001", "HOTEL-002")
        ),
    )
    assert commerce.terminals == ("bar-1", "bar-2")


def test_commerce_promo_codes_parsed() -> None:
    save10, fiveoff = parse(example()).commerce.promo_codes

    assert save10.code == "SAVE10"
    assert save10.percent == 10
    assert save10.amount is None
    assert save10.max_uses == 3
    # A date-time without an offset is read in site.timezone (CET in December).
    assert save10.expires_at == utc(2026, 12, 6, 5, 0)
    assert save10.creator is None
    assert save10.applies_to == "all"
    assert fiveoff.code == "FIVEOFF"
    assert fiveoff.percent is None
    assert fiveoff.amount == 500
    assert fiveoff.max_uses == 1
    assert fiveoff.expires_at is None
    assert fiveoff.creator == "kofi"
    assert fiveoff.applies_to == "charges"


def test_commerce_sets_parsed() -> None:
    assert parse(example()).commerce.sets == (
        SetSlot("set-maya", "maya", utc(2026, 12, 5, 22, 0), utc(2026, 12, 6, 0, 0)),
        SetSlot("set-open", None, utc(2026, 12, 6, 0, 0), utc(2026, 12, 6, 2, 0)),
    )


def test_commerce_drops_parsed() -> None:
    tee, vinyl = parse(example()).commerce.drops

    assert tee.id == "tee-drop"
    assert tee.item == "tee"
    assert tee.price == 3500
    assert tee.quantity == 100
    assert tee.starts_at == utc(2026, 12, 6, 0, 30)
    assert tee.ends_at == utc(2026, 12, 6, 2, 0)
    assert tee.per_guest_limit == 2
    assert tee.early_access_s == 900.0
    assert tee.reservation_s == 300.0
    assert tee.creator == "maya"
    assert tee.quotas == {"box-1": 60, "box-2": 40}
    assert tee.quota("box-1") == 60
    assert tee.quota("box-3") == 0
    assert vinyl.price == 0
    assert vinyl.starts_at == utc(2026, 12, 6, 0, 30)
    assert vinyl.per_guest_limit == 1
    assert vinyl.early_access_s == 0.0
    assert vinyl.reservation_s == 120.0
    assert vinyl.creator is None
    assert vinyl.quotas == {}
    assert vinyl.quota("box-1") == 10


def test_commerce_lookups() -> None:
    commerce = parse(example()).commerce
    maya = Creator("maya", "Maya", "MAYA")

    assert commerce.item("merch") == Item("merch", "Merch", None)
    assert commerce.item("poster") is None
    assert commerce.creator_by_code("Maya") == maya
    assert commerce.creator_by_code("NOBODY") is None
    assert commerce.creator_link(maya) == "https://club.example.org/c/MAYA"
    assert commerce.tier("gold") == Tier("gold", True, 20)
    assert commerce.tier("bronze") is None


def test_commerce_defaults_without_sections(tmp_path: Path) -> None:
    raw = {
        "site": {"id": "venue"},
        "box": {},
        "readers": [{"id": "exit-1", "role": "exit"}],
    }

    assert parse_config(raw, base_dir=tmp_path).commerce == CommerceConfig()


def test_commerce_load_matches_parse(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE)

    assert (
        load_config(path).commerce
        == parse_config(example(), base_dir=tmp_path).commerce
    )


def test_commerce_sample_site_loads() -> None:
    config = load_config(SAMPLE)

    assert config.site_id == "sample"
    assert config.commerce.wallet.currency == "EUR"


def put(path: str, value: Any) -> Change:
    """Return a change that sets ``path`` (dots and [index]) in the document."""

    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return change


def remove(path: str) -> Change:
    """Return a change that deletes the key ``path`` (dots and [index])."""

    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return change


def append(table: str, entry: dict[str, Any]) -> Change:
    """Return a change that appends ``entry`` to the array of tables ``table``."""

    def change(raw: dict[str, Any]) -> None:
        raw[table].append(entry)

    return change


BERLIN = dt.timezone(dt.timedelta(hours=1))
EARLIER = dt.datetime(2026, 12, 6, 0, 0, tzinfo=UTC)

UNKNOWN_KEYS: list[tuple[str, str, str]] = [
    ("site", "site.colour", "[site]"),
    ("wallet", "wallet.overdraft", "[wallet]"),
    ("tokens", "tokens.max_ttl_s", "[tokens]"),
    ("items", "items[0].vat", "[items[0]]"),
    ("creators", "creators[1].email", "[creators[1]]"),
    ("promo-codes", "promo_codes[0].stackable", "[promo_codes[0]]"),
    ("tiers", "tiers[0].discount", "[tiers[0]]"),
    ("members", "members[1].name", "[members[1]]"),
    ("partner-offers", "partner_offers[0].url", "[partner_offers[0]]"),
    ("sets", "sets[0].stage", "[sets[0]]"),
    ("drops", "drops[0].stock", "[drops[0]]"),
    ("terminals", "terminals[0].role", "[terminals[0]]"),
]

BAD_VALUES: list[tuple[str, Change, list[str]]] = [
    *(
        (f"unknown-key-{name}", put(path, 1), [f"'{path.rsplit('.', 1)[1]}'", place])
        for name, path, place in UNKNOWN_KEYS
    ),
    ("currency-lower", put("wallet.currency", "eur"), ["wallet.currency", "'eur'"]),
    ("currency-long", put("wallet.currency", "EURO"), ["wallet.currency", "'EURO'"]),
    ("currency-number", put("wallet.currency", 978), ["wallet.currency", "978"]),
    (
        "amount-negative",
        put("wallet.max_topup", -5),
        ["wallet.max_topup", "-5", "minimum"],
    ),
    ("amount-zero", put("wallet.max_charge", 0), ["wallet.max_charge", "0"]),
    ("amount-float", put("items[0].price", 4.5), ["items[0].price", "4.5"]),
    ("amount-bool", put("items[0].price", True), ["items[0].price", "True"]),
    (
        "amount-huge",
        put("wallet.night_spend_limit", 10**12),
        ["wallet.night_spend_limit", str(10**12), "maximum"],
    ),
    (
        "drop-price-huge",
        put("drops[0].price", 10**10),
        ["drops[0].price", str(10**10), "maximum"],
    ),
    ("drop-price-negative", put("drops[1].price", -1), ["drops[1].price", "-1"]),
    ("item-price-negative", put("items[0].price", -1), ["items[0].price", "-1"]),
    ("item-id", put("items[1].id", "Merch Tee"), ["items[1].id", "'Merch Tee'"]),
    (
        "item-duplicate",
        append("items", {"id": "beer", "price": 500}),
        ["items", "'beer'", "twice"],
    ),
    ("items-table", put("items", {"id": "beer"}), ["items", "array of tables"]),
    (
        "drop-unknown-item",
        put("drops[0].item", "poster"),
        ["drops[0].item", "'poster'", "[[items]]"],
    ),
    (
        "drop-ends-before-start",
        put("drops[0].ends_at", EARLIER),
        ["drops[0].ends_at", "2026-12-06T00:00:00+00:00", "drops[0].starts_at"],
    ),
    (
        "drop-ends-at-start",
        put("drops[0].ends_at", dt.datetime(2026, 12, 6, 1, 30, tzinfo=BERLIN)),
        ["drops[0].ends_at", "2026-12-06T01:30:00+01:00"],
    ),
    (
        "set-ends-before-start",
        put("sets[1].ends_at", dt.datetime(2026, 12, 6, 0, 30)),
        ["sets[1].ends_at", "2026-12-06T00:30:00", "sets[1].starts_at"],
    ),
    (
        "drop-start-text",
        put("drops[0].starts_at", "tonight"),
        ["drops[0].starts_at", "'tonight'", "date-time"],
    ),
    (
        "drop-start-date-only",
        put("drops[0].starts_at", dt.date(2026, 12, 6)),
        ["drops[0].starts_at", "2026, 12, 6", "date-time"],
    ),
    (
        "drop-quantity-zero",
        put("drops[0].quantity", 0),
        ["drops[0].quantity", "0", "minimum"],
    ),
    (
        "quotas-above-quantity",
        put("drops[0].quotas.box-2", 41),
        ["drops[0].quotas", "101", "quantity = 100"],
    ),
    (
        "quotas-miss-this-box",
        put("drops[0].quotas", {"box-2": 40, "box-3": 10}),
        ["drops[0].quotas", "'box-1'"],
    ),
    (
        "quota-negative",
        put("drops[0].quotas.box-2", -1),
        ["drops[0].quotas.box-2", "-1"],
    ),
    (
        "early-access-long",
        put("drops[0].early_access_min", 1441),
        ["drops[0].early_access_min", "1441", "maximum"],
    ),
    (
        "reservation-short",
        put("drops[0].reservation_s", 5),
        ["drops[0].reservation_s", "5", "minimum"],
    ),
    (
        "per-guest-limit-zero",
        put("drops[0].per_guest_limit", 0),
        ["drops[0].per_guest_limit", "0"],
    ),
    (
        "drop-creator-unknown",
        put("drops[0].creator", "zed"),
        ["drops[0].creator", "'zed'", "kofi, maya"],
    ),
    (
        "creator-code-duplicate",
        put("creators[1].code", "Maya"),
        ["creators", "code 'MAYA'", "twice"],
    ),
    (
        "creator-code-short",
        put("creators[0].code", "MY"),
        ["creators[0].code", "'MY'", "3-24"],
    ),
    (
        "creator-code-spaces",
        put("creators[0].code", "MAYA 1"),
        ["creators[0].code", "'MAYA 1'"],
    ),
    (
        "promo-percent-and-amount",
        put("promo_codes[0].amount", 100),
        ["promo_codes[0]", "'percent'", "'amount'"],
    ),
    (
        "promo-neither",
        remove("promo_codes[1].amount"),
        ["promo_codes[1]", "'percent'", "'amount'"],
    ),
    (
        "promo-percent-zero",
        put("promo_codes[0].percent", 0),
        ["promo_codes[0].percent", "0", "minimum"],
    ),
    (
        "promo-percent-above-100",
        put("promo_codes[0].percent", 101),
        ["promo_codes[0].percent", "101", "maximum"],
    ),
    (
        "promo-amount-negative",
        put("promo_codes[1].amount", -500),
        ["promo_codes[1].amount", "-500"],
    ),
    (
        "promo-creator-unknown",
        put("promo_codes[1].creator", "zed"),
        ["promo_codes[1].creator", "'zed'", "kofi, maya"],
    ),
    (
        "promo-applies-to",
        put("promo_codes[1].applies_to", "kits"),
        ["promo_codes[1].applies_to", "'kits'"],
    ),
    (
        "promo-max-uses-zero",
        put("promo_codes[0].max_uses", 0),
        ["promo_codes[0].max_uses", "0"],
    ),
    (
        "promo-duplicate",
        append("promo_codes", {"code": "Save10", "amount": 100}),
        ["promo_codes", "code 'SAVE10'", "twice"],
    ),
    (
        "promo-equals-creator-code",
        put("promo_codes[0].code", "kofi"),
        ["promo_codes[0].code", "'KOFI'", "creators[1].code"],
    ),
    (
        "set-creator-unknown",
        put("sets[0].creator", "zed"),
        ["sets[0].creator", "'zed'"],
    ),
    (
        "member-tier-unknown",
        put("members[0].tier", "platinum"),
        ["members[0].tier", "'platinum'"],
    ),
    (
        "member-band-duplicate",
        append("members", {"band": "ib-1-900", "tier": "silver"}),
        ["members", "'ib-1-900'", "twice"],
    ),
    (
        "member-band-invalid",
        put("members[0].band", "IB 1 900"),
        ["members[0].band", "'IB 1 900'"],
    ),
    (
        "tier-discount-above-100",
        put("tiers[0].kit_bundle_discount_percent", 120),
        ["tiers[0].kit_bundle_discount_percent", "120"],
    ),
    (
        "offer-codes-empty",
        put("partner_offers[0].codes", []),
        ["partner_offers[0].codes", "[]"],
    ),
    (
        "offer-codes-string",
        put("partner_offers[0].codes", "HOTEL-001"),
        ["partner_offers[0].codes", "'HOTEL-001'"],
    ),
    (
        "offer-code-invalid",
        put("partner_offers[0].codes", ["HOTEL-001", "no spaces"]),
        ["partner_offers[0].codes[1]", "'no spaces'"],
    ),
    (
        "offer-codes-duplicate",
        append(
            "partner_offers",
            {"id": "spa", "partner": "Spa", "title": "Spa day", "codes": ["hotel-002"]},
        ),
        ["partner_offers", "code 'HOTEL-002'", "twice"],
    ),
    (
        "timezone-unknown",
        put("site.timezone", "Mars/Olympus"),
        ["site.timezone", "'Mars/Olympus'", "IANA"],
    ),
    ("timezone-empty", put("site.timezone", ""), ["site.timezone", "''"]),
    (
        "timezone-path",
        put("site.timezone", "../../etc/passwd"),
        ["site.timezone", "'../../etc/passwd'"],
    ),
    (
        "rollover-24",
        put("site.night_rollover_hour", 24),
        ["site.night_rollover_hour", "24", "maximum 23"],
    ),
    (
        "rollover-negative",
        put("site.night_rollover_hour", -1),
        ["site.night_rollover_hour", "-1"],
    ),
    (
        "portal-without-scheme",
        put("site.portal_url", "club.example.org"),
        ["site.portal_url", "'club.example.org'", "http://"],
    ),
    ("portal-blank", put("site.portal_url", "  "), ["site.portal_url", "empty"]),
    (
        "token-ttl-zero",
        put("tokens.max_ttl_h", 0),
        ["tokens.max_ttl_h", "0", "minimum"],
    ),
    (
        "token-ttl-above-week",
        put("tokens.max_ttl_h", 169),
        ["tokens.max_ttl_h", "169", "maximum"],
    ),
    (
        "terminal-duplicate",
        append("terminals", {"id": "bar-1"}),
        ["terminals", "'bar-1'", "twice"],
    ),
    (
        "terminal-id-invalid",
        put("terminals[0].id", "Bar 1"),
        ["terminals[0].id", "'Bar 1'"],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [(change, expected) for _name, change, expected in BAD_VALUES],
    ids=[name for name, _change, _expected in BAD_VALUES],
)
def test_commerce_bad_value_named(change: Change, expected: list[str]) -> None:
    raw = example()
    change(raw)

    with pytest.raises(ConfigError) as caught:
        parse(raw)

    message = str(caught.value)
    for text in expected:
        assert text in message


def test_commerce_open_price_accepted() -> None:
    raw = example()
    del raw["items"][0]["price"]

    assert parse(raw).commerce.items[0] == Item("beer", "Beer", None)


def test_commerce_load_names_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.replace('currency = "EUR"', 'currency = "eur"'))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(path) in str(caught.value)
    assert "wallet.currency" in str(caught.value)


def night_config(timezone: str, rollover: int = 12) -> CommerceConfig:
    return CommerceConfig(timezone=timezone, night_rollover_hour=rollover)


NIGHTS: list[tuple[str, str, int, float, str]] = [
    # Europe/Berlin is UTC+1 in winter and UTC+2 in summer.
    (
        "two-am-previous-night",
        "Europe/Berlin",
        12,
        utc(2026, 12, 6, 1, 0),
        "2026-12-05",
    ),
    ("one-pm-same-day", "Europe/Berlin", 12, utc(2026, 12, 6, 12, 0), "2026-12-06"),
    ("before-rollover", "Europe/Berlin", 12, utc(2026, 12, 6, 10, 59), "2026-12-05"),
    ("at-rollover", "Europe/Berlin", 12, utc(2026, 12, 6, 11, 0), "2026-12-06"),
    (
        "local-date-not-utc",
        "Pacific/Auckland",
        12,
        utc(2026, 12, 5, 23, 30),
        "2026-12-06",
    ),
    # On 2026-03-29 Berlin moves from 02:00 CET to 03:00 CEST.
    (
        "spring-before-change",
        "Europe/Berlin",
        12,
        utc(2026, 3, 29, 0, 30),
        "2026-03-28",
    ),
    ("spring-after-change", "Europe/Berlin", 12, utc(2026, 3, 29, 1, 30), "2026-03-28"),
    ("spring-before-noon", "Europe/Berlin", 12, utc(2026, 3, 29, 9, 59), "2026-03-28"),
    ("spring-noon-cest", "Europe/Berlin", 12, utc(2026, 3, 29, 10, 0), "2026-03-29"),
    # On 2026-10-25 Berlin moves from 03:00 CEST back to 02:00 CET, so 02:30
    # happens twice.
    ("autumn-first-0230", "Europe/Berlin", 12, utc(2026, 10, 25, 0, 30), "2026-10-24"),
    ("autumn-second-0230", "Europe/Berlin", 12, utc(2026, 10, 25, 1, 30), "2026-10-24"),
    (
        "autumn-before-noon",
        "Europe/Berlin",
        12,
        utc(2026, 10, 25, 10, 59),
        "2026-10-24",
    ),
    ("autumn-noon-cet", "Europe/Berlin", 12, utc(2026, 10, 25, 11, 0), "2026-10-25"),
    ("rollover-midnight", "UTC", 0, utc(2026, 12, 6, 0, 30), "2026-12-06"),
    ("rollover-six", "UTC", 6, utc(2026, 12, 6, 5, 59), "2026-12-05"),
]


@pytest.mark.parametrize(
    ("timezone", "rollover", "t", "night"),
    [case[1:] for case in NIGHTS],
    ids=[case[0] for case in NIGHTS],
)
def test_commerce_night_of(timezone: str, rollover: int, t: float, night: str) -> None:
    assert night_config(timezone, rollover).night_of(t) == night


def test_commerce_night_of_parsed_zone() -> None:
    commerce = parse(example()).commerce

    assert commerce.night_of(utc(2026, 12, 6, 1, 0)) == "2026-12-05"
    assert commerce.night_of(utc(2026, 12, 6, 12, 0)) == "2026-12-06"


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (utc(2026, 12, 5, 21, 59), None),
        (utc(2026, 12, 5, 22, 0), "set-maya"),
        (utc(2026, 12, 5, 23, 59), "set-maya"),
        (utc(2026, 12, 6, 0, 0), "set-open"),
        (utc(2026, 12, 6, 1, 59), "set-open"),
        (utc(2026, 12, 6, 2, 0), None),
    ],
    ids=["before", "first-start", "first-end", "second-start", "second-end", "after"],
)
def test_commerce_set_at(t: float, expected: str | None) -> None:
    slot = parse(example()).commerce.set_at(t)

    assert (None if slot is None else slot.id) == expected


def test_commerce_desk_terminal_rejected() -> None:
    raw = example()
    raw["terminals"] = [{"id": "desk"}]

    with pytest.raises(ConfigError) as error:
        parse(raw)

    assert "terminals[0].id = 'desk'" in str(error.value)
    assert "opt-in desk" in str(error.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("wallet.currency", "EUR\n"),
        ("terminals.0.id", "bar-1\n"),
        ("members.0.band", "ib-100-7\n"),
    ],
)
def test_commerce_trailing_newline_rejected(key: str, value: str) -> None:
    raw = example()
    table, *rest = key.split(".")
    if rest[0].isdigit():
        raw[table][int(rest[0])][rest[1]] = value
    else:
        raw[table][rest[0]] = value

    with pytest.raises(ConfigError) as error:
        parse(raw)

    assert repr(value)[:8] in str(error.value)


def test_box_clock_trusted_option() -> None:
    raw = example()
    raw["box"]["clock_trusted"] = True

    config = parse(raw)

    assert config.clock_trusted is True
    assert config.system_clock().trusted is True
    assert parse(example()).system_clock().trusted is False
