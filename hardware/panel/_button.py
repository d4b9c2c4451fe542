"""A debounced push button on a GPIO pin, wired between the pin and ground."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

# The environment variable that names gpiozero's pin factory.
PIN_FACTORY_VARIABLE = "GPIOZERO_PIN_FACTORY"
# The device files of the GPIO controllers, and the board's name in the
# device tree.
_GPIO_CHIPS = (Path("/dev"), "gpiochip*")
_BOARD_MODEL = Path("/proc/device-tree/model")

# Contacts of a panel push button bounce for a few milliseconds, so a press
# edge within this time of the previous edge is counted as a bounce.
DEFAULT_BOUNCE_S = 0.05
_BCM_PINS = range(28)


class PanelError(RuntimeError):
    """A button that cannot be set up on its pin, with the cause in the message."""


class PanelButton:
    """A panel button on BCM pin ``pin`` that calls ``on_press`` once per press.

    A press counts only when the pin has been quiet for ``bounce_s`` since
    its last edge, in either direction, so contact bounce on press or on
    release never makes a second press. The debounce is done here, not by
    the pin driver, so it works alike on every gpiozero pin factory.
    Rejected edges are counted in ``bounces``. gpiozero calls back in its
    own thread. With ``loop``, ``on_press`` runs in that event loop's thread
    instead. An exception from ``on_press`` is
    logged and counted in ``errors``, and the button keeps working.

    Without ``pin_factory``, gpiozero loads its default pin library (lgpio
    first). Its fallback warnings are not printed: PanelError names the
    cause instead. The causes are no GPIO on this machine, no pin library
    that loads (on a Raspberry Pi, ``python3-lgpio`` or pip's ``lgpio``
    must be importable from the box's venv), an unknown
    ``GPIOZERO_PIN_FACTORY``, and the pin in use.
    ``GPIOZERO_PIN_FACTORY=mock`` runs the button on simulated pins.
    """

    def __init__(
        self,
        pin: int,
        on_press: Callable[[], None],
        *,
        bounce_s: float = DEFAULT_BOUNCE_S,
        loop: asyncio.AbstractEventLoop | None = None,
        pin_factory: Any = None,
    ):
        if pin not in _BCM_PINS:
            raise ValueError(
                f"invalid button pin {pin!r}; use a BCM GPIO number from 0 to 27"
            )
        self.pin = pin
        self.on_press = on_press
        self.loop = loop
        self.bounce_s = bounce_s
        self.presses = 0
        self.bounces = 0
        self.errors = 0
        self._last_edge = float("-inf")
        from gpiozero import Button

        if pin_factory is None:
            _load_default_pin_factory(pin)
        try:
            self._button = Button(pin, pull_up=True, pin_factory=pin_factory)
        except Exception as error:
            # Pin libraries raise their own types, such as lgpio.error for a
            # line that another process holds, so any failure here is a
            # failed set-up of this pin.
            raise PanelError(_pin_setup_message(pin, error)) from error
        self._button.when_pressed = self._pressed
        self._button.when_released = self._released
        _log.info("panel button ready on GPIO%d", pin)

    def _released(self) -> None:
        self._last_edge = time.monotonic()

    def _pressed(self) -> None:
        now = time.monotonic()
        quiet_s = now - self._last_edge
        self._last_edge = now
        if quiet_s < self.bounce_s:
            self.bounces += 1
            return
        self.presses += 1
        _log.info("panel button on GPIO%d pressed (%d)", self.pin, self.presses)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._call)
        else:
            self._call()

    def _call(self) -> None:
        try:
            self.on_press()
        except Exception:
            # A failing handler must not disable the button for the night.
            self.errors += 1
            _log.exception("panel button on GPIO%d: press handler failed", self.pin)

    def close(self) -> None:
        """Release the pin. Safe to call twice."""
        self._button.close()


def _load_default_pin_factory(pin: int) -> None:
    """Load gpiozero's default pin factory, or raise PanelError naming the cause.

    gpiozero warns once per pin library it cannot load. Those warnings are
    collected here instead of printed with their source lines.
    """
    from gpiozero import Device
    from gpiozero.exc import NativePinFactoryFallback, PinFactoryFallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PinFactoryFallback)
        warnings.simplefilter("always", NativePinFactoryFallback)
        try:
            Device.ensure_pin_factory()
        except Exception as error:
            # gpiozero raises BadPinFactory when no library loads, and the
            # library's ImportError when GPIOZERO_PIN_FACTORY names one not
            # installed.
            fallbacks = [
                str(warning.message)
                for warning in caught
                if issubclass(warning.category, PinFactoryFallback)
            ]
            raise PanelError(_no_pin_factory_message(pin, error, fallbacks)) from error
    if any(issubclass(w.category, NativePinFactoryFallback) for w in caught):
        _log.warning(
            "panel button on GPIO%d uses gpiozero's experimental native pin"
            " driver because no pin library could be loaded; install"
            " python3-lgpio and create the venv with --system-site-packages,"
            " or run `.venv/bin/pip install lgpio`",
            pin,
        )


def _no_pin_factory_message(pin: int, error: Exception, fallbacks: list[str]) -> str:
    prefix = f"the panel button on GPIO{pin} cannot start"
    chosen = os.environ.get(PIN_FACTORY_VARIABLE)
    if chosen is not None:
        return (
            f"{prefix}: gpiozero cannot load the pin factory"
            f" {PIN_FACTORY_VARIABLE}={chosen!r} ({error}); set it to lgpio,"
            " rpigpio, pigpio, native or mock, or unset it"
        )
    directory, pattern = _GPIO_CHIPS
    if not any(directory.glob(pattern)):
        return (
            f"{prefix}: no GPIO on this machine ({directory}/{pattern} does"
            f" not exist); remove studio.button_pin, or set"
            f" {PIN_FACTORY_VARIABLE}=mock to run with a simulated button"
        )
    reasons = "; ".join(fallbacks) or str(error)
    return (
        f"{prefix}: gpiozero loaded no pin library on this {_board_model()}"
        f" ({reasons}); install python3-lgpio (`sudo apt install"
        " python3-lgpio`) and create the venv with `python3 -m venv"
        " --system-site-packages .venv`, or run `.venv/bin/pip install lgpio`"
    )


def _pin_setup_message(pin: int, error: Exception) -> str:
    from gpiozero.exc import GPIOPinInUse

    prefix = f"the panel button on GPIO{pin} cannot start"
    if isinstance(error, GPIOPinInUse) or "busy" in str(error).lower():
        return (
            f"{prefix}: the pin is in use ({error}); stop the program that"
            " holds it (`gpioinfo` lists the lines in use), or wire the button"
            " to another pin and set studio.button_pin"
        )
    return (
        f"{prefix}: {type(error).__name__}: {error}; check that this user may"
        " open /dev/gpiochip* (the gpio group on Raspberry Pi OS)"
    )


def _board_model() -> str:
    """Return the board's name from the device tree, or a generic name."""
    try:
        model = _BOARD_MODEL.read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return "machine"
    return model or "machine"


def create_panel_button(
    pin: int | None,
    on_press: Callable[[], None],
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    pin_factory: Any = None,
) -> PanelButton | None:
    """Return a PanelButton on ``pin``, or None when no pin is configured.

    Raises PanelError, naming the cause, when the button cannot start.
    """
    if pin is None:
        return None
    return PanelButton(pin, on_press, loop=loop, pin_factory=pin_factory)
