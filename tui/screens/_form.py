"""A modal form for the operations screens: labelled inputs, checked before it closes.

The form shows one row per :class:`Field` and, on F2 or Enter, passes the
entered values to its ``build`` function. ``build`` returns the request data
or raises ValueError with a message naming the field and the fix; the form
then stays open and shows the message, so a typo never reaches the box.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, SelectionList, Static

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


@dataclass(frozen=True)
class Field:
    """One row of a form: an Input, a Select (``options``) or a SelectionList."""

    name: str
    label: str
    placeholder: str = ""
    value: str = ""
    # (label, value) pairs for a Select; with ``multiple`` a SelectionList.
    options: Sequence[tuple[str, str]] | None = None
    multiple: bool = False


Builder = Callable[[dict[str, Any]], dict[str, Any]]


class FormModal(ModalScreen[dict[str, Any] | None]):
    """A titled form that returns the request data built from its fields, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("f2", "submit", "Submit"),
    ]
    DEFAULT_CSS = """
    FormModal { align: center middle; }
    FormModal > VerticalScroll {
        width: 72; max-width: 100%; height: auto; max-height: 100%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    FormModal .title { text-style: bold; }
    FormModal Horizontal { height: auto; }
    FormModal Label { width: 14; padding: 0 1 0 0; }
    FormModal Input, FormModal Select { width: 1fr; }
    FormModal SelectionList { width: 1fr; height: auto; max-height: 8; }
    FormModal #form-error { color: $error; text-style: bold; height: auto; }
    """

    def __init__(
        self, title: str, fields: Sequence[Field], submit_label: str, build: Builder
    ) -> None:
        super().__init__()
        self._title = title
        self._fields = tuple(fields)
        self._submit_label = submit_label
        self._build = build

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._title, classes="title")
            for field in self._fields:
                with Horizontal():
                    yield Label(field.label)
                    yield _field_widget(field)
            yield Static("", id="form-error")
            with Horizontal():
                yield Button(
                    f"{self._submit_label} (F2)", variant="primary", id="submit"
                )
                yield Button("Cancel (Esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        try:
            request = self._build(self.values())
        except ValueError as err:
            self.query_one("#form-error", Static).update(str(err))
            return
        self.dismiss(request)

    def values(self) -> dict[str, Any]:
        """The fields' current values: stripped text, or a list for a SelectionList."""
        values: dict[str, Any] = {}
        for field in self._fields:
            widget = self.query_one(f"#field-{field.name}")
            if isinstance(widget, Input):
                values[field.name] = widget.value.strip()
            elif isinstance(widget, SelectionList):
                values[field.name] = [str(value) for value in widget.selected]
            elif isinstance(widget, Select):
                chosen = widget.value
                values[field.name] = "" if chosen is Select.NULL else str(chosen)
        return values


def _field_widget(field: Field) -> Input | Select[str] | SelectionList[str]:
    widget_id = f"field-{field.name}"
    if field.options is not None and field.multiple:
        return SelectionList[str](
            *((label, value, False) for label, value in field.options), id=widget_id
        )
    if field.options is not None:
        values = [value for _, value in field.options]
        return Select[str](
            list(field.options),
            value=field.value if field.value in values else Select.NULL,
            id=widget_id,
            prompt=field.placeholder or "choose",
            compact=True,
        )
    return Input(
        value=field.value, placeholder=field.placeholder, id=widget_id, compact=True
    )


# Parsers shared by the forms; each raises ValueError naming the field.


def parse_whole(name: str, text: str, *, minimum: int = 0) -> int:
    """Return ``text`` as a whole number of at least ``minimum``."""
    if not text.isdigit() or int(text) < minimum:
        raise ValueError(
            f"{name} {text!r} is invalid: give a whole number >= {minimum}"
        )
    return int(text)


def parse_money(name: str, text: str, minor_units: int) -> int:
    """Return a money amount typed in major units (``4.50``) as minor units (450)."""
    pattern = rf"^\d+(?:\.\d{{1,{minor_units}}})?$" if minor_units else r"^\d+$"
    if not re.match(pattern, text):
        example = "4.50" if minor_units == 2 else "450"
        raise ValueError(f"{name} {text!r} is invalid: give an amount like {example}")
    whole, _, fraction = text.partition(".")
    return int(whole) * 10**minor_units + int(fraction.ljust(minor_units, "0") or 0)


def parse_duration_s(name: str, text: str) -> int:
    """Return a duration like ``8h``, ``90m``, ``1h30m`` or ``45s`` in seconds."""
    match = _DURATION.match(text.replace(" ", ""))
    if not text or match is None:
        raise ValueError(f"{name} {text!r} is invalid: give a duration like 8h or 90m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"{name} {text!r} is invalid: give a duration above 0 s")
    return total


def parse_box_time(name: str, text: str, box_now: float) -> float:
    """Return ``now``, ``+90m`` (from the box's time) or an ISO 8601 time as Unix s."""
    if text == "now":
        return round(box_now, 3)
    if text.startswith("+"):
        return round(box_now + parse_duration_s(name, text[1:]), 3)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"{name} {text!r} is invalid: give now, +90m, or a time with its "
            "offset like 2026-05-28T23:00+02:00"
        )
    return moment.timestamp()
