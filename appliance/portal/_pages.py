"""The guest portal's pages and forms.

Every page that shows a form renders a CSRF token for the browser's session
or pre-session cookie, and a form id from which the request's idempotency
key is derived, so a double tap on "buy" is one purchase. Every purchase
is a drop claim with a pick-up code. Pages read the box's store for what a
guest owns (kit, coupons, claims, balance) and go through the box's request
API, as the terminal ``portal``, for everything that changes state or that
the API computes (opt-in, claims, stock).
Guest input is checked with the bus API's own rules before it is sent.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from markupsafe import Markup

from appliance.commerce.config import DropConfig, Item
from appliance.portal._drop_offers import CLOSED_STATES, state_text
from appliance.portal._format import money, night_time
from appliance.portal._forms import FormError
from appliance.portal._page_base import (
    CREATOR_CODE,
    CREATOR_COOKIE,
    PRESESSION_MAX_AGE_S,
    PageBase,
    Visitor,
    error_context,
    pickup_code_text,
)
from appliance.portal._sessions import SESSION_COOKIE
from appliance.portal.qr import qr_svg

# Refusals of one drop after which the one-tap purchase tries the item's next
# drop. When every drop rejects the claim, the guest is shown the refusal ranked
# first here: money and membership first, then the guest's own limit, then the
# drops' states.
_NEXT_DROP_REFUSALS = {
    code: rank
    for rank, code in enumerate(
        (
            "insufficient-funds",
            "limit-exceeded",
            "members-only",
            "limit-reached",
            "sold-out",
            "not-started",
            "drop-closed",
            "drop-ended",
        )
    )
}
# Refusals that trying the same form again cannot change.
_FINAL_REFUSALS = frozenset({"sold-out", "drop-ended", "drop-closed", "limit-reached"})


class Pages(PageBase):
    """The routes of the portal: its pages, forms and their results."""

    def add_routes(self, app: web.Application) -> None:
        """Add every page and form route to ``app``."""
        router = app.router
        router.add_get("/", self.home)
        router.add_get("/optin", self.optin_page)
        router.add_post("/optin", self.optin)
        router.add_get("/band", self.band_page)
        router.add_post("/band", self.sign_in)
        router.add_get("/me", self.me)
        router.add_post("/signout", self.sign_out)
        router.add_get("/drops", self.drops)
        router.add_get("/drops/{drop}", self.drop_page)
        router.add_get("/drops/{drop}/stock", self.drop_stock)
        router.add_post("/drops/{drop}/claim", self.claim)
        router.add_get("/items/{item}/try-on", self.try_on)
        router.add_post("/items/{item}/buy", self.buy)
        router.add_get("/c/{code}", self.creator_link)

    # Pages

    async def home(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        optin_qr = Markup(qr_svg(self._portal.config.url("/optin")))
        return self._page("home.html", visitor, optin_qr=optin_qr)

    async def optin_page(self, request: web.Request) -> web.Response:
        return self._optin_form(self._visitor(request))

    async def optin(self, request: web.Request) -> web.StreamResponse:
        visitor = self._visitor(request)
        form = await self._form(request, ("email", "wallet_id", "consent"))
        binding = self._check_csrf(form, visitor)
        email = form.get("email", "").strip()
        wallet_id = form.get("wallet_id", "").strip()
        try:
            band = self._band_of(form, visitor)
            contact = self._contact(email, wallet_id)
            if form.get("consent") != "yes":
                raise FormError(
                    400,
                    "consent",
                    "tick 'I agree' to opt in; nothing is stored without your consent",
                )
            form_id = self._form_id(form)
        except FormError as err:
            self._portal.count_rejection("invalid-form", f"opt-in: field {err.field}")
            return self._optin_form(
                visitor, error=err, email=email, wallet_id=wallet_id
            )
        reply = await self._portal.terminal.call(
            "optin",
            "register",
            {
                "band": band,
                **contact,
                "consent": True,
                "consent_text": self._portal.config.consent_text,
                "idempotency_key": self._portal.sessions.request_key(
                    binding, form_id, "optin"
                ),
            },
        )
        if not reply.get("ok"):
            status, message = self._box_error(reply, "opt-in")
            return self._optin_form(
                visitor,
                error=FormError(status, None, message),
                email=email,
                wallet_id=wallet_id,
            )
        response = web.Response(status=303, headers={"Location": "/me"})
        if band != visitor.band:
            self._start_session(response, visitor, band)
        return response

    async def band_page(self, request: web.Request) -> web.Response:
        return self._band_form(self._visitor(request))

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        visitor = self._visitor(request)
        form = await self._form(request, ())
        self._check_csrf(form, visitor)
        try:
            band = self._band_of(form, visitor, code_required=True)
        except FormError as err:
            return self._band_form(visitor, error=err)
        response = web.Response(status=303, headers={"Location": "/me"})
        if band != visitor.band:
            self._start_session(response, visitor, band)
        return response

    async def me(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        band = visitor.band
        if band is None:
            return web.Response(status=303, headers={"Location": "/band"})
        balance, spent = self._wallet(band)
        return self._page(
            "me.html",
            visitor,
            balance=self._money(balance),
            spent=self._money(spent) if spent else "",
            **self._holdings(band),
        )

    def _holdings(self, band: str) -> dict[str, Any]:
        """Return what ``band`` has: kit, coupons, opt-in and drop claims."""
        store = self._box.store
        commerce = self._commerce
        now = self._box.clock.now()
        kit_row = store.query_one(
            "SELECT station, issued_at FROM kits WHERE band = ?", (band,)
        )
        kit = None
        if kit_row is not None:
            kit = {"station": kit_row[0], "time": night_time(kit_row[1], commerce, now)}
        coupons = [
            {
                "code": code,
                "offer": offer,
                "expires": night_time(expires_at, commerce, now),
            }
            for code, offer, expires_at in store.query(
                "SELECT code, offer, expires_at FROM coupons WHERE band = ?"
                " ORDER BY issued_at",
                (band,),
            )
        ]
        opted_in = (
            store.query_one("SELECT 1 FROM optins WHERE band = ?", (band,)) is not None
        )
        claims = [
            {
                "name": self._drop_name(drop_id),
                "status": status,
                "pickup_code": pickup_code_text(pickup_code),
                "picked_up": picked_up_at is not None,
            }
            for drop_id, status, pickup_code, picked_up_at in store.query(
                "SELECT drop_id, status, pickup_code, picked_up_at FROM drop_claims"
                " WHERE band = ? AND status IN ('reserved', 'paid')"
                " ORDER BY reserved_at DESC LIMIT 50",
                (band,),
            )
        ]
        return {"kit": kit, "coupons": coupons, "opted_in": opted_in, "claims": claims}

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        visitor = self._visitor(request)
        form = await self._form(request, ())
        self._check_csrf(form, visitor)
        self._portal.sessions.end(visitor.session_cookie)
        response = web.Response(status=303, headers={"Location": "/"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def drops(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        views = []
        for drop in self._tonights_drops():
            status = await self._drop_status(drop.id)
            state, when = self._state(drop, status)
            views.append(
                {
                    "id": drop.id,
                    "name": self._drop_name(drop.id),
                    "price": self._money(drop.price),
                    "state": state,
                    "when": when,
                    "available": status["available"],
                    "quota": status["quota"],
                }
            )
        return self._page("drops.html", visitor, drops=views)

    async def drop_page(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        drop = self._drop(request)
        status = await self._drop_status(drop.id)
        if request.method == "GET":
            self._record_view("drop", drop.id)
        return self._drop_form(visitor, drop, status)

    async def drop_stock(self, request: web.Request) -> web.Response:
        drop = self._drop(request)
        status = await self._drop_status(drop.id)
        state, when = self._state(drop, status)
        return web.json_response(
            {
                "available": status["available"],
                "quota": status["quota"],
                "state": state,
                "state_text": when,
            }
        )

    async def claim(self, request: web.Request) -> web.StreamResponse:
        visitor = self._visitor(request)
        drop = self._drop(request)
        form = await self._form(request, ())
        binding = self._check_csrf(form, visitor)
        try:
            band = self._band_of(form, visitor)
            form_id = self._form_id(form)
        except FormError as err:
            status = await self._drop_status(drop.id)
            return self._drop_form(visitor, drop, status, error=err)
        data = {
            "drop": drop.id,
            "band": band,
            "pay": True,
            "idempotency_key": self._portal.sessions.request_key(
                binding, form_id, f"claim:{drop.id}"
            ),
            **self._creator(request),
        }
        reply = await self._portal.terminal.call("drops", "claim", data)
        self._status_cache.pop(drop.id, None)
        return self._result(
            "claim",
            visitor,
            band,
            reply,
            item_name=self._drop_name(drop.id),
            retry_form=("claim", f"/drops/{drop.id}/claim", "Try again"),
            back_url=f"/drops/{drop.id}",
        )

    async def try_on(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        item = self._item(request)
        if request.method == "GET":
            self._record_view("try-on", item.id)
        return await self._try_on_page(visitor, item)

    async def buy(self, request: web.Request) -> web.StreamResponse:
        visitor = self._visitor(request)
        item = self._item(request)
        drops = self._item_drops(item)
        if not drops:
            raise web.HTTPConflict(
                text=f"{item.name} is not sold on the phone tonight; buy it at the bar "
                "with your wristband"
            )
        form = await self._form(request, ())
        binding = self._check_csrf(form, visitor)
        try:
            band = self._band_of(form, visitor)
            form_id = self._form_id(form)
        except FormError as err:
            return await self._try_on_page(visitor, item, error=err)
        reply = await self._claim_first(request, drops, band, binding, form_id)
        return self._result(
            "purchase",
            visitor,
            band,
            reply,
            item_name=item.name,
            retry_form=("buy", f"/items/{item.id}/buy", "Try again"),
            back_url=f"/items/{item.id}/try-on",
        )

    async def _claim_first(
        self,
        request: web.Request,
        drops: list[DropConfig],
        band: str,
        binding: str,
        form_id: str,
    ) -> dict[str, Any]:
        """Claim and pay one unit from the first of ``drops`` that takes the claim.

        Each drop is tried in the same order, with an idempotency key of its
        own derived from the form. A second tap of the same form gets the
        stored replies, so it stops at the drop that sold the first time and
        never buys twice, even when another drop has opened since. A refusal
        listed in ``_NEXT_DROP_REFUSALS`` moves on to the next drop. When every
        drop rejects the claim, the refusal ranked first there is returned.
        """
        refusals: list[dict[str, Any]] = []
        for drop in drops:
            reply = await self._portal.terminal.call(
                "drops",
                "claim",
                {
                    "drop": drop.id,
                    "band": band,
                    "pay": True,
                    "idempotency_key": self._portal.sessions.request_key(
                        binding, form_id, f"buy:{drop.item}:{drop.id}"
                    ),
                    **self._creator(request),
                },
            )
            self._status_cache.pop(drop.id, None)
            code = None if reply.get("ok") else reply.get("error", {}).get("code")
            if code is None or code not in _NEXT_DROP_REFUSALS:
                return reply
            refusals.append(reply)
        return min(
            refusals, key=lambda reply: _NEXT_DROP_REFUSALS[reply["error"]["code"]]
        )

    async def creator_link(self, request: web.Request) -> web.StreamResponse:
        code = request.match_info["code"]
        creator = None
        if CREATOR_CODE.match(code):
            creator = self._commerce.creator_by_code(code)
        if creator is None:
            raise web.HTTPNotFound(text="this creator link is not known tonight")
        response = web.Response(status=303, headers={"Location": "/drops"})
        self._set_cookie(response, CREATOR_COOKIE, creator.code, PRESESSION_MAX_AGE_S)
        return response

    # Forms and results

    def _optin_form(
        self,
        visitor: Visitor,
        *,
        error: FormError | None = None,
        email: str = "",
        wallet_id: str = "",
    ) -> web.Response:
        return self._page(
            "optin.html",
            visitor,
            status=200 if error is None else error.status,
            consent_text=self._portal.config.consent_text,
            email=email,
            wallet_id=wallet_id,
            **error_context(error),
        )

    def _band_form(
        self, visitor: Visitor, *, error: FormError | None = None
    ) -> web.Response:
        return self._page(
            "band.html",
            visitor,
            status=200 if error is None else error.status,
            **error_context(error),
        )

    def _drop_form(
        self,
        visitor: Visitor,
        drop: DropConfig,
        status: dict[str, Any],
        *,
        error: FormError | None = None,
    ) -> web.Response:
        item = self._commerce.item(drop.item)
        state, when = self._state(drop, status)
        early = state == "scheduled" and self._has_early_access(drop, visitor.band)
        view = {
            "id": drop.id,
            "item": drop.item,
            "name": self._drop_name(drop.id),
            "price": self._money(drop.price),
            "state": state,
            "when": when,
            "claimable": state == "open" or early,
            # The states in which the page's script shows the form and the
            # hint that claims start later.
            "form_states": "scheduled open" if early else "open",
            "later_states": "" if early else "scheduled",
            "closed_states": " ".join(sorted(CLOSED_STATES)),
            "available": status["available"],
            "quota": status["quota"],
            "item_page": item is not None,
        }
        drop_qr = Markup(qr_svg(self._portal.config.url(f"/drops/{drop.id}")))
        return self._page(
            "drop.html",
            visitor,
            status=200 if error is None else error.status,
            drop=view,
            drop_qr=drop_qr,
            **error_context(error),
        )

    async def _try_on_page(
        self, visitor: Visitor, item: Item, *, error: FormError | None = None
    ) -> web.Response:
        assets = self._box.assets
        model = assets.model_for_item(item.id)
        poster = assets.poster_for_item(item.id)
        offer = await self._offer(item, visitor.band)
        offer_view = None
        if offer is not None and offer.drop is not None:
            chosen = offer.drop
            offer_view = {
                "drop": chosen.drop.id,
                "price": self._money(chosen.drop.price),
                "when": state_text(
                    chosen.drop, chosen.state, self._commerce, self._box.clock.now()
                ),
                "available": chosen.available,
                "reason": None,
            }
        elif offer is not None:
            offer_view = {"drop": None, "reason": offer.reason}
        return self._page(
            "tryon.html",
            visitor,
            status=200 if error is None else error.status,
            item={"id": item.id, "name": item.name},
            model=None if model is None else model.sha256,
            poster=None if poster is None else poster.sha256,
            offer=offer_view,
            **error_context(error),
        )

    def _result(
        self,
        action: str,
        visitor: Visitor,
        band: str,
        reply: dict[str, Any],
        *,
        item_name: str,
        retry_form: tuple[str, str, str],
        back_url: str,
    ) -> web.Response:
        if reply.get("ok"):
            data = reply["data"]
            currency = self._commerce.wallet.currency
            result = {
                "status": data.get("status", "paid"),
                "name": item_name,
                "amount": money(int(data.get("amount", 0)), currency),
                "balance": money(int(data.get("balance", 0)), currency),
                "pickup_code": data.get("pickup_code"),
            }
            response = self._page(
                "result.html", visitor, heading="Bought", result=result
            )
        else:
            status, message = self._box_error(reply, action)
            form_name, form_action, button = retry_form
            response = self._page(
                "result.html",
                visitor,
                status=status,
                heading="Not bought",
                result=None,
                error=message,
                error_field=None,
                retry=reply["error"].get("code") not in _FINAL_REFUSALS,
                form_name=form_name,
                form_action=form_action,
                button=button,
                back_url=back_url,
            )
        if band != visitor.band:
            self._start_session(response, visitor, band)
        return response
