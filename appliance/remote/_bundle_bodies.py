"""Validation of the bodies of signed bundles, before anything is written.

Each ``parse_*`` function takes a verified bundle's body and returns its
typed content, or raises :class:`InvalidBundle` naming the item (list index
and field) and the fix. The formats are described in ``docs/bundles.md``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import orjson

from appliance._toml_values import ID_PATTERN, is_whole_number
from appliance.commerce.config import MAX_AMOUNT, CommerceConfig
from appliance.errors import NightboxError

# The band id rule of [[members]] in the site configuration.
_BAND = re.compile(r"[a-z0-9][a-z0-9-]{0,47}\Z")
# Ids made elsewhere (web shop top-ups, token ids): 1-64 letters, digits or ._:-
_EXTERNAL_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT = 200
# An asset or a cache budget above 1 TiB is a typing error on a pocket box.
MAX_ASSET_BYTES = 1 << 40
# A cache budget under 1 MiB cannot hold one textured model.
MIN_BUDGET_BYTES = 1 << 20
# The keys of the site configuration whose values are TOML date-times.
_DATE_TIME_KEYS = {
    "sets": ("starts_at", "ends_at"),
    "drops": ("starts_at", "ends_at"),
    "promo_codes": ("expires_at",),
}
ASSET_TYPES = (
    "model/gltf-binary",
    "model/gltf+json",
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/ktx2",
    "audio/mpeg",
    "video/mp4",
)


class InvalidBundle(NightboxError, ValueError):
    """A bundle body failed validation; the message names the item and the fix."""


@dataclass(frozen=True, slots=True)
class Member:
    """One band of a synced member list."""

    band: str
    tier: str


@dataclass(frozen=True, slots=True)
class OnlineTopup:
    """A top-up paid on the web, credited to a wallet once per ``id``."""

    id: str
    band: str
    amount: int


@dataclass(frozen=True, slots=True)
class Revocation:
    """A token id to reject from now on, and the reason recorded with it."""

    token_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AssetManifest:
    """The assets the box's asset cache serves, as canonical JSON and totals."""

    canonical: str
    count: int
    total_bytes: int


def parse_members(body: dict[str, Any], commerce: CommerceConfig) -> list[Member]:
    """Return the member list, whose tiers must all be tiers of ``commerce``."""
    entries = _entries(body, "members", {"members"})
    tiers = {tier.id for tier in commerce.tiers}
    members: list[Member] = []
    first_index = _FirstIndex("members", "list each band once")
    for index, entry in enumerate(entries):
        where = f"members[{index}]"
        item = _item(entry, where, {"band", "tier"})
        band = _band(item, where)
        tier = _string(item, where, "tier")
        if tier not in tiers:
            known = ", ".join(sorted(tiers)) or "none are configured"
            raise InvalidBundle(
                f"{where}.tier = {tier!r:.40} is not a tier of this site ({known}); "
                "use one of them or add the tier to [[tiers]] first"
            )
        first_index.record(band, index, f"{where}.band = {band!r}")
        members.append(Member(band, tier))
    return members


def parse_topups(body: dict[str, Any], commerce: CommerceConfig) -> list[OnlineTopup]:
    """Return the online top-ups, in ``commerce``'s currency and per-top-up limit."""
    entries = _entries(body, "topups", {"topups"})
    wallet = commerce.wallet
    topups: list[OnlineTopup] = []
    first_index = _FirstIndex("topups", "give each top-up its own id")
    for index, entry in enumerate(entries):
        where = f"topups[{index}]"
        item = _item(entry, where, {"id", "band", "amount", "currency"})
        topup_id = _external_id(item, where, "id")
        band = _band(item, where)
        amount = _integer(item, where, "amount", 1, MAX_AMOUNT, "minor units")
        currency = item.get("currency")
        if currency != wallet.currency:
            raise InvalidBundle(
                f"{where}.currency = {currency!r:.20} is not this site's wallet "
                f"currency; send amounts in {wallet.currency} minor units"
            )
        if amount > wallet.max_topup:
            raise InvalidBundle(
                f"{where}.amount = {amount} is above wallet.max_topup = "
                f"{wallet.max_topup} per top-up; refund it online or raise the "
                "limit in [wallet]"
            )
        first_index.record(topup_id, index, f"{where}.id = {topup_id!r}")
        topups.append(OnlineTopup(topup_id, band, amount))
    return topups


def parse_revocations(body: dict[str, Any]) -> list[Revocation]:
    """Return the token ids to revoke with their reasons."""
    entries = _entries(body, "tokens", {"tokens"})
    revocations: list[Revocation] = []
    first_index = _FirstIndex("tokens", "list each token once")
    for index, entry in enumerate(entries):
        where = f"tokens[{index}]"
        item = _item(entry, where, {"id", "reason"})
        token_id = _external_id(item, where, "id")
        reason = _text(item, where, "reason")
        first_index.record(token_id, index, f"{where}.id = {token_id!r}")
        revocations.append(Revocation(token_id, reason))
    return revocations


def parse_assets(body: dict[str, Any]) -> AssetManifest:
    """Return the asset manifest; hashes must be unique and sizes positive."""
    entries = _entries(body, "assets", {"assets", "budget_bytes"})
    if "budget_bytes" in body:
        _budget_bytes(body["budget_bytes"])
    first_index = _FirstIndex("assets", "list each file once")
    total = 0
    for index, entry in enumerate(entries):
        where = f"assets[{index}]"
        item = _item(entry, where, {"sha256", "size", "item", "name", "type"})
        digest = _string(item, where, "sha256")
        if not _SHA256.match(digest):
            raise InvalidBundle(
                f"{where}.sha256 = {digest!r:.80} is not a SHA-256 digest; give 64 "
                "lowercase hex digits"
            )
        total += _integer(item, where, "size", 1, MAX_ASSET_BYTES, "bytes")
        item_id = _string(item, where, "item")
        if not ID_PATTERN.match(item_id):
            raise InvalidBundle(
                f"{where}.item = {item_id!r:.40} is not an item id; use 1-32 "
                "lowercase letters, digits and '-', as in [[items]]"
            )
        _text(item, where, "name")
        media_type = item.get("type")
        if media_type not in ASSET_TYPES:
            raise InvalidBundle(
                f"{where}.type = {media_type!r:.40} is not a served media type; use "
                f"one of {', '.join(ASSET_TYPES)}"
            )
        first_index.record(digest, index, f"{where}.sha256")
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
    return AssetManifest(canonical, len(entries), total)


def _budget_bytes(value: Any) -> int:
    """Check a manifest's budget against the range of ``[assets] budget_bytes``."""
    if not is_whole_number(value, MIN_BUDGET_BYTES, MAX_ASSET_BYTES):
        raise InvalidBundle(
            f"body.budget_bytes = {value!r:.40} is invalid; give a whole number of "
            f"bytes from {MIN_BUDGET_BYTES} (1 MiB) to {MAX_ASSET_BYTES} (1 TiB), "
            "the range of [assets] budget_bytes"
        )
    return value


def parse_site_document(body: dict[str, Any]) -> dict[str, Any]:
    """Return the site configuration document that the body carries.

    JSON has no date-time type, so the date-times of ``[[sets]]``,
    ``[[drops]]`` and ``[[promo_codes]]`` arrive as ISO 8601 strings and
    are returned as datetimes, as the TOML file stores them.
    """
    _reject_unknown(body, {"config"})
    document = body.get("config")
    if not isinstance(document, dict):
        raise InvalidBundle(
            f"field 'config' must be the whole site configuration as a JSON "
            f"object, not {document!r:.40}"
        )
    converted = dict(document)
    for table, keys in _DATE_TIME_KEYS.items():
        entries = converted.get(table)
        if isinstance(entries, list):
            converted[table] = [
                _with_date_times(entry, f"config.{table}[{index}]", keys)
                for index, entry in enumerate(entries)
            ]
    return converted


def _with_date_times(entry: Any, where: str, keys: tuple[str, ...]) -> Any:
    if not isinstance(entry, dict):
        return entry
    converted = dict(entry)
    for key in keys:
        value = converted.get(key)
        if not isinstance(value, str):
            continue
        try:
            converted[key] = dt.datetime.fromisoformat(value)
        except ValueError as err:
            raise InvalidBundle(
                f"{where}.{key} = {value!r:.40} is not an ISO 8601 date-time; "
                "give one like '2026-12-05T23:00:00+01:00'"
            ) from err
    return converted


class _FirstIndex:
    """The index of each key's first entry in one list of a bundle body."""

    def __init__(self, list_name: str, fix: str) -> None:
        self._list_name = list_name
        self._fix = fix
        self._indexes: dict[str, int] = {}

    def record(self, key: str, index: int, subject: str) -> None:
        """Record ``key`` at ``index``, or raise InvalidBundle if an entry had it."""
        first = self._indexes.setdefault(key, index)
        if first != index:
            raise InvalidBundle(
                f"{subject} repeats {self._list_name}[{first}]; {self._fix}"
            )


def _entries(body: dict[str, Any], key: str, allowed: set[str]) -> list[Any]:
    _reject_unknown(body, allowed)
    value = body.get(key)
    if not isinstance(value, list):
        raise InvalidBundle(
            f"field {key!r} must be a list of objects, not {value!r:.40}; send "
            f'{{"{key}": []}} for an empty list'
        )
    return value


def _reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidBundle(
            f"unknown field {unknown[0]!r:.40} in the body; allowed: "
            f"{', '.join(sorted(allowed))}"
        )


def _item(entry: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise InvalidBundle(
            f"{where} must be an object with {', '.join(sorted(allowed))}, "
            f"not {entry!r:.40}"
        )
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise InvalidBundle(
            f"{where} has unknown field {unknown[0]!r:.40}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    return entry


def _string(item: dict[str, Any], where: str, field: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise InvalidBundle(
            f"{where}.{field} is missing or not a string: {value!r:.40}"
        )
    return value


def _band(item: dict[str, Any], where: str) -> str:
    band = _string(item, where, "band")
    if not _BAND.match(band):
        raise InvalidBundle(
            f"{where}.band = {band!r:.60} is not a band id; use 1-48 lowercase "
            "letters, digits and '-', like 'ib-100-7'"
        )
    return band


def _external_id(item: dict[str, Any], where: str, field: str) -> str:
    value = _string(item, where, field)
    if not _EXTERNAL_ID.match(value):
        raise InvalidBundle(
            f"{where}.{field} = {value!r:.70} is invalid; use 1-64 letters, digits "
            "or ._:-"
        )
    return value


def _text(item: dict[str, Any], where: str, field: str) -> str:
    value = _string(item, where, field)
    if not value.strip() or len(value) > MAX_TEXT or _CONTROL.search(value):
        raise InvalidBundle(
            f"{where}.{field} = {value!r:.60} is invalid; give 1-{MAX_TEXT} "
            "characters without control characters"
        )
    return value


def _integer(
    item: dict[str, Any],
    where: str,
    field: str,
    minimum: int,
    maximum: int,
    unit: str,
) -> int:
    value = item.get(field)
    if not is_whole_number(value, minimum, maximum):
        raise InvalidBundle(
            f"{where}.{field} = {value!r:.40} is invalid; give a whole number from "
            f"{minimum} to {maximum} {unit}"
        )
    return value
