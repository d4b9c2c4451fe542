"""PanelButton: mock pins press it; bounce and handler errors are absorbed.

Without a pin factory the button loads gpiozero's default one, as on the
box: on this machine, which has no GPIO, that fails with the cause named.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.exc import PinWarning
from gpiozero.pins.mock import MockFactory

from hardware.panel import PanelButton, PanelError, create_panel_button
from hardware.panel._button import PIN_FACTORY_VARIABLE

PIN = 17


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pins = MockFactory()
    yield pins
    pins.reset()


def press(factory: MockFactory) -> None:
    """Press and release the button, which pulls the pin to ground."""
    pin = factory.pin(PIN)
    pin.drive_low()
    pin.drive_high()


def test_press_calls_handler(factory):
    pressed = []
    button = create_panel_button(PIN, lambda: pressed.append(True), pin_factory=factory)
    assert button is not None
    press(factory)
    assert pressed == [True]
    assert button.presses == 1
    button.close()


def test_bounce_counts_once(factory):
    pressed = []
    button = PanelButton(PIN, lambda: pressed.append(True), pin_factory=factory)
    # Contact bounce: three closures within a few microseconds.
    press(factory)
    press(factory)
    press(factory)
    assert len(pressed) == 1
    assert button.bounces == 2
    time.sleep(button.bounce_s * 2)
    press(factory)
    assert len(pressed) == 2
    button.close()


def test_failing_handler_keeps_button(factory):
    def broken() -> None:
        raise RuntimeError("studio not running")

    button = PanelButton(PIN, broken, bounce_s=0.0, pin_factory=factory)
    press(factory)
    press(factory)
    assert button.presses == 2
    assert button.errors == 2
    button.close()


async def test_handler_runs_in_event_loop(factory):
    loop = asyncio.get_running_loop()
    pressed = asyncio.Event()
    button = PanelButton(PIN, pressed.set, loop=loop, pin_factory=factory)
    await asyncio.to_thread(press, factory)
    await asyncio.wait_for(pressed.wait(), timeout=5.0)
    assert button.presses == 1
    button.close()


def test_no_pin_no_button(factory):
    assert create_panel_button(None, lambda: None, pin_factory=factory) is None


def test_invalid_pin_rejected(factory):
    with pytest.raises(ValueError, match="40"):
        PanelButton(40, lambda: None, pin_factory=factory)


def test_pin_in_use_raises(factory):
    first = PanelButton(PIN, lambda: None, pin_factory=factory)
    with pytest.raises(PanelError, match="GPIO17") as raised:
        PanelButton(PIN, lambda: None, pin_factory=factory)
    assert "the pin is in use" in str(raised.value)
    assert "studio.button_pin" in str(raised.value)
    first.close()
    first.close()


@pytest.fixture
def default_pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gpiozero with no pin factory loaded yet, as in a fresh box process."""
    monkeypatch.delenv(PIN_FACTORY_VARIABLE, raising=False)
    previous = Device.pin_factory
    Device.pin_factory = None
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()
    Device.pin_factory = previous


def test_default_pins_name_cause(default_pins):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PanelError, match="GPIO17 cannot start") as raised:
            PanelButton(PIN, lambda: None)
    message = str(raised.value)
    if any(Path("/dev").glob("gpiochip*")):
        assert "gpiozero loaded no pin library" in message
        assert "python3-lgpio" in message
    else:
        assert "no GPIO on this machine" in message
        assert "remove studio.button_pin" in message
        assert f"{PIN_FACTORY_VARIABLE}=mock" in message
    # gpiozero's fallback warnings are folded into the message, not printed.
    assert [w for w in caught if issubclass(w.category, PinWarning)] == []


def test_unknown_pin_factory_named(default_pins, monkeypatch):
    monkeypatch.setenv(PIN_FACTORY_VARIABLE, "no-such-factory")
    with pytest.raises(PanelError, match="'no-such-factory'") as raised:
        PanelButton(PIN, lambda: None)
    assert "or unset it" in str(raised.value)


def test_mock_pin_factory_from_environment(default_pins, monkeypatch):
    monkeypatch.setenv(PIN_FACTORY_VARIABLE, "mock")
    pressed = []
    button = PanelButton(PIN, lambda: pressed.append(True))
    assert isinstance(Device.pin_factory, MockFactory)
    press(Device.pin_factory)
    assert pressed == [True]
    button.close()
