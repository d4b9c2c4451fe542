"""The first-boot setup wizard, driven by keyboard at 80x24 through Textual's pilot.

Each test writes real files under tmp_path. The whole run ends with a real
box started from the written site file on a mosquitto that the test starts.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from pathlib import Path

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, TextArea

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, BusSettings
from appliance.config import SiteConfig, load_config
from appliance.console.pin import PinFile, pin_path
from appliance.runtime import Box, site_bands
from appliance.wristbands import BandMatch, Rejection
from hardware.network import SIMULATED_WIFI_PASSWORD, SimulatedNetwork
from provisioning.site_access import box_username
from tui.setup import SetupApp, progress_path
from tui.setup._bands_step import BandsStep
from tui.setup._forms import PinStep, SiteStep
from tui.setup._network_step import NetworkStep
from tui.setup._progress import SetupValues, save_progress

SIZE = (80, 24)
PIN = "739154"
IBEACON_UUID = "6e1f3a52-94c7-4d0b-8a26-d35f0c7e19b4"
NAMESPACE = "8b2e5c0f71a94d36e2c8"


async def fill(
    pilot: Pilot[bool], field: str, text: str, *, paste: bool = False
) -> None:
    """Focus ``field``, clear it and type or paste ``text``.

    Typing moves the focus with Tab like a person; pasting focuses the field
    directly, which keeps the many short cases of the error tests fast.
    """
    app = pilot.app
    if paste:
        widget = app.screen.query_one(f"#{field}")
        assert isinstance(widget, Input | TextArea)
        widget.focus()
        widget.clear()
        app.post_message(events.Paste(text))
        await pilot.pause()
        return
    for _ in range(40):
        if app.focused is not None and app.focused.id == field:
            break
        await pilot.press("tab")
    else:
        raise AssertionError(f"Tab never reached #{field} on {type(app.screen)}")
    if isinstance(app.focused, TextArea):
        await pilot.press("f7", "backspace")
    else:
        await pilot.press("end", "ctrl+u")
    await pilot.press(*["enter" if c == "\n" else c for c in text])


def error_text(pilot: Pilot[bool], field: str) -> str:
    """Return the message shown under ``field`` ("" when none is shown)."""
    widget = pilot.app.screen.query_one(f"#{field}-error")
    return str(widget.render()) if widget.has_class("-shown") else ""


def step_title(pilot: Pilot[bool]) -> str:
    return str(pilot.app.screen.query_one("#step-title").render())


async def next_step(pilot: Pilot[bool]) -> None:
    await pilot.press("ctrl+n")
    await pilot.pause()


async def fill_site(pilot: Pilot[bool]) -> None:
    await fill(pilot, "site-id", "club")
    await fill(pilot, "site-name", "Club")
    await fill(pilot, "timezone", "Europe/Berlin")
    await fill(pilot, "rollover-hour", "11")
    await next_step(pilot)


async def run_whole_setup(pilot: Pilot[bool]) -> None:
    """Fill every step with valid values and press Write."""
    await fill_site(pilot)
    assert "step 2 of 9" in step_title(pilot)
    await next_step(pilot)  # network: skipped, the box runs its own network
    assert "step 3 of 9" in step_title(pilot)
    await pilot.press("space")  # trust the clock
    await next_step(pilot)
    await fill(pilot, "pin", PIN)
    await fill(pilot, "pin-again", PIN)
    await next_step(pilot)
    await fill(pilot, "zones", "door, bar")
    await fill(pilot, "exits", "x1 door\nx2 door -64")
    await fill(pilot, "kit-stations", "k1 bar")
    await next_step(pilot)
    assert "step 6 of 9" in step_title(pilot)
    await pilot.press("ctrl+g")  # new iBeacon UUID and Eddystone namespace
    await next_step(pilot)
    assert "step 7 of 9" in step_title(pilot)
    await fill(pilot, "stock-k1", "150")
    await fill(pilot, "low-stock", "12")
    await next_step(pilot)
    await fill(pilot, "max-charge", "15.00")
    await fill(pilot, "night-limit", "250.50")
    await fill(pilot, "items", "beer Craft Beer 4.50\nmerch Merch")
    await fill(pilot, "terminals", "bar-1, merch-1")
    await next_step(pilot)
    assert "step 9 of 9" in step_title(pilot)
    summary = str(pilot.app.screen.query_one("#review-summary").render())
    assert "Kits in stock: k1 150; warning at 12 left" in summary
    assert "Catalogue: Craft Beer 4.50, Merch (price typed at the terminal)" in summary
    assert "Terminals: desk, console, bar-1, merch-1" in summary
    await next_step(pilot)  # Write


def ibeacon_advert(proximity_uuid: bytes, major: int, minor: int) -> bytes:
    """Return BLE advertising data: flags, then Apple's iBeacon manufacturer data."""
    manufacturer_data = (
        b"\x4c\x00"  # Apple's company id, little-endian
        + b"\x02\x15"  # iBeacon type, then the length of the fields after it
        + proximity_uuid
        + major.to_bytes(2, "big")
        + minor.to_bytes(2, "big")
        + (-59).to_bytes(1, "big", signed=True)  # measured power at 1 m, dBm
    )
    flags = bytes([2, 0x01, 0x06])
    return flags + bytes([len(manufacturer_data) + 1, 0xFF]) + manufacturer_data


@pytest.fixture
async def site_config(tmp_path: Path) -> SiteConfig:
    """The site a whole keyboard run of the wizard writes; replaces conftest's."""
    config_path = tmp_path / "venue" / "site.toml"
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await run_whole_setup(pilot)
    assert app.return_value is True, "the wizard did not finish"
    return load_config(config_path)


async def test_whole_setup_writes_site_that_box_runs(
    tmp_path: Path, site_config: SiteConfig, box: Box, mosquitto: BrokerHandle
) -> None:
    config_path = tmp_path / "venue" / "site.toml"
    assert not progress_path(config_path).exists()
    assert site_config.site_id == "club"
    assert site_config.site_name == "Club"
    assert site_config.commerce.timezone == "Europe/Berlin"
    assert site_config.commerce.night_rollover_hour == 11
    assert site_config.box_id.startswith("box-")
    assert len(site_config.box_id) == len("box-") + 6
    assert site_config.data_dir == (tmp_path / "venue" / "data").resolve()
    assert site_config.clock_trusted is True
    readers = {reader.id: reader for reader in site_config.readers}
    assert set(readers) == {"x1", "x2", "k1"}
    assert readers["x2"].threshold_dbm == -64
    assert readers["x1"].threshold_dbm is None
    assert readers["x1"].zone == "door"
    assert readers["k1"].role == "kit"
    assert readers["k1"].zone == "bar"
    assert readers["k1"].kit_stock == 150
    assert site_config.kit_low_stock == 12
    assert site_config.commerce.wallet.currency == "EUR"
    assert site_config.commerce.wallet.max_charge == 1500
    assert site_config.commerce.wallet.night_spend_limit == 25050
    assert site_config.ibeacon_uuid is not None
    assert len(site_config.ibeacon_uuid) == 16
    assert site_config.eddystone_namespace is not None
    assert len(site_config.eddystone_namespace) == 10
    assert site_config.altbeacon_prefix is None
    items = {item.id: item for item in site_config.commerce.items}
    assert set(items) == {"beer", "merch"}
    assert items["beer"].name == "Craft Beer"
    assert items["beer"].price == 450
    assert items["merch"].price is None
    assert site_config.commerce.terminals == ("bar-1", "merch-1")
    site_text = config_path.read_text()
    assert "\n[bands]\n" in site_text
    assert "# [[bands.registered]]" in site_text

    secrets = site_config.data_dir / "secrets"
    for name in ("broker.json", "edge-token-key.pem", "console.json"):
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o600, name
    assert PinFile(pin_path(site_config.data_dir)).verify(PIN)
    assert PIN not in (secrets / "console.json").read_text()
    written = json.loads((secrets / "broker.json").read_text())
    assert "terminal-console" in written
    assert box_username(site_config.box_id) in written

    assert box.config.site_id == "club"
    assert box.config.ibeacon_uuid == site_config.ibeacon_uuid
    bands = site_bands(box.config)
    heard = bands.identify(ibeacon_advert(site_config.ibeacon_uuid, 7, 42), time.time())
    assert isinstance(heard, BandMatch), heard
    assert heard.band_id == "ib-7-42"
    assert heard.format == "ibeacon"
    foreign = bands.identify(ibeacon_advert(uuid.uuid4().bytes, 7, 42), time.time())
    assert isinstance(foreign, Rejection)
    settings = BusSettings(
        mosquitto.host,
        mosquitto.port,
        "terminal-console",
        written["terminal-console"],
        "terminal",
        "console",
        site_config.site_id,
    )
    async with Bus(settings, announce=False) as console:
        await asyncio.wait_for(console.connected.wait(), timeout=10)
        assert console.connected.is_set()


def saved_progress(config_path: Path, *completed: str, **answers: object) -> None:
    """Write a progress file as a run that finished ``completed`` would leave it."""
    values = SetupValues(
        site_id="summer-club",
        site_name="Summer Club",
        timezone="Europe/Berlin",
        completed=list(completed),
    )
    for name, value in answers.items():
        setattr(values, name, value)
    save_progress(config_path, values)


async def expect_error(
    pilot: Pilot[bool], field: str, value: str, *expected: str
) -> None:
    """Type ``value`` into ``field``, press Next, and check the step stays put."""
    title = step_title(pilot)
    await fill(pilot, field, value, paste=True)
    await next_step(pilot)
    message = error_text(pilot, field)
    for part in expected:
        assert part in message, f"{field}={value!r}: {part!r} not in {message!r}"
    assert step_title(pilot) == title, f"{field}={value!r} did not block Next"


async def test_site_step_rejects_bad_values(tmp_path: Path) -> None:
    app = SetupApp(tmp_path / "site.toml", network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await next_step(pilot)
        assert "site.id = ''" in error_text(pilot, "site-id")
        assert "site name is empty" in error_text(pilot, "site-name")
        await fill(pilot, "site-name", "Summer Club", paste=True)
        await expect_error(pilot, "site-id", "Bad Site", "'Bad Site'", "lowercase")
        await fill(pilot, "site-id", "summer-club", paste=True)
        await expect_error(pilot, "timezone", "Mars/Base", "'Mars/Base'", "IANA")
        await fill(pilot, "timezone", "UTC", paste=True)
        await expect_error(pilot, "rollover-hour", "noon", "'noon'", "0 to 23")
        await expect_error(pilot, "rollover-hour", "25", "= 25", "maximum 23")
        await fill(pilot, "rollover-hour", "6", paste=True)
        await expect_error(pilot, "box-id", "Box!", "'Box!'", "lowercase")
        await fill(pilot, "box-id", "box-front", paste=True)
        (tmp_path / "taken").write_text("a file, not a folder")
        await expect_error(pilot, "data-dir", "taken", "'taken'", "not a directory")
        await fill(pilot, "data-dir", "data", paste=True)
        await next_step(pilot)
        assert "step 2 of 9" in step_title(pilot)
    assert app.values.box_id == "box-front"
    assert app.values.rollover_hour == "6"


async def test_site_field_checked_as_typed(tmp_path: Path) -> None:
    app = SetupApp(tmp_path / "site.toml", network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "site-id", "Summer")
        assert "'Summer' is invalid" in error_text(pilot, "site-id")
        await fill(pilot, "site-id", "summer")
        assert error_text(pilot, "site-id") == ""


async def test_pin_step_rejects_weak_and_differing_pins(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    saved_progress(config_path, "site", "network", "time")
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, PinStep)
        await fill(pilot, "pin-again", "123456", paste=True)
        await expect_error(pilot, "pin", "123456", "straight run")
        await expect_error(pilot, "pin", "12ab56", "digits 0-9")
        await expect_error(pilot, "pin", "7391", "4 digits", "6 to 12")
        await expect_error(pilot, "pin", "111111", "one digit repeated")
        await fill(pilot, "pin", PIN, paste=True)
        await expect_error(pilot, "pin-again", "739155", "differ")
        assert "7391" not in error_text(pilot, "pin-again")
        await fill(pilot, "pin-again", PIN, paste=True)
        await next_step(pilot)
        assert "step 5 of 9" in step_title(pilot)


async def test_reader_kit_and_wallet_steps_reject_bad_values(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    saved_progress(config_path, "site", "network", "time")
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "pin", PIN, paste=True)
        await fill(pilot, "pin-again", PIN, paste=True)
        await next_step(pilot)

        await next_step(pilot)
        assert "no reader yet" in error_text(pilot, "exits")
        await expect_error(pilot, "zones", "Main Door", "'Main'", "lowercase")
        await fill(pilot, "zones", "main-door, bar", paste=True)
        await expect_error(pilot, "exits", "exit-1 cellar", "'cellar'", "zones field")
        await expect_error(pilot, "exits", "Exit_1 bar", "line 1", "'Exit_1'")
        await expect_error(
            pilot, "exits", "exit-1 bar\nexit-2 bar -10", "line 2", "maximum -20"
        )
        await expect_error(pilot, "exits", "exit-1 bar x", "line 1", "'x'")
        await fill(pilot, "exits", "exit-1 main-door", paste=True)
        await expect_error(pilot, "kit-stations", "kit-1 bar -60", "'-60'")
        await fill(pilot, "kit-stations", "exit-1 bar", paste=True)
        await next_step(pilot)
        assert "'exit-1' twice" in error_text(pilot, "exits")
        await fill(pilot, "kit-stations", "kit-1 bar", paste=True)
        await next_step(pilot)
        assert "step 6 of 9" in step_title(pilot)
        await fill(pilot, "eddystone-namespace", NAMESPACE, paste=True)
        await next_step(pilot)
        assert "step 7 of 9" in step_title(pilot)

        await expect_error(pilot, "stock-kit-1", "many", "'many'", "whole number")
        await expect_error(pilot, "stock-kit-1", "2000000", "2000000", "1000000")
        await expect_error(
            pilot,
            "stock-kit-1",
            "99999999999999999999999",
            "99999999999999999999999 kits is above the maximum 1000000",
        )
        await expect_error(pilot, "low-stock", "12345678", "maximum 1000000")
        await fill(pilot, "stock-kit-1", "150", paste=True)
        await expect_error(pilot, "low-stock", "-1", "'-1'", "whole number")
        await fill(pilot, "low-stock", "10", paste=True)
        await next_step(pilot)
        assert "step 8 of 9" in step_title(pilot)

        await expect_error(pilot, "currency", "eur", "'eur'", "ISO 4217")
        await fill(pilot, "currency", "EUR", paste=True)
        await expect_error(pilot, "max-charge", "15.001", "3 decimals", "EUR has 2")
        await expect_error(pilot, "max-charge", "abc", "'abc'", "not an amount")
        await fill(pilot, "max-charge", "15.00", paste=True)
        await expect_error(pilot, "night-limit", "10.00", "below the per-charge")
        await fill(pilot, "night-limit", "30000000.00", paste=True)
        await expect_error(
            pilot, "max-charge", "20000000.00", "2000000000", "maximum 1000000000"
        )
        await fill(pilot, "currency", "JPY", paste=True)
        await expect_error(pilot, "max-charge", "15.5", "JPY has 0")
        await fill(pilot, "max-charge", "1500", paste=True)
        await fill(pilot, "night-limit", "20000", paste=True)
        await expect_error(
            pilot, "items", "beer Beer 4.5", "line 1: price", "JPY has 0"
        )
        await expect_error(
            pilot, "items", "beer Beer 450\nBeer x 5", "line 2", "'Beer'"
        )
        await expect_error(pilot, "items", "beer A 1\nbeer B 2", "'beer'")
        await fill(pilot, "items", "beer Beer 450", paste=True)
        await expect_error(pilot, "terminals", "desk", "'desk'", "every site has")
        await expect_error(pilot, "terminals", "Bar-1", "'Bar-1'", "lowercase")
        await fill(pilot, "terminals", "bar-1", paste=True)
        await next_step(pilot)
        assert "step 9 of 9" in step_title(pilot)
    assert app.values.kit_stock == {"kit-1": "150"}


async def test_readers_live_check_clears_stale_error(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    saved_progress(config_path, "site", "network", "time")
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "pin", PIN, paste=True)
        await fill(pilot, "pin-again", PIN, paste=True)
        await next_step(pilot)
        assert "step 5 of 9" in step_title(pilot)
        await fill(pilot, "exits", "exit-1 main -70")
        assert "zone 'main' is not in the zones field" in error_text(pilot, "exits")

        await fill(pilot, "zones", "main, bar")
        assert error_text(pilot, "exits") == ""
        assert error_text(pilot, "zones") == ""
        await fill(pilot, "kit-stations", "kit-1 bar")
        assert error_text(pilot, "exits") == ""
        assert error_text(pilot, "kit-stations") == ""
        assert error_text(pilot, "general") == ""

        # A message about the whole file waits for Next.
        await fill(pilot, "exits", "")
        await fill(pilot, "kit-stations", "")
        assert error_text(pilot, "exits") == ""
        await next_step(pilot)
        assert "no reader yet" in error_text(pilot, "exits")
        assert "step 5 of 9" in step_title(pilot)


def input_value(pilot: Pilot[bool], field: str) -> str:
    return pilot.app.screen.query_one(f"#{field}", Input).value


async def test_bands_step_rejects_bad_values_and_resumes(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    saved_progress(
        config_path, "site", "network", "time", "readers", zones="door", exits="x1"
    )
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "pin", PIN, paste=True)
        await fill(pilot, "pin-again", PIN, paste=True)
        await next_step(pilot)
        await next_step(pilot)
        assert isinstance(app.screen, BandsStep)

        await next_step(pilot)
        assert "no band format yet" in error_text(pilot, "ibeacon-uuid")
        assert "step 6 of 9" in step_title(pilot)
        bad_uuid = IBEACON_UUID[:-1] + "z"
        await expect_error(
            pilot, "ibeacon-uuid", bad_uuid, repr(bad_uuid), "not hex", "32 hex"
        )
        await expect_error(
            pilot, "ibeacon-uuid", IBEACON_UUID[:-2], "15 bytes", "must have 16"
        )
        await fill(pilot, "ibeacon-uuid", IBEACON_UUID, paste=True)
        await expect_error(
            pilot, "eddystone-namespace", NAMESPACE[:-4], "8 bytes", "20 hex digits"
        )
        await expect_error(
            pilot, "eddystone-namespace", NAMESPACE + "00", repr(NAMESPACE + "00")
        )
        await expect_error(pilot, "altbeacon-prefix", "2f234454", "4 bytes", "16")
        assert "11 bytes" in error_text(pilot, "eddystone-namespace")
        await fill(pilot, "altbeacon-prefix", "", paste=True)
        await fill(pilot, "eddystone-namespace", "abc", paste=True)
        assert "'abc' is not hex" in error_text(pilot, "eddystone-namespace")

        await pilot.press("ctrl+g")
        first_uuid = input_value(pilot, "ibeacon-uuid")
        first_namespace = input_value(pilot, "eddystone-namespace")
        assert str(uuid.UUID(first_uuid)) == first_uuid
        assert first_uuid != IBEACON_UUID
        assert len(bytes.fromhex(first_namespace)) == 10
        assert error_text(pilot, "eddystone-namespace") == ""
        await pilot.click("#generate")
        assert input_value(pilot, "ibeacon-uuid") != first_uuid
        assert input_value(pilot, "eddystone-namespace") != first_namespace
        generated_uuid = input_value(pilot, "ibeacon-uuid")
        generated_namespace = input_value(pilot, "eddystone-namespace")
        await next_step(pilot)
        assert "step 7 of 9" in step_title(pilot)
        await pilot.press("ctrl+q")
    assert app.return_value is False
    saved = json.loads(progress_path(config_path).read_text())["values"]
    assert saved["ibeacon_uuid"] == generated_uuid
    assert saved["eddystone_namespace"] == generated_namespace

    again = SetupApp(config_path, network=SimulatedNetwork())
    async with again.run_test(size=SIZE) as pilot:
        await fill(pilot, "pin", PIN, paste=True)
        await fill(pilot, "pin-again", PIN, paste=True)
        await next_step(pilot)
        await next_step(pilot)
        assert isinstance(again.screen, BandsStep)
        assert input_value(pilot, "ibeacon-uuid") == generated_uuid
        assert input_value(pilot, "eddystone-namespace") == generated_namespace
        await pilot.press("ctrl+q")


async def choose_network(pilot: Pilot[bool], ssid: str) -> None:
    """Pick ``ssid`` in the Wi-Fi list with the arrow keys and Enter."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, NetworkStep)
    wifi_list = screen.query_one("#wifi-list", OptionList)
    wifi_list.focus()
    await pilot.press("home")
    for _ in range(wifi_list.option_count):
        option = wifi_list.highlighted_option
        if option is not None and str(option.prompt).startswith(ssid):
            break
        await pilot.press("down")
    await pilot.press("enter")
    await pilot.pause()


async def test_wifi_list_enter_picks_first(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    saved_progress(config_path, "site")
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        for _ in range(10):
            if app.focused is not None and app.focused.id == "wifi-list":
                break
            await pilot.press("tab")
        assert app.focused is not None and app.focused.id == "wifi-list"
        await pilot.press("enter")
        await pilot.pause()

        status = str(app.screen.query_one("#network-status").render())
        assert "Type the password of 'venue-staff', then Enter." in status
        assert app.focused is not None and app.focused.id == "wifi-password"


async def test_network_join_wrong_then_right_password(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    saved_progress(config_path, "site")
    network = SimulatedNetwork()
    app = SetupApp(config_path, network=network)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, NetworkStep)
        await app.workers.wait_for_complete()
        interfaces = str(app.screen.query_one("#interfaces").render())
        assert "wlan0 (wifi): disconnected" in interfaces
        assert "127.0.0.1/8" in interfaces
        await choose_network(pilot, "venue-staff")
        assert app.focused is not None and app.focused.id == "wifi-password"
        await pilot.press(*"wrong-one", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "rejected the password" in error_text(pilot, "wifi-password")
        assert app.values.wifi_ssid == ""
        await pilot.press(*SIMULATED_WIFI_PASSWORD, "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        status = str(app.screen.query_one("#network-status").render())
        assert "Joined 'venue-staff'" in status
        assert error_text(pilot, "wifi-password") == ""
        assert app.screen.query_one("#wifi-password", Input).value == ""
        assert "192.0.2.23/24" in str(app.screen.query_one("#interfaces").render())
    assert network.joins == [("venue-staff", False), ("venue-staff", True)]
    assert app.values.wifi_ssid == "venue-staff"


async def test_quit_at_pin_step_then_resume(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        await fill(pilot, "site-id", "summer-club", paste=True)
        await fill(pilot, "site-name", "Summer Club", paste=True)
        await fill(pilot, "timezone", "Europe/Berlin", paste=True)
        await next_step(pilot)
        await choose_network(pilot, "venue-staff")
        await pilot.press(*SIMULATED_WIFI_PASSWORD, "enter")
        await app.workers.wait_for_complete()
        await next_step(pilot)
        await pilot.press("space")
        await next_step(pilot)
        assert isinstance(app.screen, PinStep)
        await fill(pilot, "pin", PIN, paste=True)
        await fill(pilot, "pin-again", PIN, paste=True)
        await pilot.press("ctrl+q")
    assert app.return_value is False
    assert not config_path.exists()

    progress = progress_path(config_path)
    assert stat.S_IMODE(progress.stat().st_mode) == 0o600
    text = progress.read_text()
    assert PIN not in text
    assert SIMULATED_WIFI_PASSWORD not in text
    assert "summer-club" in text
    assert json.loads(text)["values"]["wifi_ssid"] == "venue-staff"

    again = SetupApp(config_path, network=SimulatedNetwork())
    async with again.run_test(size=SIZE) as pilot:
        assert isinstance(again.screen, PinStep)
        assert again.screen.query_one("#pin", Input).value == ""
        assert again.values.clock_trusted is True
        await pilot.press("escape", "escape", "escape")
        await pilot.pause()
        assert isinstance(again.screen, SiteStep)
        assert again.screen.query_one("#site-id", Input).value == "summer-club"
        assert again.screen.query_one("#timezone", Input).value == "Europe/Berlin"
        await pilot.press("ctrl+q")
    assert again.return_value is False


async def test_existing_site_file_is_not_overwritten(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    config_path.write_text("# somebody's site\n")
    app = SetupApp(config_path, network=SimulatedNetwork())
    async with app.run_test(size=SIZE) as pilot:
        notice = str(app.screen.query_one("#notice").render())
        assert "already exists" in notice
        await pilot.press("ctrl+q")
    assert app.return_value is False
    assert config_path.read_text() == "# somebody's site\n"
    assert not progress_path(config_path).exists()
