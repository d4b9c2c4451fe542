"""The creators screen: each creator's live figures, the promo codes, new codes.

Figures come from the box's retained ``creators/<id>/figures``, one row per
creator and set (sales, revenue net of refunds, drop claims and paid ones).
The box publishes as null every figure about one to four guests, and every
figure that would give such a figure back by subtraction. The table shows a
null figure as ``hidden``.
The promo codes need the admin token (``console/promos``), so they load
when the console is already unlocked or on the refresh key. A new code is
created with ``console/promo-create``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from appliance.commerce.config import MAX_AMOUNT, MAX_QUANTITY
from tui.screens._form import (
    Field,
    FormModal,
    parse_box_time,
    parse_money,
    parse_whole,
)
from tui.screens._operation import OperationScreen, fill_table

_FIGURE_COLUMNS = ("creator", "codes", "set", "sales", "revenue", "claims", "paid")
# The cell of a figure the box suppressed to protect a small group of guests.
SUPPRESSED = "hidden"
_PROMO_COLUMNS = ("code", "discount", "used", "uses", "expires", "creator")
_APPLIES_TO = (
    ("all sales", "all"),
    ("charges only", "charges"),
    ("drops only", "drops"),
)


class CreatorsScreen(OperationScreen):
    """Creators with their figures tonight, and the promo codes."""

    TITLE = "Creators and promo codes"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("g", "load_promos", "Refresh codes"),
        Binding("n", "create_promo", "New promo code"),
    ]

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="figures", cursor_type="row", zebra_stripes=True)
        yield Static(
            "Promo codes (press g to load)", id="promos-title", classes="title"
        )
        yield DataTable(id="promos", cursor_type="row", zebra_stripes=True)

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.session.unlocked:
            self.action_load_promos()

    def redraw(self, source: str) -> None:
        if source in ("shown", "overview", "link") or source.startswith("figures:"):
            self._draw_figures()

    def _draw_figures(self) -> None:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for creator in self.overview().get("creators") or []:
            creator_id = str(creator.get("id"))
            codes = " ".join(str(code) for code in creator.get("codes") or [])
            figures = self.link.state.figures.get(creator_id) or {}
            sets = figures.get("sets") or {}
            if not sets:
                rows.append(
                    (creator_id, (creator.get("name"), codes, "--", 0, None, 0, 0))
                )
            for set_id, numbers in sorted(sets.items()):
                rows.append(
                    (
                        f"{creator_id}/{set_id}",
                        (
                            creator.get("name"),
                            codes,
                            set_id,
                            self._count(numbers, "sales"),
                            self._money_figure(numbers, "revenue"),
                            self._count(numbers, "claims"),
                            self._count(numbers, "claims_paid"),
                        ),
                    )
                )
        fill_table(self.query_one("#figures", DataTable), _FIGURE_COLUMNS, rows)

    @staticmethod
    def _count(numbers: dict[str, Any], name: str) -> object:
        value = numbers.get(name)
        if value is None and numbers.get("suppressed") is True:
            return SUPPRESSED
        return value

    def _money_figure(self, numbers: dict[str, Any], name: str) -> str:
        if numbers.get(name) is None and numbers.get("suppressed") is True:
            return SUPPRESSED
        return self.money(numbers.get(name))

    def action_load_promos(self) -> None:
        self.run_latest(self._load_promos, "promos")

    async def _load_promos(self) -> None:
        reply = await self.send("console", "promos", {}, admin=True)
        if reply is None or not self.is_attached:
            return
        rows = []
        for promo in reply.get("promos") or []:
            value = promo.get("value")
            discount = (
                f"{value} %" if promo.get("kind") == "percent" else self.money(value)
            )
            rows.append(
                (
                    str(promo.get("code")),
                    (
                        promo.get("code"),
                        discount,
                        promo.get("used"),
                        promo.get("uses"),
                        self.time_text(promo.get("expires_at"))
                        if promo.get("expires_at") is not None
                        else "never",
                        promo.get("creator"),
                    ),
                )
            )
        fill_table(self.query_one("#promos", DataTable), _PROMO_COLUMNS, rows)
        self.query_one("#promos-title", Static).update(f"Promo codes ({len(rows)})")

    def action_create_promo(self) -> None:
        creators = [("none", "")] + [
            (str(creator.get("name")), str(creator.get("id")))
            for creator in self.overview().get("creators") or []
        ]
        fields = (
            Field("code", "code", placeholder="e.g. MAYA20"),
            Field(
                "kind",
                "discount kind",
                value="percent",
                options=(("percent off", "percent"), ("amount off", "amount")),
            ),
            Field("value", "discount", placeholder="20 (percent) or 5.00"),
            Field("uses", "uses", placeholder="how many times it can be used"),
            Field("expires_at", "expires", placeholder="optional: +2h or ISO time"),
            Field("creator", "creator", value="", options=creators),
            Field("applies_to", "applies to", value="all", options=_APPLIES_TO),
        )
        form = FormModal("New promo code", fields, "Create", self._promo_request)
        self.app.push_screen(form, self._create_chosen)

    def _promo_request(self, values: dict[str, Any]) -> dict[str, Any]:
        if not values["code"]:
            raise ValueError("code is missing: give one like MAYA20")
        request: dict[str, Any] = {
            "code": values["code"],
            "uses": parse_whole(
                "uses", values["uses"], minimum=1, maximum=MAX_QUANTITY
            ),
            "applies_to": values["applies_to"] or "all",
        }
        if values["kind"] == "amount":
            request["amount"] = parse_money(
                "discount",
                values["value"],
                self.minor_units(),
                minimum=1,
                maximum=MAX_AMOUNT,
            )
        else:
            request["percent"] = parse_whole(
                "discount", values["value"], minimum=1, maximum=100
            )
        if values["expires_at"]:
            box_now = self.box_now()
            if box_now is None:
                raise ValueError("the box's time is not known yet; wait for its status")
            request["expires_at"] = parse_box_time(
                "expires", values["expires_at"], box_now
            )
        if values["creator"]:
            request["creator"] = values["creator"]
        return request

    def _create_chosen(self, request: dict[str, Any] | None) -> None:
        if request is not None:
            self.start_action(self._create(request))

    async def _create(self, request: dict[str, Any]) -> None:
        reply = await self.send(
            "console", "promo-create", request, admin=True, mutating=True
        )
        if reply is None:
            return
        self.show_ok(f"promo code {reply.get('code')} created")
        await self._load_promos()
