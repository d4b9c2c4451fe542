"""The console's admin actions: tokens, drops, promo codes, kits and opt-ins.

Each method is a request handler (see :mod:`appliance.requests`). Invalid
fields raise PayloadError naming the field; drops and promo codes are
checked with the site file's ``[[drops]]`` and ``[[promo_codes]]`` rules.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import TYPE_CHECKING, Any

from appliance.commerce.config import drop_from_request, promo_from_request
from appliance.console._overview import drop_record
from appliance.errors import ConfigError, PayloadError
from appliance.remote.telemetry import night_start
from appliance.requests import Refusal, Request
from appliance.store import Transaction
from appliance.tokens import TokenError
from provisioning.site_access import CONSOLE, DESK

if TYPE_CHECKING:
    from appliance.commerce.config import PromoCode
    from appliance.runtime import Box

MAX_RESTOCK = 10_000
RECENT_OPTINS = 20
_TOKEN_ID = re.compile(r"^[0-9a-f]{32}\Z")
_MAX_REASON = 200
_DROP_FIELDS = (
    "id",
    "item",
    "price",
    "quota",
    "starts_at",
    "ends_at",
    "per_guest_limit",
    "creator",
)
_PROMO_FIELDS = (
    "code",
    "percent",
    "amount",
    "uses",
    "expires_at",
    "creator",
    "applies_to",
)


class AdminActions:
    """The admin handlers of one box."""

    def __init__(self, box: Box) -> None:
        self._box = box

    def tokens(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        rows = transaction.execute(
            "SELECT t.id, t.subject, t.scopes, t.issued_at, t.expires_at,"
            " r.id IS NOT NULL FROM edge_tokens t"
            " LEFT JOIN revoked_tokens r ON r.id = t.id ORDER BY t.issued_at, t.id"
        ).fetchall()
        return {
            "tokens": [
                {
                    "token_id": token_id,
                    "subject": subject,
                    "scopes": scopes.split(),
                    "issued_at": issued_at,
                    "expires_at": expires_at,
                    "revoked": bool(revoked),
                }
                for token_id, subject, scopes, issued_at, expires_at, revoked in rows
            ]
        }

    def token_issue(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        terminals = list(
            dict.fromkeys([DESK, CONSOLE, *self._box.config.commerce.terminals])
        )
        subject = data.get("subject")
        if not isinstance(subject, str) or subject not in terminals:
            raise PayloadError(
                f"field 'subject' = {subject!r:.40} is not a terminal of this site "
                f"({', '.join(terminals)}); add it to [[terminals]] in the site "
                "file and restart the box"
            )
        scopes = data.get("scopes")
        if not isinstance(scopes, list) or not all(
            isinstance(scope, str) for scope in scopes
        ):
            raise PayloadError(
                f"field 'scopes' must be a list of scope names, not {scopes!r:.60}"
            )
        ttl_s = data.get("ttl_s")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
            raise PayloadError(
                f"field 'ttl_s' must be the lifetime in seconds, not {ttl_s!r:.20}"
            )
        try:
            issued = self._box.tokens.issue_in(transaction, subject, scopes, ttl_s)
        except TokenError as err:
            raise PayloadError(f"{err.message} (fields 'scopes', 'ttl_s')") from err
        claims = issued.claims
        return {
            "token": issued.token,
            "token_id": claims.token_id,
            "subject": claims.subject,
            "scopes": sorted(claims.scopes),
            "expires_at": claims.expires_at,
        }

    def token_revoke(
        self, transaction: Transaction, request: Request
    ) -> dict[str, Any]:
        data = request.data
        token_id = data.get("token_id")
        if not isinstance(token_id, str) or not _TOKEN_ID.match(token_id):
            raise PayloadError(
                "field 'token_id' must be the 32 hex digits of a token id, "
                f"not {token_id!r:.40}"
            )
        reason = data.get("reason", "revoked from the console")
        if not isinstance(reason, str) or not 0 < len(reason) <= _MAX_REASON:
            raise PayloadError(
                f"field 'reason' must be text of 1 to {_MAX_REASON} characters"
            )
        known = transaction.execute(
            "SELECT 1 FROM edge_tokens WHERE id = ?", (token_id,)
        ).fetchone()
        if known is None:
            raise Refusal(
                "unknown-token",
                f"token {token_id} was not issued by this box",
                token_id=token_id,
            )
        revoked = self._box.tokens.revoke_in(transaction, token_id, reason)
        return {"token_id": token_id, "revoked": revoked}

    def drop_create(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        source = self._fields(request.data, _DROP_FIELDS, ("starts_at", "ends_at"))
        try:
            drop = drop_from_request(
                source, self._box.config.commerce, self._box.config.box_id
            )
        except ConfigError as err:
            raise PayloadError(str(err)) from err
        self._box.drops.create(transaction, drop, by=request.requester)
        return drop_record(self._box, drop.id)

    def promos(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        used = dict(
            transaction.execute("SELECT code, uses FROM promo_codes").fetchall()
        )
        return {
            "promos": [
                _promo_record(promo, used.get(promo.code, 0))
                for promo in self._box.pricing.all_promos(transaction)
            ]
        }

    def promo_create(
        self, transaction: Transaction, request: Request
    ) -> dict[str, Any]:
        source = self._fields(request.data, _PROMO_FIELDS, ("expires_at",))
        try:
            promo = promo_from_request(source, self._box.config.commerce)
        except ConfigError as err:
            raise PayloadError(str(err)) from err
        self._box.pricing.create_promo(
            transaction, promo, by=request.requester, now=self._box.clock.now()
        )
        return _promo_record(promo, 0)

    def kit_restock(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        station = data.get("station")
        stations = [
            row[0]
            for row in transaction.execute(
                "SELECT station FROM kit_stock ORDER BY station"
            ).fetchall()
        ]
        if not isinstance(station, str) or station not in stations:
            raise PayloadError(
                f"field 'station' = {station!r:.40} is not a kit station of this "
                f"site ({', '.join(stations) or 'none'})"
            )
        add = data.get("add")
        if isinstance(add, bool) or not isinstance(add, int) or not 1 <= add <= 10_000:
            raise PayloadError(
                f"field 'add' must be a whole number of kits from 1 to "
                f"{MAX_RESTOCK}, not {add!r:.20}"
            )
        initial, left = transaction.execute(
            "UPDATE kit_stock SET initial = initial + ?, remaining = remaining + ?"
            " WHERE station = ? RETURNING initial, remaining",
            (add, add, station),
        ).fetchone()
        transaction.emit(
            "kit_restocked",
            {
                "station": station,
                "added": add,
                "left": left,
                "initial": initial,
                "by": request.requester,
            },
        )
        return {"station": station, "left": left, "initial": initial}

    def optins(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        now = self._box.clock.now()
        start = night_start(self._box.config.commerce, now)
        by_kind = {"email": 0, "wallet": 0}
        by_kind.update(
            transaction.execute(
                "SELECT contact_kind, COUNT(*) FROM optins WHERE consented_at >= ?"
                " GROUP BY contact_kind",
                (start,),
            ).fetchall()
        )
        (coupons,) = transaction.execute(
            "SELECT COUNT(*) FROM coupons WHERE issued_at >= ?", (start,)
        ).fetchone()
        recent = transaction.execute(
            "SELECT band, contact_kind, consented_at FROM optins"
            " WHERE consented_at >= ? ORDER BY consented_at DESC, band LIMIT ?",
            (start, RECENT_OPTINS),
        ).fetchall()
        return {
            "total": sum(by_kind.values()),
            "by_kind": by_kind,
            "coupons_issued": coupons,
            "recent": [
                {"band": band, "contact_kind": kind, "at": at}
                for band, kind, at in recent
            ],
        }

    def _fields(
        self, data: dict[str, Any], allowed: tuple[str, ...], times: tuple[str, ...]
    ) -> dict[str, Any]:
        """Return the request's fields as a site file table, times as datetimes."""
        unknown = sorted(set(data) - set(allowed) - {"idempotency_key"})
        if unknown:
            raise PayloadError(
                f"unknown field {unknown[0]!r:.40}; allowed: {', '.join(allowed)}"
            )
        source = {key: data[key] for key in allowed if data.get(key) is not None}
        for key in times:
            if key in source:
                source[key] = _moment(
                    source[key], key, self._box.config.commerce.timezone
                )
        return source


def _moment(value: Any, field: str, timezone: str) -> dt.datetime:
    """Return a time field (Unix seconds or ISO 8601) as a datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError) as err:
            raise PayloadError(
                f"field {field!r} = {value!r:.30} is not a Unix time"
            ) from err
    if isinstance(value, str) and len(value) <= 40:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError as err:
            raise PayloadError(
                f"field {field!r} = {value!r} is not a time; give Unix seconds or "
                "ISO 8601 like 2026-05-28T23:00:00+02:00"
            ) from err
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
        return moment
    raise PayloadError(
        f"field {field!r} must be Unix seconds or an ISO 8601 time, not {value!r:.30}"
    )


def _promo_record(promo: PromoCode, used: int) -> dict[str, Any]:
    return {
        "code": promo.code,
        "kind": "percent" if promo.percent is not None else "amount",
        "value": promo.percent if promo.percent is not None else promo.amount,
        "uses": promo.max_uses,
        "used": used,
        "expires_at": promo.expires_at,
        "creator": promo.creator,
        "applies_to": promo.applies_to,
    }
