"""The PIN modal: unlocks the admin session with the console PIN.

The box checks the PIN and counts wrong ones; the modal only shows what the
box replies: ``wrong PIN, N attempts left``, ``locked for N s`` after too
many, or why it could not ask (offline, no PIN set). The PIN never leaves
this screen except in the unlock request, and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from appliance.errors import RequestError

if TYPE_CHECKING:
    from tui.session import AdminSession

_LOGGER = logging.getLogger(__name__)

_MAX_PIN_DIGITS = 12


def refusal_text(err: RequestError) -> str:
    """Return what the modal shows for the box's refusal of an unlock."""
    if err.code == "wrong-pin":
        left = err.details.get("attempts_left")
        if isinstance(left, int):
            noun = "attempt" if left == 1 else "attempts"
            return f"wrong PIN, {left} {noun} left"
        return "wrong PIN"
    if err.code == "locked-out":
        retry = err.details.get("retry_after_s")
        if isinstance(retry, int | float):
            return f"locked for {max(1, round(retry))} s after too many wrong PINs"
        return "locked after too many wrong PINs"
    if err.code == "no-pin":
        return (
            "no PIN is set on this box; run 'nightbox console set-pin' "
            "or the setup wizard on the box"
        )
    return f"unlock failed: {err.message}"


class PinScreen(ModalScreen[None]):
    """A modal that reads the admin PIN and sends it to the box."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]

    DEFAULT_CSS = """
    PinScreen { align: center middle; }
    PinScreen > VerticalScroll {
        width: 44; max-width: 100%; height: auto; max-height: 100%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    PinScreen #pin-title { text-style: bold; }
    PinScreen #pin-message { height: auto; color: $error; }
    PinScreen #pin-message.-busy { color: $text-muted; }
    """

    def __init__(
        self, session: AdminSession, result: asyncio.Future[str | None]
    ) -> None:
        super().__init__()
        self._session = session
        self._result = result

    def compose(self) -> ComposeResult:
        # The field comes right after the title, so a small terminal that
        # cuts the modal still shows it; the rest scrolls.
        with VerticalScroll():
            yield Static("Admin PIN", id="pin-title")
            yield Input(
                password=True,
                restrict=r"[0-9]*",
                max_length=_MAX_PIN_DIGITS,
                placeholder="PIN",
                id="pin-input",
            )
            yield Static("", id="pin-message")
            yield Static("Type the console PIN (digits only), Enter. Esc cancels.")

    def on_mount(self) -> None:
        self.query_one("#pin-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        pin = event.value
        event.input.value = ""
        if not pin:
            self._show("type the PIN's digits first")
            return
        self._show("checking...", busy=True)
        event.input.disabled = True
        self.run_worker(self._unlock(pin), group="unlock", exclusive=True)

    async def _unlock(self, pin: str) -> None:
        pin_input = self.query_one("#pin-input", Input)
        try:
            token = await self._session.unlock(pin)
        except RequestError as err:
            self._show(refusal_text(err))
        except Exception as err:
            # A fault in the session must leave the modal usable, not crash
            # the console.
            _LOGGER.exception("Unlocking the console failed")
            self._show(f"unlock failed: {err}")
        else:
            self._finish(token)
            return
        pin_input.disabled = False
        pin_input.focus()

    def action_cancel(self) -> None:
        self._finish(None)

    def _finish(self, token: str | None) -> None:
        if not self._result.done():
            self._result.set_result(token)
        self.dismiss()

    def on_unmount(self) -> None:
        # Closed another way (the app quitting): callers must not wait forever.
        if not self._result.done():
            self._result.set_result(None)

    def _show(self, text: str, *, busy: bool = False) -> None:
        message = self.query_one("#pin-message", Static)
        message.set_class(busy, "-busy")
        message.update(Text(text))
