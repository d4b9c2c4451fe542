"""The kits screen: stock per kit station, restocking, opt-ins and kit events.

Kits left and the initial stock are live from the box status (``kit_stock``);
kits issued tonight come from ``console/overview``. Opt-ins are shown as
aggregates only (``console/optins`` never returns a contact), and need the
admin token, so they load when the console is unlocked or on the refresh
key. The recent kit events come from the bus as they are published.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from appliance.console._admin import MAX_RESTOCK
from tui.screens._form import Field, FormModal, parse_whole
from tui.screens._operation import OperationScreen, fill_table

_STOCK_COLUMNS = ("station", "issued", "left", "initial")
_OPTIN_COLUMNS = ("band", "contact", "at")
_EVENT_COLUMNS = ("event", "station", "band", "detail")
_KIT_EVENTS = ("kit_issued", "kit_offline_conflict", "kit_stock_low", "kit_restocked")
_EVENTS_SHOWN = 20


class KitsScreen(OperationScreen):
    """Kit stock per station, restocking, opt-ins and recent kit events."""

    TITLE = "Kits and opt-ins"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "restock", "Restock"),
        Binding("g", "load_optins", "Refresh opt-ins"),
    ]

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="stock", cursor_type="row")
        yield Static("Opt-ins: press g to load", id="optins-summary", markup=False)
        yield DataTable(id="optins", cursor_type="row")
        yield Static("Recent kit events", classes="title")
        yield DataTable(id="kit-events", cursor_type="row")

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.session.unlocked:
            self.action_load_optins()

    def redraw(self, source: str) -> None:
        if source in ("shown", "overview", "box_status", "link"):
            self._draw_stock()
        if source == "shown" or source.removeprefix("event:") in _KIT_EVENTS:
            self._draw_events()

    def _draw_stock(self) -> None:
        live = self.box_status().get("kit_stock") or {}
        tonight = self.overview().get("kits") or {}
        stations = sorted(set(live) | set(tonight))
        rows = []
        for station in stations:
            stock = live.get(station) or {}
            counted = tonight.get(station) or {}
            rows.append(
                (
                    station,
                    (
                        station,
                        counted.get("issued"),
                        stock.get("remaining", counted.get("left")),
                        stock.get("initial", counted.get("initial")),
                    ),
                )
            )
        fill_table(self.query_one("#stock", DataTable), _STOCK_COLUMNS, rows)
        self.mark_stale("stock", "box_status")

    def _draw_events(self) -> None:
        events = [
            (event_type, data)
            for event_type, data in self.link.state.events
            if event_type in _KIT_EVENTS
        ][-_EVENTS_SHOWN:]
        rows = []
        for index, (event_type, data) in enumerate(reversed(events)):
            rows.append(
                (
                    str(index),
                    (
                        _event_label(event_type),
                        data.get("station"),
                        data.get("band"),
                        _event_detail(event_type, data),
                    ),
                )
            )
        fill_table(self.query_one("#kit-events", DataTable), _EVENT_COLUMNS, rows)

    def action_load_optins(self) -> None:
        self.run_latest(self._load_optins, "optins")

    async def _load_optins(self) -> None:
        reply = await self.send("console", "optins", {}, admin=True)
        if reply is None or not self.is_attached:
            return
        by_kind = reply.get("by_kind") or {}
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(by_kind.items()))
        self.query_one("#optins-summary", Static).update(
            f"Opt-ins: {reply.get('total')} ({kinds or 'none'}); "
            f"coupons issued: {reply.get('coupons_issued')}"
        )
        rows = [
            (
                f"{entry.get('band')}-{index}",
                (
                    entry.get("band"),
                    entry.get("contact_kind"),
                    self.time_text(entry.get("at")),
                ),
            )
            for index, entry in enumerate(reply.get("recent") or [])
        ]
        fill_table(self.query_one("#optins", DataTable), _OPTIN_COLUMNS, rows)

    def action_restock(self) -> None:
        stations = sorted(
            set(self.box_status().get("kit_stock") or {})
            | set(self.overview().get("kits") or {})
        )
        if not stations:
            self.show_error("this site has no kit station to restock")
            return
        fields = (
            Field(
                "station",
                "station",
                value=stations[0],
                options=[(station, station) for station in stations],
            ),
            Field("add", "kits to add", placeholder=f"1 to {MAX_RESTOCK:,}"),
        )
        form = FormModal("Restock a kit station", fields, "Restock", _restock_request)
        self.app.push_screen(form, self._restock_chosen)

    def _restock_chosen(self, request: dict[str, Any] | None) -> None:
        if request is not None:
            self.start_action(self._restock(request))

    async def _restock(self, request: dict[str, Any]) -> None:
        reply = await self.send(
            "console", "kit-restock", request, admin=True, mutating=True
        )
        if reply is None:
            return
        self.show_ok(
            f"station {reply.get('station')} restocked: {reply.get('left')} left "
            f"of {reply.get('initial')}"
        )


def _restock_request(values: dict[str, Any]) -> dict[str, Any]:
    if not values["station"]:
        raise ValueError("station is missing: choose a kit station")
    add = parse_whole("kits to add", values["add"], minimum=1, maximum=MAX_RESTOCK)
    return {"station": values["station"], "add": add}


def _event_label(event_type: str) -> Text:
    if event_type == "kit_offline_conflict":
        return Text("offline conflict", style="bold red")
    if event_type == "kit_stock_low":
        return Text("stock low", style="yellow")
    return Text(event_type.removeprefix("kit_").replace("_", " "))


def _event_detail(event_type: str, data: dict[str, Any]) -> str:
    if event_type == "kit_offline_conflict":
        return str(data.get("reason"))
    if "remaining" in data:
        return f"{data['remaining']} left"
    if "left" in data:
        return f"{data['left']} left"
    return ""
