"""The drops screen: each drop with its live stock and state; start, stop, create.

Stock comes from the box status, which the box publishes every second
(``drops``: quota, available, reserved, paid of this box's quota); the
drop's item, price, times and state from ``console/overview``. Starting and
stopping send ``drops/start`` and ``drops/stop`` with the admin token, and
a new drop is created with ``console/drop-create``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
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
from tui.screens._operation import OperationScreen, fill_table, selected_key

# A drop's per_guest_limit is 1 to 100 under the [[drops]] rules of the site
# file, which console/drop-create applies.
MAX_PER_GUEST_LIMIT = 100

# The columns fit 80 terminal columns; the selected drop's other figures
# are in the detail line below the table.
_COLUMNS = ("drop", "item", "price", "left", "state", "starts", "ends")


class DropsScreen(OperationScreen):
    """The night's drops: live stock, state, and the actions that change them."""

    TITLE = "Drops"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "start_drop", "Start drop"),
        Binding("x", "stop_drop", "Stop drop"),
        Binding("n", "create_drop", "New drop"),
    ]

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="drops", cursor_type="row", zebra_stripes=True)
        yield Static("", id="drop-detail", markup=False)

    def redraw(self, source: str) -> None:
        if source in ("shown", "overview", "box_status", "link"):
            self._draw_drops()

    def _draw_drops(self) -> None:
        rows = []
        for drop in self.overview().get("drops") or []:
            drop_id = str(drop.get("id"))
            live = self._live_stock(drop_id)
            available = live.get("available", drop.get("available"))
            quota = live.get("quota", drop.get("quota"))
            rows.append(
                (
                    drop_id,
                    (
                        drop_id,
                        drop.get("item"),
                        self.money(drop.get("price")),
                        f"{_figure(available)}/{_figure(quota)}",
                        drop_state_text(drop, self.box_now()),
                        self.time_text(drop.get("starts_at"), seconds=False),
                        self.time_text(drop.get("ends_at"), seconds=False),
                    ),
                )
            )
        fill_table(self.query_one("#drops", DataTable), _COLUMNS, rows)
        self.mark_stale("drops", "box_status")
        self._draw_detail()

    def _live_stock(self, drop_id: str) -> dict[str, Any]:
        stock = self.box_status().get("drops") or {}
        live = stock.get(drop_id)
        return live if isinstance(live, dict) else {}

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "drops":
            self._draw_detail()

    def _draw_detail(self) -> None:
        detail = self.query_one("#drop-detail", Static)
        drop_id = self.selected_drop()
        drop = next(
            (
                entry
                for entry in self.overview().get("drops") or []
                if str(entry.get("id")) == drop_id
            ),
            None,
        )
        if drop is None:
            detail.update("No drop selected." if drop_id is None else "")
            return
        live = self._live_stock(str(drop_id))
        creator = f", creator {drop['creator']}" if drop.get("creator") else ""
        detail.update(
            Text(
                f"{drop_id}: {_figure(live.get('available', drop.get('available')))}"
                f" of {_figure(live.get('quota', drop.get('quota')))} left, "
                f"{_figure(live.get('reserved'))} reserved, "
                f"{_figure(live.get('paid'))} paid, "
                f"{_figure(drop.get('per_guest_limit'))} per guest; "
                f"{self.time_text(drop.get('starts_at'))} to "
                f"{self.time_text(drop.get('ends_at'))}{creator}"
            )
        )

    def selected_drop(self) -> str | None:
        """The id of the drop under the cursor."""
        return selected_key(self.query_one("#drops", DataTable))

    def action_start_drop(self) -> None:
        self._change_state("start")

    def action_stop_drop(self) -> None:
        self._change_state("stop")

    def _change_state(self, action: str) -> None:
        drop = self.selected_drop()
        if drop is None:
            self.show_error(f"no drop selected to {action}")
            return
        self.start_action(self._send_state(action, drop))

    async def _send_state(self, action: str, drop: str) -> None:
        reply = await self.send(
            "drops", action, {"drop": drop}, admin=True, mutating=True
        )
        if reply is None:
            return
        self.show_ok(f"drop {drop} is now {reply.get('state')}")
        await self.link.refresh_overview()

    def action_create_drop(self) -> None:
        self.app.push_screen(self._create_form(), self._create_chosen)

    def _create_form(self) -> FormModal:
        overview = self.overview()
        items = [
            (f"{item.get('name')} ({item.get('id')})", str(item.get("id")))
            for item in overview.get("items") or []
        ]
        creators = [("none", "")] + [
            (str(creator.get("name")), str(creator.get("id")))
            for creator in overview.get("creators") or []
        ]
        fields = (
            Field("id", "drop id", placeholder="e.g. tee-drop-2"),
            Field("item", "item", options=items),
            Field("price", "price", placeholder="e.g. 35.00"),
            Field("quota", "quota", placeholder="units this box sells"),
            Field("starts_at", "starts", value="now", placeholder="now, +10m, ISO"),
            Field("ends_at", "ends", value="+2h", placeholder="+2h or ISO time"),
            Field("per_guest_limit", "per guest", placeholder="optional limit"),
            Field("creator", "creator", value="", options=creators),
        )
        return FormModal("New drop", fields, "Create", self._drop_request)

    def _drop_request(self, values: dict[str, Any]) -> dict[str, Any]:
        box_now = self.box_now()
        if box_now is None:
            raise ValueError("the box's time is not known yet; wait for its status")
        if not values["id"]:
            raise ValueError("drop id is missing: give one like tee-drop-2")
        if not values["item"]:
            raise ValueError("item is missing: choose one of the catalogue")
        request: dict[str, Any] = {
            "id": values["id"],
            "item": values["item"],
            "price": parse_money(
                "price", values["price"], self.minor_units(), maximum=MAX_AMOUNT
            ),
            "quota": parse_whole(
                "quota", values["quota"], minimum=1, maximum=MAX_QUANTITY
            ),
            "starts_at": parse_box_time("starts", values["starts_at"], box_now),
            "ends_at": parse_box_time("ends", values["ends_at"], box_now),
        }
        if request["ends_at"] <= request["starts_at"]:
            raise ValueError("ends is not after starts: give a later end")
        if values["per_guest_limit"]:
            request["per_guest_limit"] = parse_whole(
                "per guest",
                values["per_guest_limit"],
                minimum=1,
                maximum=MAX_PER_GUEST_LIMIT,
            )
        if values["creator"]:
            request["creator"] = values["creator"]
        return request

    def _create_chosen(self, request: dict[str, Any] | None) -> None:
        if request is not None:
            self.start_action(self._create(request))

    async def _create(self, request: dict[str, Any]) -> None:
        reply = await self.send(
            "console", "drop-create", request, admin=True, mutating=True
        )
        if reply is None:
            return
        self.show_ok(f"drop {reply.get('id')} created: {reply.get('quota')} units")
        await self.link.refresh_overview()


def _figure(value: object) -> str:
    return "--" if value is None else str(value)


def drop_state_text(drop: dict[str, Any], now: float | None) -> str:
    """Return the state of ``drop`` as a guest meets it at the box's time ``now``.

    A ``scheduled`` drop opens and closes by its own times, so it shows as
    ``upcoming``, ``open`` or ``ended``; ``live`` (started early) and
    ``stopped`` are shown as they are.
    """
    state = str(drop.get("state"))
    starts, ends = drop.get("starts_at"), drop.get("ends_at")
    if state != "scheduled" or now is None:
        return state
    if isinstance(starts, int | float) and now < starts:
        return "upcoming"
    if isinstance(ends, int | float) and now >= ends:
        return "ended"
    return "open"
