"""Step 6: the band formats of the site's wristbands, typed or generated."""

from __future__ import annotations

import secrets
import uuid
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Button, Input, Static

from tui.setup._step import StepScreen, form_field


def new_ibeacon_uuid() -> str:
    """Return a random (version 4) iBeacon proximity UUID, written with dashes."""
    return str(uuid.uuid4())


def new_eddystone_namespace() -> str:
    """Return a random Eddystone-UID namespace: 20 hex digits."""
    return secrets.token_hex(10)


class BandsStep(StepScreen):
    """Step 6: iBeacon UUID, AltBeacon id prefix and Eddystone namespace."""

    step = "bands"
    BINDINGS: ClassVar[list[BindingType]] = [
        *StepScreen.BINDINGS,
        Binding("ctrl+g", "generate", "Generate"),
    ]

    def compose_fields(self) -> ComposeResult:
        values = self.setup.values
        yield Static(
            Text(
                "The wristbands must be programmed with these values; give at "
                "least one."
            ),
            classes="hint",
        )
        yield Static(
            Text("Ctrl+G generates a new UUID and namespace for a new batch of bands."),
            classes="hint",
        )
        yield Button("Generate", id="generate", compact=True)
        yield form_field(
            "ibeacon-uuid",
            "iBeacon proximity UUID (bands.ibeacon_uuid)",
            _input("ibeacon-uuid", values.ibeacon_uuid),
            "16 bytes: 32 hex digits, dashes allowed. A band sending major M "
            "and minor N is band ib-M-N.",
        )
        yield form_field(
            "altbeacon-prefix",
            "AltBeacon id prefix (bands.altbeacon_prefix)",
            _input("altbeacon-prefix", values.altbeacon_prefix),
            "The first 16 bytes of the 20-byte AltBeacon id; the last 4 name the band.",
        )
        yield form_field(
            "eddystone-namespace",
            "Eddystone-UID namespace (bands.eddystone_namespace)",
            _input("eddystone-namespace", values.eddystone_namespace),
            "10 bytes: 20 hex digits. The 6-byte instance names the band.",
        )

    def store(self) -> None:
        values = self.setup.values
        values.ibeacon_uuid = self.query_one("#ibeacon-uuid", Input).value
        values.altbeacon_prefix = self.query_one("#altbeacon-prefix", Input).value
        values.eddystone_namespace = self.query_one("#eddystone-namespace", Input).value

    def action_generate(self) -> None:
        """Fill a new random iBeacon UUID and Eddystone namespace."""
        self.query_one("#ibeacon-uuid", Input).value = new_ibeacon_uuid()
        self.query_one("#eddystone-namespace", Input).value = new_eddystone_namespace()
        self.store()
        self.show_error("ibeacon-uuid", "")
        self.show_error("eddystone-namespace", "")

    @on(Button.Pressed, "#generate")
    def _generate_pressed(self) -> None:
        self.action_generate()


def _input(field_id: str, value: str) -> Input:
    return Input(value, id=field_id, compact=True)
