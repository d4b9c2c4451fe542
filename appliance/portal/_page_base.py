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

from appliance.analytics.views import record_view
from appliance.commerce.config import DropConfig, Item
from appliance.errors import PayloadError
from appliance.kits import _validation
from appliance.portal._format import local_time, money
from appliance.portal._forms import FORM_TIMEOUT_S, FormError, read_form, required
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
_BOX_TROUBLE = frozenset({"store-error", "internal-error", "deadline-exceeded"})
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
        """Return the binding the form was rendered for; raise 403 without one."""
        token = form.get("csrf", "")
        binding = None
        if token:
            binding = self._portal.sessions.csrf_binding(token, visitor.bindings())
        if binding is None:
            reason = "csrf-missing" if not token else "csrf-invalid"
            self._portal.count_rejection(reason, "a form came without a valid token")
            raise web.HTTPForbidden(
                text="this form has expired or was not sent from the portal's page; "
                "reload the page and send it again"
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
            self._portal.count_rejection("band-code-unknown", "an unknown band code")
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
            what = (
                "an email address like name@example.org"
                if email
                else "a wallet id of 4-64 letters, digits or . _ : -"
            )
            raise FormError(
                400, field, f"field {field!r} is not valid; give {what}"
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
        if code in _BOX_TROUBLE or code.startswith("token-"):
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

        timezone = self._commerce.timezone
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
            return (
                f"this drop is not open yet; it opens {local_time(opens_at, timezone)}"
            )
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
            response.set_cookie(
                PRESESSION_COOKIE,
                visitor.presession_cookie,
                max_age=PRESESSION_MAX_AGE_S,
                path="/",
                httponly=True,
                samesite="Strict",
                secure=self._portal.config.secure_cookies,
            )
        return response

    def _start_session(
        self, response: web.StreamResponse, visitor: Visitor, band: str
    ) -> None:
        """Sign the browser in as ``band``, ending the session it had."""
        self._portal.sessions.end(visitor.session_cookie)
        cookie = self._portal.sessions.create(band)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self._portal.config.session_hours * 3600),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._portal.config.secure_cookies,
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

    async def _open_drop(self, item: Item) -> DropConfig | None:
        """Return the drop of ``item`` that takes claims now, or None."""
        now = self._box.clock.now()
        box_id = self._box.config.box_id
        for drop in self._box.drops.all_drops():
            if drop.item != item.id or drop.quota(box_id) == 0:
                continue
            status = await self._drop_status(drop.id)
            if _is_open(drop, status, now):
                return drop
        return None

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

    def _when(self, drop: DropConfig, status: dict[str, Any] | None, now: float) -> str:
        timezone = self._commerce.timezone
        state = None if status is None else status.get("state")
        if state == "stopped":
            return "closed"
        if now >= drop.ends_at:
            return "ended"
        if state == "live" or now >= drop.starts_at:
            return f"open until {local_time(drop.ends_at, timezone)}"
        return f"opens {local_time(drop.starts_at, timezone)}"


def _is_open(drop: DropConfig, status: dict[str, Any], now: float) -> bool:
    state = status.get("state")
    if state == "stopped" or now >= drop.ends_at:
        return False
    return state == "live" or now >= drop.starts_at


def pickup_code_text(stored: str | None) -> str | None:
    """Return a stored pick-up code as it was handed out, ``XXXX-XXXX``."""
    if not stored:
        return None
    return f"{stored[:4]}-{stored[4:]}" if len(stored) == 8 else stored


def error_context(error: FormError | None) -> dict[str, Any]:
    if error is None:
        return {"error": None, "error_field": None}
    return {"error": error.message, "error_field": error.field}
