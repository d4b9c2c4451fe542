"""The POS screen: charge, refund and look up a band's wallet from the box's console.

The band is typed or picked from the bands the box hears nearest
(``console/nearby``, polled every second, strongest first). A charge sends
``wallet/charge`` with the admin token for an item of the catalogue. The
receipt shows what the box recorded, including the discount and the new
balance. A refund takes the receipt's transaction or a typed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Input, Label, Select, Static

from appliance.commerce.config import MAX_AMOUNT
from appliance.errors import RequestError
from tui.screens._form import parse_money, parse_whole
from tui.screens._operation import (
    OperationScreen,
    fill_table,
    format_rssi,
    selected_key,
)

_NEARBY_COLUMNS = ("band", "RSSI", "reader")
# A row of a table: (row key, cells).
_Row = TypeVar("_Row", bound=tuple[str, Sequence[object]])
# wallet/charge accepts a quantity from 1 to 100 (appliance/wallet/_amounts.py).
MAX_CHARGE_QUANTITY = 100
# Figures a wallet refusal may carry, with the words that introduce them.
_REFUSAL_FIGURES = (
    ("balance", "balance"),
    ("amount", "charge"),
    ("limit", "limit"),
    ("refundable", "left to refund"),
)


class PosScreen(OperationScreen):
    """Charge or refund a band's wallet and show the receipt."""

    TITLE = "POS: charge, refund, balance"
    POLL_S = 1.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "charge", "Charge"),
        Binding("f3", "refund", "Refund"),
        Binding("f4", "balance", "Balance"),
        Binding("f5", "take_nearest", "Use selected band"),
    ]
    DEFAULT_CSS = """
    PosScreen #pos-main { height: 1fr; }
    PosScreen #nearby-pane { width: 30; }
    PosScreen #nearby { max-height: 100%; height: 1fr; }
    PosScreen #pos-form { width: 1fr; padding: 0 1; }
    PosScreen #pos-form Horizontal { height: auto; }
    PosScreen #pos-form Label { width: 12; }
    PosScreen #receipt { border: round $accent; height: auto; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_transaction: str | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="pos-main"):
            with Vertical(id="nearby-pane"):
                yield Static("Nearest bands", classes="title")
                yield DataTable(id="nearby", cursor_type="row")
            with VerticalScroll(id="pos-form"):
                yield from _row("band", _input("band", "ib-1-7"))
                yield from _row(
                    "item", Select[str]([], compact=True, prompt="item", id="item")
                )
                yield from _row("quantity", _input("quantity", "", value="1"))
                yield from _row("amount", _input("amount", "open-price items only"))
                yield from _row(
                    "creator",
                    Select[str]([], compact=True, prompt="no creator", id="creator"),
                )
                yield from _row("promo", _input("promo", "optional"))
                yield from _row("refund tx", _input("refund-tx", "last receipt's"))
                yield from _row("refund amt", _input("refund-amt", "default: all left"))
                yield Static("No receipt yet.", id="receipt")

    def redraw(self, source: str) -> None:
        if source in ("shown", "overview"):
            self._fill_choices()

    def _fill_choices(self) -> None:
        overview = self.overview()
        item_select = self.query_one("#item", Select)
        items = [
            (self._item_label(item), str(item.get("id")))
            for item in overview.get("items") or []
        ]
        if items != getattr(self, "_items_shown", None):
            self._items_shown = items
            item_select.set_options(items)
        creator_select = self.query_one("#creator", Select)
        codes = [
            (f"{creator.get('name')} ({code})", str(code))
            for creator in overview.get("creators") or []
            for code in creator.get("codes") or []
        ]
        if codes != getattr(self, "_codes_shown", None):
            self._codes_shown = codes
            creator_select.set_options(codes)

    def _item_label(self, item: dict[str, Any]) -> str:
        price = item.get("price")
        price_text = self.money(price) if isinstance(price, int) else "open price"
        return f"{item.get('name')} {price_text}"

    async def poll(self) -> None:
        reply = await self.send("console", "nearby", {}, quiet=True)
        if reply is None or not self.is_attached:
            return
        rows = [
            (
                str(band.get("band")),
                (band.get("band"), format_rssi(band.get("rssi")), band.get("reader")),
            )
            for band in reply.get("bands") or []
        ]
        table = self.query_one("#nearby", DataTable)
        if table.has_focus:
            rows = _keep_order(table, rows)
        fill_table(table, _NEARBY_COLUMNS, rows)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "nearby" and event.row_key.value is not None:
            self.query_one("#band", Input).value = str(event.row_key.value)

    def action_take_nearest(self) -> None:
        band = selected_key(self.query_one("#nearby", DataTable))
        if band is None:
            self.show_error("no band heard nearby; type the band id instead")
            return
        self.query_one("#band", Input).value = band

    # Actions.

    def _band(self) -> str:
        band = self.query_one("#band", Input).value.strip()
        if not band:
            raise ValueError("band is missing: type it or pick one with F5")
        return band

    def _charge_request(self) -> dict[str, Any]:
        band = self._band()
        item_id = self.query_one("#item", Select).value
        item = next(
            (
                entry
                for entry in self.overview().get("items") or []
                if entry.get("id") == item_id
            ),
            None,
        )
        if item is None:
            raise ValueError("item is missing: choose one of the catalogue")

        quantity = parse_whole(
            "quantity",
            self.query_one("#quantity", Input).value.strip(),
            minimum=1,
            maximum=MAX_CHARGE_QUANTITY,
        )
        amount_text = self.query_one("#amount", Input).value.strip()
        price = item.get("price")
        if isinstance(price, int):
            amount = price * quantity
        elif amount_text:
            amount = parse_money(
                "amount", amount_text, self.minor_units(), minimum=1, maximum=MAX_AMOUNT
            )
        else:
            raise ValueError(f"item {item_id} has no price: type the amount")

        site = self.overview().get("site") or {}
        request: dict[str, Any] = {
            "band": band,
            "item": str(item_id),
            "quantity": quantity,
            "amount": amount,
            "currency": site.get("currency"),
        }
        # The creator field takes a creator code, as a terminal would send it.
        creator = self.query_one("#creator", Select).value
        if creator is not Select.NULL:
            request["creator"] = str(creator)
        promo = self.query_one("#promo", Input).value.strip()
        if promo:
            request["promo_code"] = promo
        return request

    def action_charge(self) -> None:
        try:
            request = self._charge_request()
        except ValueError as err:
            self.show_error(str(err))
            return
        self.start_action(self._send_charge(request))

    async def _send_charge(self, request: dict[str, Any]) -> None:
        reply = await self.send("wallet", "charge", request, admin=True, mutating=True)
        if reply is None:
            return
        self._last_transaction = str(reply.get("transaction_id"))
        self._show_receipt("CHARGE", reply)
        self.show_ok(
            f"charged {self.money(reply.get('amount'))} to {reply.get('band')}"
        )

    def action_refund(self) -> None:
        transaction = self.query_one("#refund-tx", Input).value.strip()
        transaction = transaction or self._last_transaction or ""
        if not transaction:
            self.show_error("no transaction to refund: charge first or type its id")
            return
        request: dict[str, Any] = {"transaction_id": transaction}
        amount_text = self.query_one("#refund-amt", Input).value.strip()
        if amount_text:
            try:
                request["amount"] = parse_money(
                    "refund amount",
                    amount_text,
                    self.minor_units(),
                    minimum=1,
                    maximum=MAX_AMOUNT,
                )
            except ValueError as err:
                self.show_error(str(err))
                return
        self.start_action(self._send_refund(request))

    async def _send_refund(self, request: dict[str, Any]) -> None:
        reply = await self.send("wallet", "refund", request, admin=True, mutating=True)
        if reply is None:
            return
        self._show_receipt("REFUND", reply)
        self.show_ok(
            f"refunded {self.money(reply.get('amount'))} to {reply.get('band')}"
        )

    def action_balance(self) -> None:
        try:
            band = self._band()
        except ValueError as err:
            self.show_error(str(err))
            return
        self.run_latest(partial(self._send_balance, band), "balance")

    async def _send_balance(self, band: str) -> None:
        reply = await self.send("wallet", "balance", {"band": band}, admin=True)
        if reply is None:
            return
        self.show_ok(
            f"band {band}: balance {self.money(reply.get('balance'))}, "
            f"spent tonight {self.money(reply.get('spent_tonight'))}"
        )

    def refusal_note(self, err: RequestError) -> str | None:
        # The box sends money in minor units ("has 0 and the charge is
        # 5400"); the note repeats the figures as money.
        figures = [
            f"{words} {self.money(err.details[key])}"
            for key, words in _REFUSAL_FIGURES
            if type(err.details.get(key)) is int
        ]
        return ", ".join(figures) or None

    def _show_receipt(self, kind: str, reply: dict[str, Any]) -> None:
        discount = reply.get("discount") or 0
        lines = [
            f"{kind}  transaction {reply.get('transaction_id')}",
            f"band {reply.get('band')}  item {reply.get('item') or '--'}"
            f" x {reply.get('quantity') or '--'}",
        ]
        if kind == "CHARGE":
            lines.append(
                f"list {self.money(reply.get('list_amount'))}  "
                f"discount {self.money(discount)}"
            )
        else:
            lines.append(f"refund of {reply.get('refers_to') or '--'}")
        lines.append(f"amount {self.money(reply.get('amount'))}")
        lines.append(f"balance {self.money(reply.get('balance'))}")
        lines.append(f"box time {self.time_text(self.box_now())}")
        self.query_one("#receipt", Static).update(Text("\n".join(lines)))


def _keep_order(table: DataTable[Any], rows: list[_Row]) -> list[_Row]:
    """Order ``rows`` as ``table`` shows them now, with new bands after them.

    While the person moves the cursor over the list, a band keeps its row
    even when its RSSI changes, so the row aimed at stays put. Bands no
    longer heard leave the list.
    """
    shown = {str(key.value): index for index, key in enumerate(table.rows)}
    return sorted(rows, key=lambda row: shown.get(row[0], len(shown)))


def _input(widget_id: str, placeholder: str, value: str = "") -> Input:
    return Input(value=value, placeholder=placeholder, compact=True, id=widget_id)


def _row(label: str, widget: Input | Select[str]) -> ComposeResult:
    with Horizontal():
        yield Label(label)
        yield widget
