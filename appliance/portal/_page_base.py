"""The parts every page of the guest portal uses: visitor, form checks, lookups.

A :class:`Visitor` is the browser behind a request, with its session and
CSRF cookies. :class:`PageBase` renders pages with a fresh CSRF token and
form id, checks posted forms (token, band code, contact, form id), turns the
box's refusals into sentences for guests, and looks up drops and items.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.analytics.figures import night_window
from appliance.analytics.views import record_view
from appliance.commerce.config import DropConfig, Item
from appliance.errors import PayloadError
from appliance.kits import _validation
from appliance.portal._drop_offers import (
    DropView,
    Offer,
    choose_offer,
    drop_state,
    state_text,
)
from appliance.portal._format import money, night_time
from appliance.portal._forms import (
    FORM_TIMEOUT_S,
    CsrfError,
    FormError,
    read_form,
    required,
)
from appliance.portal._sessions import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    is_cookie_value,
    is_form_id,
    new_cookie_value,
    new_form_id,
)
from appliance.portal.band_codes import BandCodeError

if TYPE_CHECKING:
    from appliance.portal.service import Portal

_LOGGER = logging.getLogger(__name__)

CREATOR_COOKIE = "nb_creator"
# Drop and item ids follow the site file's id rule; anything else in the
# path is not one and gets 404 without a lookup.
_SUBJECT = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
CREATOR_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{2,23}\Z")
# Drop status is cached this long, so many phones polling stock cost the
# request worker one query per drop per second.
_STATUS_CACHE_S = 1.0
PRESESSION_MAX_AGE_S = 12 * 3600
# Box error codes that the box, not the guest, must fix: HTTP 503.
_BOX_FAULT_CODES = frozenset({"store-error", "internal-error", "deadline-exceeded"})
_FORM_FIELDS = ("csrf", "form_id", "band_code")


@dataclass(slots=True)
class Visitor:
    """The browser behind a request: its live session, if any, and CSRF cookie."""

    band: str | None
    session_cookie: str | None
    presession_cookie: str
    new_presession: bool

    @property
    def binding(self) -> str:
        """The cookie binding of the CSRF token of a form rendered now."""
        if self.session_cookie is not None:
            return f"session:{self.session_cookie}"
        return f"pre:{self.presession_cookie}"

    def bindings(self) -> list[str]:
        """Return the bindings a posted form may have been rendered for."""
        found = []
        if self.session_cookie is not None:
            found.append(f"session:{self.session_cookie}")
        if not self.new_presession:
            found.append(f"pre:{self.presession_cookie}")
        return found


class PageBase:
    """Sessions, form checks and lookups that the portal's pages share.

    ``portal`` provides the box, sessions, rendering and the terminal that
    calls the box.
    """

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._box = portal.box
        self._commerce = portal.box.config.commerce
        self._status_cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def _form(
        self, request: web.Request, fields: tuple[str, ...]
    ) -> dict[str, str]:
        return await read_form(
            request, (*_FORM_FIELDS, *fields), timeout_s=FORM_TIMEOUT_S
        )

    def _check_csrf(self, form: dict[str, str], visitor: Visitor) -> str:
        """Return the binding the form was rendered for.

        Raises CsrfError (403) for a missing, empty or wrong token.
        """
        token = form.get("csrf", "")
        binding = None
        if token:
            binding = self._portal.sessions.csrf_binding(token, visitor.bindings())
        if binding is None:
            raise CsrfError(
                "csrf-missing" if not token else "csrf-invalid",
                "this form has expired or was not sent from the portal's page; "
                "reload the page and send it again",
            )
        return binding

    def _band_of(
        self, form: dict[str, str], visitor: Visitor, *, code_required: bool = False
    ) -> str:
        """Return the band of the form's band code, else of the session."""
        code = form.get("band_code", "").strip()
        if not code:
            if visitor.band is not None and not code_required:
                return visitor.band
            required(form, "band_code", "the code printed on your band")
        try:
            band = self._portal.band_for_code(code)
        except BandCodeError as err:
            raise FormError(400, "band_code", str(err)) from err
        if band is None:
            # Raises 429 while unknown codes from all addresses are over the
            # site-wide limit.
            self._portal.reject_unknown_band_code()
            raise FormError(
                400,
                "band_code",
                "no band of tonight has this code; check the code printed on your "
                "band, or ask staff",
            )
        return band

    @staticmethod
    def _contact(email: str, wallet_id: str) -> dict[str, str]:
        if email and wallet_id:
            raise FormError(
                400, "email", "give an email address or a wallet id, not both"
            )
        if not email and not wallet_id:
            raise FormError(
                400,
                "email",
                "missing field 'email': give an email address, or a wallet id",
            )
        data = {"email": email} if email else {"wallet_id": wallet_id}
        try:
            _validation.contact(data)
        except PayloadError as err:
            field = "email" if email else "wallet_id"
            expected = (
                "an email address like name@example.org"
                if email
                else "a wallet id of 4-64 letters, digits or . _ : -"
            )
            raise FormError(
                400, field, f"field {field!r} is not valid; give {expected}"
            ) from err
        return data

    @staticmethod
    def _form_id(form: dict[str, str]) -> str:
        form_id = required(form, "form_id", "the form id of the page; reload it")
        if not is_form_id(form_id):
            raise FormError(
                400, "form_id", "field 'form_id' is not valid; reload the page"
            )
        return form_id

    def _box_error(self, reply: dict[str, Any], action: str) -> tuple[int, str]:
        error = reply.get("error", {})
        code = str(error.get("code", "internal-error"))
        self._portal.rejections[f"box-{code}"] += 1
        if code in _BOX_FAULT_CODES or code.startswith("token-"):
            _LOGGER.warning(
                "The box could not serve the portal's %s (%s)", action, code
            )
            return 503, "the box could not do this just now; try again in a moment"
        if code == "invalid-request":
            return 400, str(error.get("message", "the request was invalid"))
        return 409, self._refusal_text(code, error)

    def _refusal_text(self, code: str, error: dict[str, Any]) -> str:
        """Return the box's refusal as a sentence for the guest, amounts in money."""

        def amount(name: str) -> str:
            value = error.get(name)
            return self._money(value) if isinstance(value, int) else "?"

        opens_at = error.get("opens_at")
        texts = {
            "insufficient-funds": f"your wallet holds {amount('balance')} and this "
            f"costs {amount('amount')}; top up at the bar and try again",
            "limit-exceeded": f"this passes the wallet's limit of {amount('limit')}; "
            "ask at the bar",
            "sold-out": "sold out: every unit of this drop is taken",
            "limit-reached": f"you already hold {error.get('limit', 1)} of this drop, "
            "the most one guest may claim",
            "drop-ended": "this drop has ended",
            "drop-closed": "the venue has closed this drop",
            "members-only": "this drop is open to members with early access first; "
            "try again when it opens for everyone",
        }
        if code == "not-started" and isinstance(opens_at, int | float):
            opens = night_time(opens_at, self._commerce, self._box.clock.now())
            return f"this drop is not open yet; it opens {opens}"
        return texts.get(code, str(error.get("message", code)))

    # Lookups

    def _visitor(self, request: web.Request) -> Visitor:
        session_cookie = request.cookies.get(SESSION_COOKIE)
        band = self._portal.sessions.band_of(session_cookie)
        presession = request.cookies.get(PRESESSION_COOKIE)
        new_presession = not is_cookie_value(presession)
        if presession is None or new_presession:
            presession = new_cookie_value()
        return Visitor(
            band=band,
            session_cookie=session_cookie if band is not None else None,
            presession_cookie=presession,
            new_presession=new_presession,
        )

    def _page(
        self, template: str, visitor: Visitor, *, status: int = 200, **context: Any
    ) -> web.Response:
        context.setdefault("error", None)
        context.setdefault("error_field", None)
        html = self._portal.render(
            template,
            signed_in=visitor.band is not None,
            csrf=self._portal.sessions.csrf_token(visitor.binding),
            form_id=new_form_id(),
            **context,
        )
        response = web.Response(text=html, status=status, content_type="text/html")
        if visitor.new_presession:
            self._set_cookie(
                response,
                PRESESSION_COOKIE,
                visitor.presession_cookie,
                PRESESSION_MAX_AGE_S,
            )
        return response

    def _set_cookie(
        self, response: web.StreamResponse, name: str, value: str, max_age: int
    ) -> None:
        """Set a cookie that scripts cannot read and other sites' requests omit.

        It is marked Secure when the portal's public URL is HTTPS.
        """
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._portal.config.secure_cookies,
        )

    def _start_session(
        self, response: web.StreamResponse, visitor: Visitor, band: str
    ) -> None:
        """Sign the browser in as ``band``, ending the session it had."""
        self._portal.sessions.end(visitor.session_cookie)
        cookie = self._portal.sessions.create(band)
        self._set_cookie(
            response,
            SESSION_COOKIE,
            cookie,
            int(self._portal.config.session_hours * 3600),
        )

    def _drop(self, request: web.Request) -> DropConfig:
        drop_id = request.match_info["drop"]
        drop = self._box.drops.find(drop_id) if _SUBJECT.match(drop_id) else None
        if drop is None or drop.quota(self._box.config.box_id) == 0:
            raise web.HTTPNotFound(text="there is no such drop tonight")
        return drop

    def _item(self, request: web.Request) -> Item:
        item_id = request.match_info["item"]
        item = self._commerce.item(item_id) if _SUBJECT.match(item_id) else None
        if item is None:
            raise web.HTTPNotFound(text="there is no such item tonight")
        return item

    async def _drop_status(self, drop_id: str) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._status_cache.get(drop_id)
        if cached is not None and now - cached[0] < _STATUS_CACHE_S:
            return cached[1]
        reply = await self._portal.terminal.call("drops", "status", {"drop": drop_id})
        if not reply.get("ok"):
            code = reply.get("error", {}).get("code")
            _LOGGER.warning("The box did not give drop %s's status (%s)", drop_id, code)
            raise web.HTTPServiceUnavailable(
                text="the box could not read this drop's stock; try again"
            )
        status: dict[str, Any] = reply["data"]
        self._status_cache[drop_id] = (now, status)
        return status

    async def _drop_view(self, drop: DropConfig, band: str | None) -> DropView:
        """Return ``drop``'s state now and the units of it that ``band`` has claimed."""
        status = await self._drop_status(drop.id)
        units_held = 0
        if band is not None:
            row = self._box.store.query_one(
                "SELECT units FROM drop_holdings WHERE drop_id = ? AND band = ?",
                (drop.id, band),
            )
            units_held = 0 if row is None else int(row[0])
        return DropView(
            drop=drop,
            state=drop_state(drop, status, self._box.clock.now()),
            available=int(status["available"]),
            units_held=units_held,
        )

    def _tonights_drops(self) -> list[DropConfig]:
        """Return the drops this box sells whose time overlaps the current night.

        The night is the one :meth:`CommerceConfig.night_of` gives for now,
        so drops of earlier nights stay off the list after a restart.
        """
        box_id = self._box.config.box_id
        begins, ends = night_window(
            self._commerce, self._commerce.night_of(self._box.clock.now())
        )
        return [
            drop
            for drop in self._box.drops.all_drops()
            if drop.quota(box_id) > 0
            and drop.starts_at < ends
            and drop.ends_at > begins
        ]

    def _has_early_access(self, drop: DropConfig, band: str | None) -> bool:
        """Return whether ``band`` may claim ``drop`` now, before it opens.

        The rule is the drops service's: members of a tier with early access
        claim from ``early_access_s`` before the drop opens.
        """
        if band is None or drop.early_access_s <= 0:
            return False
        if self._box.clock.now() < drop.starts_at - drop.early_access_s:
            return False
        row = self._box.store.query_one(
            "SELECT tier FROM members WHERE band = ?", (band,)
        )
        tier = None if row is None else self._commerce.tier(row[0])
        return tier is not None and tier.early_access

    def _item_drops(self, item: Item) -> list[DropConfig]:
        """Return the drops of ``item`` that this box sells, in the drops' order."""
        box_id = self._box.config.box_id
        return [
            drop
            for drop in self._box.drops.all_drops()
            if drop.item == item.id and drop.quota(box_id) > 0
        ]

    async def _offer(self, item: Item, band: str | None) -> Offer | None:
        """Return the offer of the try-on page's button (see ``choose_offer``)."""
        views = [await self._drop_view(drop, band) for drop in self._item_drops(item)]
        return choose_offer(views, self._commerce, self._box.clock.now())

    def _drop_name(self, drop_id: str) -> str:
        drop = self._box.drops.find(drop_id)
        item = None if drop is None else self._commerce.item(drop.item)
        return drop_id if item is None else item.name

    def _creator(self, request: web.Request) -> dict[str, str]:
        code = request.cookies.get(CREATOR_COOKIE, "")
        if not CREATOR_CODE.match(code):
            return {}
        creator = self._commerce.creator_by_code(code)
        return {} if creator is None else {"creator": creator.code}

    def _record_view(self, page: str, subject: str) -> None:
        box = self._box
        try:
            record_view(box.store, box.clock, self._commerce, page, subject)
        except PayloadError as err:
            _LOGGER.warning("Could not count a view of %s %s: %s", page, subject, err)

    def _money(self, amount: int) -> str:
        return money(amount, self._commerce.wallet.currency)

    def _state(self, drop: DropConfig, status: dict[str, Any]) -> tuple[str, str]:
        """Return ``drop``'s state and the words for it, as every page shows them."""
        now = self._box.clock.now()
        state = drop_state(drop, status, now)
        return state, state_text(drop, state, self._commerce, now)

    def _wallet(self, band: str) -> tuple[int, int]:
        """Return ``band``'s balance and tonight's spending, in minor units.

        Read from the store, with the spending rule of the wallet service's
        ``api/wallet/balance``: tonight's charges less their refunds, voided
        charges left out. The portal's token has no wallet scope.
        """
        store = self._box.store
        row = store.query_one("SELECT balance FROM wallets WHERE band = ?", (band,))
        balance = 0 if row is None else int(row[0])
        night = self._commerce.night_of(self._box.clock.now())
        spent = store.query_one(
            "SELECT COALESCE(SUM(amount - refunded), 0) FROM ledger_transactions"
            " WHERE band = ? AND night = ? AND kind = 'charge' AND voided_by IS NULL",
            (band, night),
        )
        return balance, 0 if spent is None else int(spent[0])


def pickup_code_text(stored: str | None) -> str | None:
    """Return a stored pick-up code as it was handed out, ``XXXX-XXXX``."""
    if not stored:
        return None
    return f"{stored[:4]}-{stored[4:]}" if len(stored) == 8 else stored


def error_context(error: FormError | None) -> dict[str, Any]:
    if error is None:
        return {"error": None, "error_field": None}
    return {"error": error.message, "error_field": error.field}
