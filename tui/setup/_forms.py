"""The form steps: site, time, admin PIN, zones and exits, kit stock, wallet."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.widgets import Input, Static, Switch, TextArea

from tui.setup._checks import kit_station_ids
from tui.setup._clock import ntp_synchronised
from tui.setup._step import StepScreen, form_field


def _input(
    field_id: str, value: str, placeholder: str = "", *, password: bool = False
) -> Input:
    return Input(
        value, placeholder=placeholder, id=field_id, compact=True, password=password
    )


class SiteStep(StepScreen):
    """Step 1: the site's identity, time zone and night rollover, and the box."""

    step = "site"

    def compose_fields(self) -> ComposeResult:
        values = self.setup.values
        folder = self.setup.config_path.parent
        yield Static(Text(f"Site file: {self.setup.config_path}"), classes="hint")
        yield form_field(
            "site-id",
            "Site id (site.id)",
            _input("site-id", values.site_id, "summer-club"),
            "Names the site on the bus: lowercase letters, digits and '-'.",
        )
        yield form_field(
            "site-name",
            "Site name (site.name)",
            _input("site-name", values.site_name, "Summer Club"),
        )
        yield form_field(
            "timezone",
            "Time zone (site.timezone)",
            _input("timezone", values.timezone, "Europe/Berlin"),
            "An IANA time zone name, such as Europe/Berlin or UTC.",
        )
        yield form_field(
            "rollover-hour",
            "Night rollover hour (site.night_rollover_hour)",
            _input("rollover-hour", values.rollover_hour, "12"),
            "A night runs from this hour (0-23) to the same hour the next day.",
        )
        yield form_field(
            "box-id",
            "Box id (box.id), optional",
            _input("box-id", values.box_id, values.generated_box_id),
            f"Leave empty to use the generated id {values.generated_box_id}.",
        )
        yield form_field(
            "data-dir",
            "Data folder (box.data_dir)",
            _input("data-dir", values.data_dir),
            f"Relative to {folder}; the database and the box's secrets go here.",
        )

    def store(self) -> None:
        values = self.setup.values
        values.site_id = self.query_one("#site-id", Input).value
        values.site_name = self.query_one("#site-name", Input).value
        values.timezone = self.query_one("#timezone", Input).value
        values.rollover_hour = self.query_one("#rollover-hour", Input).value
        values.box_id = self.query_one("#box-id", Input).value
        values.data_dir = self.query_one("#data-dir", Input).value


class TimeStep(StepScreen):
    """Step 3: the box's time, NTP synchronisation and whether to trust the clock."""

    step = "time"

    def compose_fields(self) -> ComposeResult:
        yield Static("", id="box-time")
        yield Static(Text("NTP synchronised: checking"), id="ntp-state")
        yield form_field(
            "clock-trusted",
            "Trust this clock (box.clock_trusted)",
            Switch(self.setup.values.clock_trusted, id="clock-trusted"),
            "A Raspberry Pi has no battery-backed clock, so trust it only when "
            "NTP or an added real-time clock keeps it right after a power cut.",
        )

    def on_mount(self) -> None:
        self._show_time()
        self.set_interval(1.0, self._show_time)
        self._check_ntp()

    def _show_time(self) -> None:
        name = self.setup.values.timezone.strip() or "UTC"
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            name, zone = "UTC", zoneinfo.ZoneInfo("UTC")
        now = dt.datetime.now(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
        self.query_one("#box-time", Static).update(Text(f"Box time in {name}: {now}"))

    @work(thread=True, exclusive=True)
    def _check_ntp(self) -> None:
        state = ntp_synchronised()
        self.app.call_from_thread(
            self.query_one("#ntp-state", Static).update,
            Text(f"NTP synchronised: {state}"),
        )

    def store(self) -> None:
        self.setup.values.clock_trusted = self.query_one("#clock-trusted", Switch).value


class PinStep(StepScreen):
    """Step 4: the admin PIN, typed twice and masked; it stays in memory only."""

    step = "pin"

    def compose_fields(self) -> ComposeResult:
        secrets = self.setup.secrets
        yield form_field(
            "pin",
            "Admin PIN",
            _input("pin", secrets.pin, "6 to 12 digits", password=True),
            "Unlocks the admin actions of the terminal UI. It is never saved "
            "with the progress, so a resumed setup asks for it again.",
        )
        yield form_field(
            "pin-again",
            "Admin PIN again",
            _input("pin-again", secrets.pin_again, password=True),
        )

    def store(self) -> None:
        self.setup.set_pin(
            self.query_one("#pin", Input).value,
            self.query_one("#pin-again", Input).value,
        )


def _text_area(field_id: str, text: str) -> TextArea:
    return TextArea(text, id=field_id, compact=True, tab_behavior="focus")


class ReadersStep(StepScreen):
    """Step 5: zones, exit readers and kit stations."""

    step = "readers"

    def compose_fields(self) -> ComposeResult:
        values = self.setup.values
        yield form_field(
            "zones",
            "Zones",
            _input("zones", values.zones, "main-door, bar"),
            "Places that group readers, separated by commas.",
        )
        yield form_field(
            "exits",
            "Exit readers, one per line: id zone [threshold dBm]",
            _text_area("exits", values.exits),
            "Example: exit-1 main-door -66. Without a threshold the site's "
            "-66 dBm applies.",
        )
        yield form_field(
            "kit-stations",
            "Kit stations, one per line: id zone",
            _text_area("kit-stations", values.kit_stations),
            "Example: kit-1 bar",
        )

    def store(self) -> None:
        values = self.setup.values
        values.zones = self.query_one("#zones", Input).value
        values.exits = self.query_one("#exits", TextArea).text
        values.kit_stations = self.query_one("#kit-stations", TextArea).text


class KitsStep(StepScreen):
    """Step 7: kits in stock at each kit station and the low-stock warning level."""

    step = "kits"

    def compose_fields(self) -> ComposeResult:
        values = self.setup.values
        stations = kit_station_ids(values)
        if not stations:
            yield Static(Text("No kit station: only the warning level applies."))
        for station in stations:
            yield form_field(
                f"stock-{station}",
                f"Kits in stock at {station} (kit_stock)",
                _input(f"stock-{station}", values.kit_stock.get(station, ""), "150"),
            )
        yield form_field(
            "low-stock",
            "Low-stock warning level (kits.low_stock)",
            _input("low-stock", values.low_stock, "10"),
            "A station with this many kits left or fewer raises a warning.",
        )

    def store(self) -> None:
        values = self.setup.values
        values.kit_stock = {
            station: self.query_one(f"#stock-{station}", Input).value
            for station in kit_station_ids(values)
        }
        values.low_stock = self.query_one("#low-stock", Input).value


class WalletStep(StepScreen):
    """Step 8: the currency, the wallet's limits and a first catalogue and terminals.

    Amounts are typed in major units.
    """

    step = "wallet"

    def compose_fields(self) -> ComposeResult:
        values = self.setup.values
        yield form_field(
            "currency",
            "Currency (wallet.currency)",
            _input("currency", values.currency, "EUR"),
            "An ISO 4217 code of three capital letters.",
        )
        yield form_field(
            "max-charge",
            "Limit of one charge (wallet.max_charge)",
            _input("max-charge", values.max_charge, "200.00"),
            "In major units, such as 15.00; stored in minor units (cents).",
        )
        yield form_field(
            "night-limit",
            "Limit of a band's spending per night (wallet.night_spend_limit)",
            _input("night-limit", values.night_limit, "1000.00"),
        )
        yield form_field(
            "items",
            "Catalogue ([[items]]), one per line: id name [price]",
            _text_area("items", values.items),
            "Example: beer Craft Beer 4.50. Without a price the terminal types "
            "the amount. Optional; more items can be added to the site file.",
        )
        yield form_field(
            "terminals",
            "Sales terminals ([[terminals]]), optional",
            _input("terminals", values.terminals, "bar-1, merch-1"),
            "Ids separated by commas. The desk and this console always exist.",
        )

    def store(self) -> None:
        values = self.setup.values
        values.currency = self.query_one("#currency", Input).value
        values.max_charge = self.query_one("#max-charge", Input).value
        values.night_limit = self.query_one("#night-limit", Input).value
        values.items = self.query_one("#items", TextArea).text
        values.terminals = self.query_one("#terminals", Input).value
