"""The Nightbox console: a Textual app that shows and operates one box over MQTT.

Each screen is a Textual mode, so switching keeps every screen's own state
and stack. The dashboard is always there; the operations screens come from
``tui.screens.OPERATION_SCREENS`` when that package provides them. Every
screen starts with :class:`tui.widgets.LinkHeader`, whose second line lists
the screen keys, and ends with the footer of the screen's own keys, lock
and quit.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import WorkerFailed

from tui.link import ConsoleLink, LinkSettings
from tui.screens.dashboard import DashboardScreen
from tui.session import AdminSession

_LOGGER = logging.getLogger(__name__)

# (key, screen name, label) of every screen, in the order the header lists them.
SCREEN_KEYS: tuple[tuple[str, str, str], ...] = (
    ("d", "dashboard", "Dash"),
    ("r", "readers", "Readers"),
    ("o", "drops", "Drops"),
    ("p", "pos", "POS"),
    ("c", "creators", "Creators"),
    ("t", "tokens", "Tokens"),
    ("k", "kits", "Kits"),
    ("v", "stream", "Stream"),
    ("s", "system", "System"),
)

ScreenFactory = Callable[[], Screen[Any]]


def operation_screens() -> dict[str, ScreenFactory]:
    """Return ``tui.screens.OPERATION_SCREENS``, or none when it is not there."""
    try:
        package = importlib.import_module("tui.screens")
    except ModuleNotFoundError as err:
        if err.name != "tui.screens":
            raise
        return {}
    screens = getattr(package, "OPERATION_SCREENS", None)
    return dict(screens) if isinstance(screens, dict) else {}


class NightboxApp(App[None]):
    """The console of one box: a dashboard and the operations screens."""

    TITLE = "Nightbox console"
    # The footer needs every column at 80 wide for the screen keys.
    ENABLE_COMMAND_PALETTE = False
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "dashboard": DashboardScreen
    }
    DEFAULT_MODE: ClassVar[str] = "dashboard"
    # Footer keys as Textual's compact footer draws them, so that a screen's
    # own keys, lock and quit fit in 80 columns.
    CSS = """
    FooterKey { margin-right: 1; }
    FooterKey .footer-key--key { padding: 0; }
    FooterKey .footer-key--description { padding: 0 0 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        # The screen keys are listed in the header's second line, which has
        # room for all of them; the footer keeps the screen's own keys.
        *(
            Binding(key, f"show('{name}')", label, show=False)
            for key, name, label in SCREEN_KEYS
        ),
        Binding("l", "lock", "Lock"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        link: ConsoleLink | LinkSettings,
        *,
        demo_pin: str | None = None,
        screens: dict[str, ScreenFactory] | None = None,
    ) -> None:
        super().__init__()
        self.link = link if isinstance(link, ConsoleLink) else ConsoleLink(link)
        self.session = AdminSession(self, self.link)
        self.demo_pin = demo_pin
        # Requests not sent and screen workers that raised; see
        # tui.widgets.count_action_error.
        self.action_errors = 0
        self._crash: BaseException | None = None
        installed = operation_screens() if screens is None else screens
        known = {name for _key, name, _label in SCREEN_KEYS}
        for name, factory in installed.items():
            if name not in known or name == "dashboard":
                _LOGGER.warning("Ignoring operations screen %r: no key for it", name)
                continue
            self.add_mode(name, factory)

    def screen_keys(self) -> list[tuple[str, str, str]]:
        """Return ``(key, name, label)`` of each screen this console has."""
        return [entry for entry in SCREEN_KEYS if entry[1] in self._modes]

    async def on_mount(self) -> None:
        self.link.watch(self._on_link_change)
        await self.link.start()
        if self.demo_pin is not None:
            # The header keeps showing the PIN, so the note goes soon and
            # leaves the screen's message line below it readable.
            self.notify(
                f"demo PIN {self.demo_pin}: it unlocks the admin actions",
                title="Demo night",
                timeout=6,
            )

    async def on_unmount(self) -> None:
        await self.link.stop()

    def header_extras(self) -> list[str]:
        """Notes the header shows before the box's time: demo PIN, unlocked."""
        extras = []
        if self.demo_pin is not None:
            extras.append(f"demo PIN {self.demo_pin}")
        if self.session.unlocked:
            extras.append("admin")
        return extras

    # Crashes. Textual's own report of an unhandled exception prints a
    # traceback with every frame's local variables (textual 8.2, App._fatal_error),
    # which could put the admin token on the terminal. These overrides of its
    # two hooks log the traceback to the log file and print one line instead;
    # Textual still sets return_code to 1.

    def _handle_exception(self, error: Exception) -> None:
        cause = error.error if isinstance(error, WorkerFailed) else error
        _LOGGER.critical("The console stopped on an unexpected error", exc_info=cause)
        self._crash = cause
        super()._handle_exception(error)

    def _fatal_error(self) -> None:
        self.bell()
        kind = type(self._crash).__name__ if self._crash is not None else "error"
        self.panic(
            Text(
                f"nightbox tui stopped on an unexpected {kind}; "
                f"the traceback is in {_log_file_text()}"
            )
        )

    def _on_link_change(self, source: str) -> None:
        if source == "session":
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Screens that are not installed have no key; lock is shown only
        # while unlocked.
        if action == "show" and parameters:
            return parameters[0] in self._modes
        if action == "lock":
            return self.session.unlocked
        return True

    def action_show(self, name: str) -> None:
        """Switch to the screen ``name``."""
        if name in self._modes:
            self.switch_mode(name)

    def action_lock(self) -> None:
        """Forget the admin token."""
        self.session.lock()
        self.notify("Locked: the next admin action asks for the PIN again.")


def _log_file_text() -> str:
    """Name the file the root logger writes to, for the crash message."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return f"the log file {handler.baseFilename}"
    return "the console's log (none is written: start it with --log FILE)"
