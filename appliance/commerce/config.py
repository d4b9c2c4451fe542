"""The economy's configuration: currency, limits, catalogue, drops, creators.

Amounts are integers in the currency's minor unit (cents for EUR), so
``price = 450`` is 4.50 EUR. Times are TOML date-times; one without an
offset is read in ``site.timezone``.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from appliance._toml_values import (
    ID_PATTERN,
    boolean,
    choice,
    identifier,
    integer,
    items,
    nonblank,
    reject_duplicates,
    reject_unknown,
    string,
    table,
)
from appliance.errors import ConfigError

# ISO 4217 alphabetic codes are three capital letters.
_CURRENCY = re.compile(r"^[A-Z]{3}\Z")
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9-]{2,23}\Z")
_BAND = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
# One amount is at most 10 million major units; SQLite integers and JSON
# numbers both hold far more, so a larger figure is a typing error.
MAX_AMOUNT = 1_000_000_000
MAX_QUANTITY = 1_000_000
_MAX_PARTNER_CODES = 100_000
# Terminals that every site has, which [[terminals]] must not list again.
_BUILT_IN_TERMINALS = {"desk": "the opt-in desk", "console": "the terminal console"}


@dataclass(frozen=True, slots=True)
class WalletConfig:
    """Currency and limits of the wristband wallets, in minor units."""

    currency: str = "EUR"
    max_topup: int = 50_000
    max_charge: int = 20_000
    night_topup_limit: int = 100_000
    night_spend_limit: int = 100_000


@dataclass(frozen=True, slots=True)
class Item:
    """Something sold: a drink, merch, a recovery-kit bundle.

    ``price`` of None lets the terminal enter the amount (an open price).
    """

    id: str
    name: str
    price: int | None = None
    kit_bundle: bool = False


@dataclass(frozen=True, slots=True)
class Creator:
    """A creator whose code and link attribute sales."""

    id: str
    name: str
    code: str


@dataclass(frozen=True, slots=True)
class PromoCode:
    """A discount code: ``percent`` or ``amount`` off, with limited uses."""

    code: str
    percent: int | None
    amount: int | None
    max_uses: int
    expires_at: float | None = None
    creator: str | None = None
    applies_to: str = "all"


@dataclass(frozen=True, slots=True)
class Tier:
    """A membership tier."""

    id: str
    early_access: bool = False
    kit_bundle_discount_percent: int = 0


@dataclass(frozen=True, slots=True)
class PartnerOffer:
    """A partner's offer with its pool of single-use codes."""

    id: str
    partner: str
    title: str
    codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetSlot:
    """One set of the night's line-up, which sales during it are credited to."""

    id: str
    creator: str | None
    starts_at: float
    ends_at: float


@dataclass(frozen=True, slots=True)
class DropConfig:
    """A limited drop; ``quotas`` split ``quantity`` between the site's boxes."""

    id: str
    item: str
    price: int
    quantity: int
    starts_at: float
    ends_at: float
    per_guest_limit: int = 1
    early_access_s: float = 0.0
    reservation_s: float = 120.0
    creator: str | None = None
    quotas: dict[str, int] = field(default_factory=dict)

    def quota(self, box_id: str) -> int:
        """Return the units that ``box_id`` may sell."""
        if not self.quotas:
            return self.quantity
        return self.quotas.get(box_id, 0)


@dataclass(frozen=True, slots=True)
class CommerceConfig:
    """Everything the wallet, drops and creator commerce need."""

    timezone: str = "UTC"
    night_rollover_hour: int = 12
    wallet: WalletConfig = field(default_factory=WalletConfig)
    token_max_ttl_s: float = 24 * 3600.0
    portal_url: str = "http://nightbox.local"
    items: tuple[Item, ...] = ()
    creators: tuple[Creator, ...] = ()
    promo_codes: tuple[PromoCode, ...] = ()
    tiers: tuple[Tier, ...] = ()
    members: dict[str, str] = field(default_factory=dict)
    partner_offers: tuple[PartnerOffer, ...] = ()
    sets: tuple[SetSlot, ...] = ()
    drops: tuple[DropConfig, ...] = ()
    terminals: tuple[str, ...] = ()

    def item(self, item_id: str) -> Item | None:
        """Return the catalogue item ``item_id``, or None."""
        return next((item for item in self.items if item.id == item_id), None)

    def creator_by_code(self, code: str) -> Creator | None:
        """Return the creator whose code is ``code`` (any case), or None."""
        wanted = code.upper()
        return next((c for c in self.creators if c.code == wanted), None)

    def creator_link(self, creator: Creator) -> str:
        """Return the guest link that attributes a visit to ``creator``."""
        return f"{self.portal_url.rstrip('/')}/c/{creator.code}"

    def tier(self, tier_id: str) -> Tier | None:
        """Return the membership tier ``tier_id``, or None."""
        return next((tier for tier in self.tiers if tier.id == tier_id), None)

    def night_of(self, t: float) -> str:
        """Return the night (ISO date) that Unix time ``t`` belongs to.

        A night runs from ``night_rollover_hour`` local time to the same hour
        the next day, so 02:00 belongs to the night of the day before.
        """
        local = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(self.timezone))
        return (local - dt.timedelta(hours=self.night_rollover_hour)).date().isoformat()

    def set_at(self, t: float) -> SetSlot | None:
        """Return the set playing at Unix time ``t``, or None."""
        return next((s for s in self.sets if s.starts_at <= t < s.ends_at), None)


COMMERCE_TABLES = {
    "wallet",
    "tokens",
    "items",
    "creators",
    "promo_codes",
    "tiers",
    "members",
    "partner_offers",
    "sets",
    "drops",
    "terminals",
}


def parse_commerce(
    raw: dict[str, Any], site: dict[str, Any], box_id: str
) -> CommerceConfig:
    """Validate the commerce tables of a parsed site configuration."""
    timezone = _timezone(site)
    rollover = integer(site, "site.night_rollover_hour", 12, minimum=0, maximum=23)
    portal = nonblank(site, "site.portal_url", "http://nightbox.local")
    if not portal.startswith(("http://", "https://")):
        raise ConfigError(
            f"site.portal_url = {portal!r:.80} must start with http:// or https://"
        )
    wallet = _wallet(table(raw, "wallet", required=False))
    tokens = table(raw, "tokens", required=False)
    reject_unknown(tokens, "tokens", {"max_ttl_h"})
    max_ttl_h = integer(tokens, "tokens.max_ttl_h", 24, minimum=1, maximum=168)
    catalogue = tuple(_item(entry, i) for i, entry in items(raw, "items"))
    reject_duplicates([item.id for item in catalogue], "items")
    creators = tuple(_creator(entry, i) for i, entry in items(raw, "creators"))
    reject_duplicates([c.id for c in creators], "creators")
    reject_duplicates([c.code for c in creators], "creators", noun="code")
    creator_ids = {c.id for c in creators}
    tiers = tuple(_tier(entry, i) for i, entry in items(raw, "tiers"))
    reject_duplicates([t.id for t in tiers], "tiers")
    context = _Context(timezone, creator_ids, {t.id for t in tiers}, wallet)
    promo_codes = tuple(
        _promo(entry, i, context) for i, entry in items(raw, "promo_codes")
    )
    reject_duplicates([p.code for p in promo_codes], "promo_codes", noun="code")
    creator_codes = {c.code: i for i, c in enumerate(creators)}
    for index, promo in enumerate(promo_codes):
        if promo.code in creator_codes:
            raise ConfigError(
                f"promo_codes[{index}].code = {promo.code!r} is also "
                f"creators[{creator_codes[promo.code]}].code; a code must be "
                "either a creator code or a promo code, so rename one"
            )
    members = _members(items(raw, "members"), context)
    offers = tuple(_offer(entry, i) for i, entry in items(raw, "partner_offers"))
    reject_duplicates([o.id for o in offers], "partner_offers")
    reject_duplicates(
        [code for o in offers for code in o.codes], "partner_offers", noun="code"
    )
    sets = tuple(_set(entry, i, context) for i, entry in items(raw, "sets"))
    reject_duplicates([s.id for s in sets], "sets")
    drops = tuple(
        _drop(entry, i, context, catalogue, box_id) for i, entry in items(raw, "drops")
    )
    reject_duplicates([d.id for d in drops], "drops")
    terminals = tuple(_terminal(entry, i) for i, entry in items(raw, "terminals"))
    reject_duplicates(list(terminals), "terminals")
    return CommerceConfig(
        timezone=timezone,
        night_rollover_hour=rollover,
        wallet=wallet,
        token_max_ttl_s=max_ttl_h * 3600.0,
        portal_url=portal,
        items=catalogue,
        creators=creators,
        promo_codes=promo_codes,
        tiers=tiers,
        members=members,
        partner_offers=offers,
        sets=sets,
        drops=drops,
        terminals=terminals,
    )


@dataclass(frozen=True, slots=True)
class _Context:
    timezone: str
    creators: set[str]
    tiers: set[str]
    wallet: WalletConfig


def _timezone(site: dict[str, Any]) -> str:
    name = string(site, "site.timezone", default="UTC")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
        raise ConfigError(
            f"site.timezone = {name!r:.60} is not a known IANA time zone; use a "
            "name like 'Europe/Berlin' or 'UTC'"
        ) from err
    return name


def amount(
    source: dict[str, Any], key: str, default: int | None, *, minimum: int = 1
) -> int:
    """Return an amount in minor units from ``source[key]``."""
    return integer(source, key, default, minimum=minimum, maximum=MAX_AMOUNT)


def _wallet(source: dict[str, Any]) -> WalletConfig:
    defaults = WalletConfig()
    reject_unknown(source, "wallet", set(WalletConfig.__slots__))
    currency = string(source, "wallet.currency", default=defaults.currency)
    if not _CURRENCY.match(currency):
        raise ConfigError(
            f"wallet.currency = {currency!r:.20} is invalid; use an ISO 4217 "
            "code of three capital letters, like 'EUR'"
        )
    return WalletConfig(
        currency=currency,
        max_topup=amount(source, "wallet.max_topup", defaults.max_topup),
        max_charge=amount(source, "wallet.max_charge", defaults.max_charge),
        night_topup_limit=amount(
            source, "wallet.night_topup_limit", defaults.night_topup_limit
        ),
        night_spend_limit=amount(
            source, "wallet.night_spend_limit", defaults.night_spend_limit
        ),
    )


def _entry(entry: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{key} must be a table with at least an id")
    reject_unknown(entry, key, allowed)
    return entry


def _item(entry: Any, index: int) -> Item:
    key = f"items[{index}]"
    source = _entry(entry, key, {"id", "name", "price", "kit_bundle"})
    price = source.get("price")
    return Item(
        id=identifier(source, f"{key}.id"),
        name=nonblank(source, f"{key}.name", str(source.get("id", ""))),
        price=None if price is None else amount(source, f"{key}.price", None),
        kit_bundle=boolean(source, f"{key}.kit_bundle", False),
    )


def _code(source: dict[str, Any], key: str) -> str:
    value = string(source, key)
    if not _CODE.match(value.upper()):
        raise ConfigError(
            f"{key} = {value!r:.40} is invalid; use 3-24 letters, digits and '-'"
        )
    return value.upper()


def _creator(entry: Any, index: int) -> Creator:
    key = f"creators[{index}]"
    source = _entry(entry, key, {"id", "name", "code"})
    return Creator(
        id=identifier(source, f"{key}.id"),
        name=nonblank(source, f"{key}.name", str(source.get("id", ""))),
        code=_code(source, f"{key}.code"),
    )


def _tier(entry: Any, index: int) -> Tier:
    key = f"tiers[{index}]"
    source = _entry(entry, key, {"id", "early_access", "kit_bundle_discount_percent"})
    return Tier(
        id=identifier(source, f"{key}.id"),
        early_access=boolean(source, f"{key}.early_access", False),
        kit_bundle_discount_percent=integer(
            source, f"{key}.kit_bundle_discount_percent", 0, minimum=0, maximum=100
        ),
    )


def _creator_ref(source: dict[str, Any], key: str, context: _Context) -> str | None:
    creator = source.get("creator")
    if creator is None:
        return None
    if creator not in context.creators:
        known = ", ".join(sorted(context.creators)) or "none are configured"
        raise ConfigError(
            f"{key}.creator = {creator!r:.40} is not a creator id ({known})"
        )
    return str(creator)


def _time(source: dict[str, Any], key: str, timezone: str) -> float:
    value = source.get(key.rsplit(".", 1)[-1])
    if not isinstance(value, dt.datetime):
        raise ConfigError(
            f"{key} must be a TOML date-time like 2026-12-05T23:00:00+01:00, "
            f"not {value!r:.40}"
        )
    if value.tzinfo is None:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return value.timestamp()


def _span(source: dict[str, Any], key: str, timezone: str) -> tuple[float, float]:
    """Return ``starts_at`` and ``ends_at`` of a set or drop as Unix times."""
    starts_at = _time(source, f"{key}.starts_at", timezone)
    ends_at = _time(source, f"{key}.ends_at", timezone)
    if ends_at <= starts_at:
        raise ConfigError(
            f"{key}.ends_at = {source['ends_at'].isoformat()} is not after "
            f"{key}.starts_at = {source['starts_at'].isoformat()}; set a later end"
        )
    return starts_at, ends_at


def _promo(
    entry: Any, index: int, context: _Context, *, key: str = "", uses: str = "max_uses"
) -> PromoCode:
    """Validate a promo code table; ``uses`` names its key for the use count."""
    key = key or f"promo_codes[{index}]"
    source = _entry(
        entry,
        key,
        {
            "code",
            "percent",
            "amount",
            uses,
            "expires_at",
            "creator",
            "applies_to",
        },
    )
    has_percent = "percent" in source
    if has_percent == ("amount" in source):
        raise ConfigError(f"{key} needs exactly one of 'percent' or 'amount'")
    return PromoCode(
        code=_code(source, f"{key}.code"),
        percent=integer(source, f"{key}.percent", None, minimum=1, maximum=100)
        if has_percent
        else None,
        amount=None if has_percent else amount(source, f"{key}.amount", None),
        max_uses=integer(source, f"{key}.{uses}", 1, minimum=1, maximum=MAX_QUANTITY),
        expires_at=_time(source, f"{key}.expires_at", context.timezone)
        if "expires_at" in source
        else None,
        creator=_creator_ref(source, key, context),
        applies_to=choice(
            source, f"{key}.applies_to", ("all", "charges", "drops"), "all"
        ),
    )


def _members(entries: list[tuple[int, Any]], context: _Context) -> dict[str, str]:
    members: dict[str, str] = {}
    for index, entry in entries:
        key = f"members[{index}]"
        source = _entry(entry, key, {"band", "tier"})
        band = string(source, f"{key}.band")
        if not _BAND.match(band):
            raise ConfigError(
                f"{key}.band = {band!r:.60} is not a band id like 'ib-100-7'"
            )
        tier = string(source, f"{key}.tier")
        if tier not in context.tiers:
            raise ConfigError(f"{key}.tier = {tier!r:.40} is not a configured tier id")
        if band in members:
            raise ConfigError(f"members lists band {band!r} twice")
        members[band] = tier
    return members


def _offer(entry: Any, index: int) -> PartnerOffer:
    key = f"partner_offers[{index}]"
    source = _entry(entry, key, {"id", "partner", "title", "codes"})
    codes = source.get("codes")
    if not isinstance(codes, list) or not 1 <= len(codes) <= _MAX_PARTNER_CODES:
        raise ConfigError(
            f"{key}.codes must be a list of 1 to {_MAX_PARTNER_CODES} codes of "
            f"3-24 letters, digits and '-', not {codes!r:.60}"
        )
    for position, code in enumerate(codes):
        if not isinstance(code, str) or not _CODE.match(code.upper()):
            raise ConfigError(
                f"{key}.codes[{position}] = {code!r:.40} is invalid; use 3-24 "
                "letters, digits and '-'"
            )
    return PartnerOffer(
        id=identifier(source, f"{key}.id"),
        partner=nonblank(source, f"{key}.partner", ""),
        title=nonblank(source, f"{key}.title", ""),
        codes=tuple(code.upper() for code in codes),
    )


def _set(entry: Any, index: int, context: _Context) -> SetSlot:
    key = f"sets[{index}]"
    source = _entry(entry, key, {"id", "creator", "starts_at", "ends_at"})
    starts_at, ends_at = _span(source, key, context.timezone)
    return SetSlot(
        id=identifier(source, f"{key}.id"),
        creator=_creator_ref(source, key, context),
        starts_at=starts_at,
        ends_at=ends_at,
    )


def _drop(
    entry: Any,
    index: int,
    context: _Context,
    catalogue: tuple[Item, ...],
    box_id: str,
    *,
    key: str = "",
    quantity: str = "quantity",
    allowed: frozenset[str] = frozenset(),
) -> DropConfig:
    """Validate a drop table; ``quantity`` names its key for the units.

    ``allowed`` narrows the keys accepted besides the required ones.
    """
    key = key or f"drops[{index}]"
    optional = {
        "per_guest_limit",
        "early_access_min",
        "reservation_s",
        "creator",
        "quotas",
    }
    source = _entry(
        entry,
        key,
        {"id", "item", "price", quantity, "starts_at", "ends_at"}
        | (optional & allowed if allowed else optional),
    )
    item = identifier(source, f"{key}.item")
    if not any(known.id == item for known in catalogue):
        raise ConfigError(
            f"{key}.item = {item!r} is not in [[items]]; add it to the catalogue"
        )
    units = integer(source, f"{key}.{quantity}", None, minimum=1, maximum=MAX_QUANTITY)
    starts_at, ends_at = _span(source, key, context.timezone)
    quotas = _quotas(source, key, units, box_id)
    return DropConfig(
        id=identifier(source, f"{key}.id"),
        item=item,
        price=amount(source, f"{key}.price", None, minimum=0),
        quantity=units,
        starts_at=starts_at,
        ends_at=ends_at,
        per_guest_limit=integer(
            source, f"{key}.per_guest_limit", 1, minimum=1, maximum=100
        ),
        early_access_s=60.0
        * integer(source, f"{key}.early_access_min", 0, minimum=0, maximum=1440),
        reservation_s=float(
            integer(source, f"{key}.reservation_s", 120, minimum=10, maximum=3600)
        ),
        creator=_creator_ref(source, key, context),
        quotas=quotas,
    )


def _quotas(
    source: dict[str, Any], key: str, quantity: int, box_id: str
) -> dict[str, int]:
    quotas = table(source, "quotas", required=False)
    result: dict[str, int] = {}
    for box in quotas:
        if not ID_PATTERN.match(box):
            raise ConfigError(
                f"{key}.quotas names {box!r:.40}, which is not a box id; use the "
                "box.id of each box that sells the drop"
            )
        result[box] = integer(
            quotas, f"{key}.quotas.{box}", None, minimum=0, maximum=MAX_QUANTITY
        )
    if sum(result.values()) > quantity:
        raise ConfigError(
            f"{key}.quotas add up to {sum(result.values())} units, more than "
            f"quantity = {quantity}; lower a quota so the boxes cannot oversell"
        )
    if result and box_id not in result:
        raise ConfigError(
            f"{key}.quotas gives no quota to this box ({box_id!r}); add "
            f"{box_id} = <units> (0 if this box does not sell the drop)"
        )
    return result


def _terminal(entry: Any, index: int) -> str:
    key = f"terminals[{index}]"
    source = _entry(entry, key, {"id"})
    terminal = identifier(source, f"{key}.id")
    if terminal in _BUILT_IN_TERMINALS:
        raise ConfigError(
            f"{key}.id = {terminal!r} is {_BUILT_IN_TERMINALS[terminal]}, which "
            "every site has; remove this entry or give the terminal another id"
        )
    return terminal


def drop_from_request(
    source: dict[str, Any], config: CommerceConfig, box_id: str
) -> DropConfig:
    """Validate a drop created while the box runs, with the ``[[drops]]`` rules.

    ``source`` has the keys of a ``[[drops]]`` table, with ``quota`` in place
    of ``quantity``, ``starts_at`` and ``ends_at`` as datetimes, and no
    ``quotas``, because the drop is this box's own. Raises ConfigError whose
    message names the field as ``data.<field>``.
    """
    return _drop(
        source,
        0,
        _context_of(config),
        config.items,
        box_id,
        key="data",
        quantity="quota",
        allowed=frozenset({"per_guest_limit", "creator"}),
    )


def promo_from_request(source: dict[str, Any], config: CommerceConfig) -> PromoCode:
    """Validate a promo code created while the box runs, with the site file's rules.

    ``source`` has the keys of a ``[[promo_codes]]`` table, with ``uses`` in
    place of ``max_uses`` and ``expires_at`` as a datetime. Raises
    ConfigError whose message names the field as ``data.<field>``.
    """
    promo = _promo(source, 0, _context_of(config), key="data", uses="uses")
    if config.creator_by_code(promo.code) is not None:
        raise ConfigError(
            f"data.code = {promo.code!r} is a creator code; choose another code"
        )
    return promo


def _context_of(config: CommerceConfig) -> _Context:
    return _Context(
        config.timezone,
        {creator.id for creator in config.creators},
        {tier.id for tier in config.tiers},
        config.wallet,
    )
