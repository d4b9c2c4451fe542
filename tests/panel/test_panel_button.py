"""PanelButton: mock pins press it; bounce and handler errors are absorbed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from hardware.panel import PanelButton, PanelError, create_panel_button

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
    with pytest.raises(PanelError, match="GPIO17"):
        PanelButton(PIN, lambda: None, pin_factory=factory)
    first.close()
    first.close()
