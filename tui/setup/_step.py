"""The frame every step shares: title, fields with their errors, buttons, bindings."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Input, Label, Static, TextArea

from tui.setup._checks import GENERAL, STEP_FIELDS, check_field, check_step
from tui.setup._progress import STEP_TITLES, STEPS

if TYPE_CHECKING:
    from tui.setup._app import SetupApp


def form_field(field_id: str, label: str, widget: Widget, hint: str = "") -> Vertical:
    """Return a field: its label, the input ``widget``, a hint and its error line."""
    parts: list[Widget] = [Label(label, classes="field-label"), widget]
    if hint:
        parts.append(Static(Text(hint), classes="hint"))
    parts.append(Static("", id=f"{field_id}-error", classes="error"))
    return Vertical(*parts, classes="field")


class StepScreen(Screen[None]):
    """One step of the wizard; subclasses add fields and read them back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Next"),
        Binding("escape", "back", "Back"),
    ]
    AUTO_FOCUS: ClassVar[str | None] = "Input, TextArea, Switch, OptionList"
    step: ClassVar[str]
    next_label: ClassVar[str] = "Next"

    def __init__(self, setup: SetupApp) -> None:
        super().__init__()
        self.setup = setup

    def compose(self) -> ComposeResult:
        number = STEPS.index(self.step) + 1
        title = (
            f"Nightbox setup, step {number} of {len(STEPS)}: {STEP_TITLES[self.step]}"
        )
        yield Static(Text(title), id="step-title")
        with VerticalScroll(id="step-body", can_focus=False):
            yield from self.compose_fields()
            yield Static("", id=f"{GENERAL}-error", classes="error")
        with Horizontal(id="step-buttons"):
            yield Button("Back", id="back", compact=True)
            yield Button(self.next_label, id="next", variant="primary", compact=True)
            yield Button("Quit", id="quit", compact=True)
        yield Footer()

    def compose_fields(self) -> ComposeResult:
        """Yield the step's fields."""
        yield from ()

    def store(self) -> None:
        """Copy what the widgets show into the app's values."""

    def field_submitted(self, field: Input) -> bool:
        """Handle Enter in ``field`` in a step's own way; False moves on as usual."""
        return False

    def field_ids(self) -> list[str]:
        return [node.id[: -len("-error")] for node in self.query(".error") if node.id]

    def action_next(self) -> None:
        self.store()
        errors = check_step(
            self.step, self.setup.values, self.setup.config_path, self.setup.secrets
        )
        self.show_errors(errors)
        if errors:
            self._focus_first_error(errors)
            return
        self.setup.finish_step(self.step)

    def action_back(self) -> None:
        self.store()
        self.setup.go_back(self.step)

    def show_errors(self, errors: dict[str, str]) -> None:
        """Show each message under its field and clear the others."""
        for field in self.field_ids():
            self.show_error(field, errors.get(field, ""))
        unplaced = [
            message
            for field, message in errors.items()
            if field not in self.field_ids()
        ]
        if unplaced:
            self.show_error(GENERAL, "\n".join(unplaced))

    def show_error(self, field: str, message: str) -> None:
        widget = self.query_one(f"#{field}-error", Static)
        widget.update(Text(message))
        widget.set_class(bool(message), "-shown")

    def _focus_first_error(self, errors: dict[str, str]) -> None:
        for field in self.field_ids():
            if field in errors:
                targets = self.query(f"#{field}")
                if targets:
                    targets.first().focus()
                    targets.first().scroll_visible()
                else:
                    self.query_one(f"#{field}-error").scroll_visible()
                return

    @on(events.ScreenResume)
    def _start_at_top(self) -> None:
        # Focusing the first field scrolls it into view; the step's heading
        # and hints above it should show first.
        body = self.query_one("#step-body", VerticalScroll)
        self.call_after_refresh(body.scroll_home, animate=False)

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.action_back()

    @on(Button.Pressed, "#next")
    def _next_pressed(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#quit")
    def _quit_pressed(self) -> None:
        self.setup.action_quit_setup()

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        self._check_live(event.input)

    @on(TextArea.Changed)
    def _text_changed(self, event: TextArea.Changed) -> None:
        self._check_live(event.text_area)

    def _check_live(self, widget: Widget) -> None:
        """Check a field as it is typed in; an empty field waits for Next."""
        field = widget.id
        checked = field is not None and (
            field in STEP_FIELDS[self.step] or field.startswith("stock-")
        )
        if field is None or not checked or field == "pin-again":
            return
        self.store()
        text = (
            widget.value if isinstance(widget, Input) else getattr(widget, "text", "")
        )
        if not str(text).strip():
            self.show_error(field, "")
            return
        self.show_error(field, self._field_message(field))
        # A change here can fix another field's error (a zone added for an
        # exit reader); a shown error that no longer holds is cleared.
        for other in self.field_ids():
            if (
                other not in (field, GENERAL)
                and self._error_shown(other)
                and not self._field_message(other)
            ):
                self.show_error(other, "")

    def _field_message(self, field: str) -> str:
        return check_field(
            self.step,
            field,
            self.setup.values,
            self.setup.config_path,
            self.setup.secrets,
        )

    def _error_shown(self, field: str) -> bool:
        return self.query_one(f"#{field}-error", Static).has_class("-shown")

    @on(Input.Submitted)
    def _input_submitted(self, event: Input.Submitted) -> None:
        """Enter moves to the next field, and from the last field to the next step."""
        event.stop()
        if self.field_submitted(event.input):
            return
        inputs = [node for node in self.query(Input) if node.can_focus]
        if inputs and event.input is inputs[-1]:
            self.action_next()
        else:
            self.focus_next()
