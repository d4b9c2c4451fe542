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
            yield Static("", id="form-error", markup=False)
            with Horizontal():
                yield Button(
                    f"{self._submit_label} (F2)", variant="primary", id="submit"
                )
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        # The first field takes the keys at once, so typing and Enter work
        # without a Tab first.
        if self._fields:
            self.query_one(f"#field-{self._fields[0].name}").focus()

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


# Parsers shared by the forms; each raises ValueError naming the field and the
# accepted range. Python's int() and the regex class \d also take the digits
# of other scripts, full-width ones among them, so only ASCII digits match.

_DIGITS = re.compile(r"[0-9]+")
_DURATION = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# Typed text is echoed in a message up to this many characters.
_ECHO_CHARS = 24
# The maximum offset that "+90m" adds to the box's time: a night and its set-up.
MAX_OFFSET_S = 7 * 24 * 3600


def echo(text: str) -> str:
    """Return ``text`` quoted for a message, cut to a screen-friendly length."""
    if len(text) > _ECHO_CHARS:
        text = text[: _ECHO_CHARS - 1] + "\u2026"
    return repr(text)


def parse_whole(name: str, text: str, *, minimum: int, maximum: int) -> int:
    """Return ``text`` as a whole number from ``minimum`` to ``maximum``."""
    # A digit string longer than the maximum's is above it; checking the
    # length first also keeps int() away from strings of thousands of digits.
    if (
        not _DIGITS.fullmatch(text)
        or len(text.lstrip("0")) > len(str(maximum))
        or not minimum <= int(text) <= maximum
    ):
        raise ValueError(
            f"{name} {echo(text)} is invalid: give a whole number from "
            f"{minimum:,} to {maximum:,}"
        )
    return int(text)


def parse_money(
    name: str, text: str, minor_units: int, *, minimum: int = 0, maximum: int
) -> int:
    """Return a money amount typed in major units (``4.50``) as minor units (450).

    ``minimum`` and ``maximum`` are in minor units.
    """
    pattern = rf"[0-9]+(?:\.[0-9]{{1,{minor_units}}})?" if minor_units else r"[0-9]+"
    whole, _, fraction = text.partition(".")
    too_long = len(whole.lstrip("0")) > len(str(maximum))
    if not re.fullmatch(pattern, text) or too_long:
        amount = None
    else:
        amount = int(whole) * 10**minor_units + int(fraction.ljust(minor_units, "0"))
    if amount is None or not minimum <= amount <= maximum:
        raise ValueError(
            f"{name} {echo(text)} is invalid: give an amount from "
            f"{major_text(minimum, minor_units)} to {major_text(maximum, minor_units)}"
        )
    return amount


def major_text(amount: int, minor_units: int) -> str:
    """Format ``amount`` minor units in major units with separators: ``1,234.50``."""
    if not minor_units:
        return f"{amount:,}"
    whole, fraction = divmod(amount, 10**minor_units)
    return f"{whole:,}.{fraction:0{minor_units}d}"


def parse_duration_s(name: str, text: str, *, maximum: int) -> int:
    """Return a duration like ``8h``, ``90m``, ``1h30m`` or ``45s`` in seconds.

    The duration must be from 1 s to ``maximum`` seconds.
    """
    match = _DURATION.fullmatch(text.replace(" ", ""))
    limit = duration_text(maximum)
    if not text or match is None:
        raise ValueError(
            f"{name} {echo(text)} is invalid: give a duration like 8h or 90m, "
            f"up to {limit}"
        )
    parts = [part or "0" for part in match.groups()]
    # Each part is at most the maximum in seconds, so a longer digit string
    # is out of range before int() sees it.
    if any(len(part.lstrip("0")) > len(str(maximum)) for part in parts):
        total = maximum + 1
    else:
        hours, minutes, seconds = (int(part) for part in parts)
        total = hours * 3600 + minutes * 60 + seconds
    if not 0 < total <= maximum:
        raise ValueError(
            f"{name} {echo(text)} is invalid: give a duration from 1s to {limit}"
        )
    return total


def duration_text(seconds: int) -> str:
    """Format whole seconds as the forms take them: ``24h``, ``90m``, ``1h30m``."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{value}{unit}" for value, unit in parts if value) or "0s"


def parse_box_time(name: str, text: str, box_now: float) -> float:
    """Return ``now``, ``+90m`` (from the box's time) or an ISO 8601 time as Unix s."""
    if text == "now":
        return round(box_now, 3)
    if text.startswith("+"):
        offset = parse_duration_s(name, text[1:], maximum=MAX_OFFSET_S)
        return round(box_now + offset, 3)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"{name} {echo(text)} is invalid: give now, +90m, or a time with its "
            "offset like 2026-05-28T23:00+02:00"
        )
    return moment.timestamp()
