"""A debounced push button on a GPIO pin, wired between the pin and ground."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)

# Contacts of a panel push button bounce for a few milliseconds; presses
# closer together than this count once.
DEFAULT_BOUNCE_S = 0.05
_BCM_PINS = range(28)


class PanelError(RuntimeError):
    """A button that cannot be set up on its pin."""


class PanelButton:
    """Call ``on_press`` once per press of the button on BCM pin ``pin``.

    A press counts only when the pin has been quiet for ``bounce_s`` since
    its last edge, in either direction, so contact bounce on press or on
    release never makes a second press. The debounce is done here, not by
    the pin driver, so it works alike on every gpiozero pin factory.
    Rejected edges are counted in ``bounces``. gpiozero calls back in its
    own thread. With ``loop``, ``on_press`` runs
    in that event loop's thread instead. An exception from ``on_press`` is
    logged and counted in ``errors``, and the button keeps working.
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
        from gpiozero.exc import GPIOZeroError

        try:
            self._button = Button(pin, pull_up=True, pin_factory=pin_factory)
        except GPIOZeroError as error:
            raise PanelError(
                f"cannot set up the panel button on GPIO{pin}: {error}; check that"
                " the pin is free, or set GPIOZERO_PIN_FACTORY=mock off the Pi"
            ) from error
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
        """Release the pin; safe to call twice."""
        self._button.close()


def create_panel_button(
    pin: int | None,
    on_press: Callable[[], None],
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    pin_factory: Any = None,
) -> PanelButton | None:
    """Return a PanelButton on ``pin``, or None when no pin is configured."""
    if pin is None:
        return None
    return PanelButton(pin, on_press, loop=loop, pin_factory=pin_factory)
