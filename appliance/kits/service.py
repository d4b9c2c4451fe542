"""Kit stations and the opt-in desk, served over bus requests.

``api/optin/register`` records a guest's contact with their consent.
``api/kits/issue`` hands a band at most one recovery kit from a station's
stock and, for guests who opted in, issues a follow-up coupon bound to their
contact. A guest who opts in after taking the kit the same night gets the
coupon with the opt-in, by the same rules. Both are idempotent (see
:mod:`appliance.requests`).

A band that opts in again replaces its contact: the opt-in and the band's
unredeemed coupon name the new contact, and the fingerprints of the band's
earlier opt-in requests, which were taken over the old contact, are cleared.

A station whose site allows ``kits.offline_rule = "issue-once"`` hands out
kits while the box is unreachable and sends those requests later with
``offline_at``. They are checked like any other; when one is refused, the
kit is already gone, so a ``kit_offline_conflict`` event alerts staff.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from appliance.clock import Clock
from appliance.config import SiteConfig
from appliance.errors import PayloadError
from appliance.kits import _validation
from appliance.kits._coupons import coupon_code
from appliance.requests import Refusal, Request, RequestServer
from appliance.store import Store, Transaction
from appliance.wristbands import BandMatch, SiteBands

if TYPE_CHECKING:
    # A type only: importing the offers at run time would be circular,
    # because they serve requests through appliance.requests.
    from appliance.commerce.offers import PartnerOffers

_LOGGER = logging.getLogger(__name__)

# Refusals of a kit that a station already handed out offline.
_OFFLINE_CONFLICTS = frozenset({"already-issued", "out-of-stock", "not-checked-out"})


def _emit_conflict(transaction: Transaction, conflict: dict[str, Any]) -> None:
    transaction.emit("kit_offline_conflict", conflict)


def _forget_replaced_contact(transaction: Transaction, band: str) -> int:
    """Clear the fingerprints of ``band``'s earlier opt-in requests.

    A fingerprint is a SHA-256 over a request that named the contact the
    guest has just replaced, so an address could be confirmed against it.
    A retry of such a request still gets its stored reply. Returns the
    number of requests changed.
    """
    return transaction.execute(
        "UPDATE requests SET fingerprint = NULL WHERE action = 'optin/register'"
        " AND json_extract(reply, '$.data.band') = ? AND fingerprint IS NOT NULL",
        (band,),
    ).rowcount


class KitService:
    """Opt-ins, kit issues with stock per station, and coupons."""

    def __init__(
        self,
        requests: RequestServer,
        store: Store,
        config: SiteConfig,
        clock: Clock,
        bands: SiteBands,
        partner_offers: PartnerOffers | None = None,
    ) -> None:
        self._requests = requests
        self._partner_offers = partner_offers
        self._bands = bands
        self._store = store
        self._config = config
        self._clock = clock

    async def start(self) -> None:
        """Seed the stock of new stations and start serving requests."""
        with self._store.transaction() as transaction:
            for reader in self._config.readers:
                if reader.role == "kit":
                    transaction.execute(
                        "INSERT OR IGNORE INTO kit_stock (station, initial, remaining)"
                        " VALUES (?, ?, ?)",
                        (reader.id, reader.kit_stock, reader.kit_stock),
                    )
        self._requests.serve(
            "optin", "register", self._register_optin, scope="optin:register"
        )
        self._requests.serve(
            "kits", "issue", self._issue_kit, scope="kits:issue", readers=True
        )

    def stock(self) -> dict[str, dict[str, int]]:
        """Return initial and remaining kits per station."""
        rows = self._store.query(
            "SELECT station, initial, remaining FROM kit_stock ORDER BY station"
        )
        return {
            station: {"initial": initial, "remaining": remaining}
            for station, initial, remaining in rows
        }

    def _register_optin(
        self, transaction: Transaction, request: Request
    ) -> dict[str, Any]:
        data = request.data
        band = _validation.band_id(data)
        kind, contact = _validation.contact(data)
        consent = _validation.consent_text(data)
        now = self._clock.now()
        earlier = transaction.execute(
            "SELECT contact_kind, contact FROM optins WHERE band = ?", (band,)
        ).fetchone()
        transaction.execute(
            "INSERT INTO optins"
            " (band, contact_kind, contact, consent_text, consented_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (band) DO UPDATE SET"
            " contact_kind = excluded.contact_kind, contact = excluded.contact,"
            " consent_text = excluded.consent_text,"
            " consented_at = excluded.consented_at",
            (band, kind, contact, consent, now),
        )
        # The event records that a band opted in, never who the guest is.
        transaction.emit("optin_recorded", {"band": band, "contact_kind": kind})
        if earlier is not None and tuple(earlier) != (kind, contact):
            _forget_replaced_contact(transaction, band)
        # The follow-up offer goes to the contact the guest consented to
        # last. A redeemed coupon keeps the contact it was redeemed under.
        transaction.execute(
            "UPDATE coupons SET contact_kind = ?, contact = ?"
            " WHERE band = ? AND redeemed_at IS NULL"
            " AND (contact_kind != ? OR contact != ?)",
            (kind, contact, band, kind, contact),
        )
        coupon = None
        if self._owes_coupon(transaction, band, now):
            coupon = self._issue_coupon(transaction, band, now)
        return {"band": band, "contact_kind": kind, "recorded": True, "coupon": coupon}

    def _owes_coupon(self, transaction: Transaction, band: str, now: float) -> bool:
        """Return whether ``band`` took its kit tonight before opting in.

        Its kit came without a coupon, so the opt-in issues it, unless the
        band has a coupon already. A kit of an earlier night earns none: its
        night's offer is over.
        """
        row = transaction.execute(
            "SELECT issued_at, EXISTS (SELECT 1 FROM coupons WHERE band = ?)"
            " FROM kits WHERE band = ?",
            (band, band),
        ).fetchone()
        if row is None or row[1]:
            return False
        night_of = self._config.commerce.night_of
        return night_of(float(row[0])) == night_of(now)

    def _band_of(self, data: dict[str, Any]) -> str:
        # A kit reader sends the advert it heard, because only the box can
        # resolve rotating Eddystone-EIDs; a desk or tablet sends the band id.
        if "adv" in data and "band" in data:
            raise PayloadError("give exactly one of 'band' or 'adv', not both")
        if "adv" not in data:
            return _validation.band_id(data)
        advert = data["adv"]
        if not isinstance(advert, str) or len(advert) > 124:
            raise PayloadError(
                f"field 'adv' must be hex advertising data, not {advert!r:.40}"
            )
        try:
            raw = bytes.fromhex(advert)
        except ValueError as err:
            raise PayloadError(f"field 'adv' is not hex: {advert!r:.40}") from err
        match = self._bands.identify(raw, self._clock.now())
        if not isinstance(match, BandMatch):
            raise PayloadError(
                f"field 'adv' is not a band of this site: {match.reason}"
            )
        return match.band_id

    def _issue_kit(self, transaction: Transaction, request: Request) -> dict[str, Any]:
        data = request.data
        band = self._band_of(data)
        station = data.get("station")
        reader = self._config.reader(station) if isinstance(station, str) else None
        if reader is None or reader.role != "kit" or not isinstance(station, str):
            raise PayloadError(
                "field 'station' must name a configured kit station, "
                f"not {station!r:.40}"
            )
        if request.requester_kind == "reader" and request.requester != station:
            raise PayloadError(
                f"reader {request.requester} can hand out kits only from its own "
                f"stock, not from station {station!r}"
            )
        offline_at = _validation.offline_at(data)
        try:
            return self._issue(transaction, band, station, offline_at)
        except Refusal as refusal:
            if offline_at is not None and refusal.code in _OFFLINE_CONFLICTS:
                conflict = {
                    "band": band,
                    "station": station,
                    "reason": refusal.code,
                    "offline_at": round(offline_at, 3),
                }
                _LOGGER.warning(
                    "Kit station %s handed band %s a kit offline at %.3f, but the "
                    "box refuses it (%s)",
                    station,
                    band,
                    offline_at,
                    refusal.code,
                )
                refusal.also_commit(
                    lambda transaction: _emit_conflict(transaction, conflict)
                )
            raise

    def _issue(
        self,
        transaction: Transaction,
        band: str,
        station: str,
        offline_at: float | None,
    ) -> dict[str, Any]:
        earlier = transaction.execute(
            "SELECT station, issued_at FROM kits WHERE band = ?", (band,)
        ).fetchone()
        if earlier is not None:
            raise Refusal(
                "already-issued",
                f"band {band} already took a kit at {earlier[0]}",
                station=earlier[0],
                issued_at=earlier[1],
            )
        if (
            self._config.kits_require_checkout
            and not transaction.execute(
                "SELECT 1 FROM checkouts WHERE band = ? LIMIT 1", (band,)
            ).fetchone()
        ):
            raise Refusal(
                "not-checked-out", f"band {band} has not checked out at an exit yet"
            )
        remaining = self._take_one(transaction, station)
        now = self._clock.now()
        issued: dict[str, Any] = {
            "band": band,
            "station": station,
            "remaining": remaining,
        }
        if offline_at is not None:
            issued["offline_at"] = round(offline_at, 3)
        event = transaction.emit("kit_issued", issued)
        transaction.execute(
            "INSERT INTO kits (band, station, issued_at, event_id) VALUES (?, ?, ?, ?)",
            (band, station, now, event.id),
        )
        if remaining == self._config.kit_low_stock:
            transaction.emit(
                "kit_stock_low", {"station": station, "remaining": remaining}
            )
        coupon = self._issue_coupon(transaction, band, now)
        _LOGGER.info(
            "Issued a kit to band %s at %s (%d left)", band, station, remaining
        )
        return {
            "band": band,
            "station": station,
            "remaining": remaining,
            "coupon": coupon,
        }

    def _take_one(self, transaction: Transaction, station: str) -> int:
        row = transaction.execute(
            "UPDATE kit_stock SET remaining = remaining - 1"
            " WHERE station = ? AND remaining > 0"
            " RETURNING remaining",
            (station,),
        ).fetchone()
        if row is None:
            raise Refusal("out-of-stock", f"kit station {station} has no kits left")
        return int(row[0])

    def _issue_coupon(
        self, transaction: Transaction, band: str, now: float
    ) -> dict[str, Any] | None:
        optin = transaction.execute(
            "SELECT contact_kind, contact FROM optins WHERE band = ?", (band,)
        ).fetchone()
        if optin is None:
            return None
        expires_at = now + self._config.coupon_ttl_s
        partner = None
        if self._partner_offers is not None:
            partner = self._partner_offers.hand_out(transaction, band, now)
        offer = self._config.coupon_offer if partner is None else partner["offer"]
        for _attempt in range(5):
            # A partner's code is unique by configuration, so only a drawn
            # code can collide.
            code = coupon_code() if partner is None else partner["code"]
            try:
                transaction.execute(
                    "INSERT INTO coupons (code, band, contact_kind, contact,"
                    " offer, issued_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        code,
                        band,
                        optin[0],
                        optin[1],
                        offer,
                        now,
                        expires_at,
                    ),
                )
                break
            except sqlite3.IntegrityError:
                continue  # a code collision, 1 in 2^35 per issue: draw again
        else:
            raise RuntimeError("could not draw a unique coupon code in 5 attempts")
        transaction.emit(
            "coupon_issued",
            {
                "band": band,
                "code": code,
                "expires_at": round(expires_at, 3),
                "contact_kind": optin[0],
            },
        )
        coupon: dict[str, Any] = {
            "code": code,
            "offer": offer,
            "expires_at": round(expires_at, 3),
        }
        if partner is not None:
            coupon["partner"] = partner["partner"]
        return coupon
