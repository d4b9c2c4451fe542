"""Step 2: the box's interfaces, and joining a Wi-Fi network or skipping it.

Backend calls block (nmcli can take seconds), so they run in worker threads.
The password lives only in its masked input and is cleared after each try.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from hardware.network import NetworkError, NetworkInterface, WifiNetwork
from tui.setup._step import StepScreen, form_field

if TYPE_CHECKING:
    from tui.setup._app import SetupApp


def describe_interface(interface: NetworkInterface) -> str:
    """Return one line about ``interface``: name, kind, state and addresses."""
    addresses = ", ".join(interface.addresses) or "no address"
    joined = f" to {interface.connection}" if interface.connection else ""
    return (
        f"{interface.name} ({interface.kind}): {interface.state}{joined}, {addresses}"
    )


class NetworkStep(StepScreen):
    """Shows interfaces and Wi-Fi networks; Enter on a network, then its password."""

    step = "network"
    BINDINGS: ClassVar[list[BindingType]] = [
        *StepScreen.BINDINGS,
        Binding("ctrl+r", "scan", "Scan again"),
    ]

    def __init__(self, setup: SetupApp) -> None:
        super().__init__(setup)
        self._networks: list[WifiNetwork] = []
        self._chosen: WifiNetwork | None = None

    def compose_fields(self) -> ComposeResult:
        backend = self.setup.network
        yield Static(Text(f"Network backend: {backend.name}"), classes="hint")
        yield Label("Interfaces", classes="field-label")
        yield Static(Text("listing..."), id="interfaces")
        yield Label("Wi-Fi networks (Enter picks one)", classes="field-label")
        yield OptionList(id="wifi-list", compact=True)
        yield form_field(
            "wifi-password",
            "Password of the chosen network",
            Input(password=True, id="wifi-password", compact=True),
            "Enter joins. The password is never saved.",
        )
        yield Button("Join", id="join", compact=True)
        yield Static(Text(self._joined_text()), id="network-status")
        yield Static(
            Text("Next without joining: the box runs its own network."),
            classes="hint",
        )

    def _joined_text(self) -> str:
        ssid = self.setup.values.wifi_ssid
        return f"Joined {ssid!r}." if ssid else "Not joined to a Wi-Fi network."

    def on_mount(self) -> None:
        self.action_scan()

    def action_scan(self) -> None:
        self._status("Scanning...")
        self._scan()

    @work(exclusive=True, group="network")
    async def _scan(self) -> None:
        backend = self.setup.network
        try:
            interfaces = await asyncio.to_thread(backend.interfaces)
            networks = await asyncio.to_thread(backend.scan_wifi)
        except NetworkError as err:
            self._status(f"Network listing failed: {err}", error=True)
            return
        self._show_interfaces(interfaces)
        self._networks = networks
        wifi_list = self.query_one("#wifi-list", OptionList)
        wifi_list.clear_options()
        for index, network in enumerate(networks):
            wifi_list.add_option(
                Option(Text(_network_line(network)), id=f"wifi-{index}")
            )
        # Highlighted, the first network is picked by Enter as soon as the
        # list has the focus; without it Enter does nothing until an arrow key.
        wifi_list.highlighted = 0 if networks else None
        self._status(self._joined_text() + f" {len(networks)} Wi-Fi networks in range.")

    def _show_interfaces(self, interfaces: list[NetworkInterface]) -> None:
        text = "\n".join(describe_interface(i) for i in interfaces) or "none found"
        self.query_one("#interfaces", Static).update(Text(text))

    @on(OptionList.OptionSelected, "#wifi-list")
    def _network_chosen(self, event: OptionList.OptionSelected) -> None:
        self._chosen = self._networks[event.option_index]
        password = self.query_one("#wifi-password", Input)
        if self._chosen.needs_password:
            self._status(f"Type the password of {self._chosen.ssid!r}, then Enter.")
            password.focus()
        else:
            self._status(f"{self._chosen.ssid!r} is open; joining.")
            self._join(self._chosen, None)

    def field_submitted(self, field: Input) -> bool:
        if field.id != "wifi-password":
            return False
        self._join_chosen()
        return True

    @on(Button.Pressed, "#join")
    def _join_pressed(self) -> None:
        self._join_chosen()

    def _join_chosen(self) -> None:
        if self._chosen is None:
            self.show_error("wifi-password", "pick a network in the list first")
            return
        password = self.query_one("#wifi-password", Input)
        if self._chosen.needs_password and not password.value:
            self.show_error(
                "wifi-password", f"{self._chosen.ssid!r} needs a password; type it"
            )
            return
        self._join(self._chosen, password.value or None)

    def _join(self, network: WifiNetwork, password: str | None) -> None:
        self.show_error("wifi-password", "")
        self._status(f"Joining {network.ssid!r}...")
        self._connect(network, password)

    @work(exclusive=True, group="network")
    async def _connect(self, network: WifiNetwork, password: str | None) -> None:
        backend = self.setup.network
        try:
            interface = await asyncio.to_thread(
                backend.connect_wifi, network.ssid, password
            )
        except NetworkError as err:
            self.query_one("#wifi-password", Input).clear()
            self.show_error("wifi-password", str(err))
            self._status(f"Not joined to {network.ssid!r}.", error=True)
            return
        self.query_one("#wifi-password", Input).clear()
        self.setup.values.wifi_ssid = network.ssid
        self._status(f"Joined {network.ssid!r}: {describe_interface(interface)}")
        self._scan()

    def _status(self, message: str, *, error: bool = False) -> None:
        status = self.query_one("#network-status", Static)
        status.update(Text(message))
        status.set_class(error, "-failed")


def _network_line(network: WifiNetwork) -> str:
    security = network.security or "open"
    in_use = " (joined)" if network.in_use else ""
    return f"{network.ssid}  {network.signal}%  {security}{in_use}"
