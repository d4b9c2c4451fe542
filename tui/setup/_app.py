"""The first-boot setup wizard: a Textual app that walks through nine steps.

``SetupApp(config_path).run()`` returns True once the site file and the
box's secrets are written, and False when the organiser quits; the values
so far stay in the progress file and the next run resumes from them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from hardware.network import NetworkBackend, create_network_backend
from tui.setup._bands_step import BandsStep
from tui.setup._checks import Secrets
from tui.setup._forms import (
    KitsStep,
    PinStep,
    ReadersStep,
    SiteStep,
    TimeStep,
    WalletStep,
)
from tui.setup._network_step import NetworkStep
from tui.setup._progress import (
    STEPS,
    ProgressError,
    SetupValues,
    load_progress,
    save_progress,
)
from tui.setup._review_step import ReviewStep
from tui.setup._step import StepScreen
from tui.setup._write import SetupError, overwrite_refusal, write_setup

_LOGGER = logging.getLogger(__name__)

_STEP_SCREENS: dict[str, type[StepScreen]] = {
    "site": SiteStep,
    "network": NetworkStep,
    "time": TimeStep,
    "pin": PinStep,
    "readers": ReadersStep,
    "bands": BandsStep,
    "kits": KitsStep,
    "wallet": WalletStep,
    "review": ReviewStep,
}

_CSS = """
#step-title { height: 1; background: $primary; color: $text; padding: 0 1; }
#step-body { height: 1fr; padding: 0 1; }
#step-buttons { height: 1; padding: 0 1; }
#step-buttons Button { margin-right: 2; }
.field { height: auto; margin-bottom: 1; }
.field-label { text-style: bold; }
.hint { color: $text-muted; }
.error { color: $error; display: none; }
.error.-shown { display: block; }
.-failed { color: $error; }
TextArea { height: 4; }
OptionList { height: auto; max-height: 6; }
#notice { padding: 1 2; }
"""


class NoticeScreen(Screen[None]):
    """Explains why the wizard cannot run; only quitting is possible."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self._message = message

    def compose(self) -> ComposeResult:
        yield Static(Text(self._message + "\n\nPress Ctrl+Q to quit."), id="notice")
        yield Footer()


class SetupApp(App[bool]):
    """The setup wizard writing the site file at ``config_path``."""

    TITLE = "Nightbox setup"
    CSS = _CSS
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit_setup", "Quit", priority=True),
    ]

    def __init__(
        self, config_path: Path, *, network: NetworkBackend | None = None
    ) -> None:
        super().__init__()
        self.config_path = Path(config_path)
        self.values = SetupValues()
        self.secrets = Secrets()
        self._network = network
        self._can_save = False

    @property
    def network(self) -> NetworkBackend:
        """The network backend, chosen on first use."""
        if self._network is None:
            self._network = create_network_backend()
        return self._network

    def run(self, *args: Any, **kwargs: Any) -> bool:
        """Run the wizard; return True when setup finished, False otherwise."""
        return bool(super().run(*args, **kwargs))

    def on_mount(self) -> None:
        try:
            saved = load_progress(self.config_path)
        except ProgressError as err:
            self.push_screen(NoticeScreen(str(err)))
            return
        refusal = overwrite_refusal(self.config_path)
        if refusal is not None:
            self.push_screen(NoticeScreen(refusal))
            return
        self.values = saved or SetupValues()
        self._can_save = True
        self.push_screen(self._screen_for(self.values.first_unfinished()))

    def _screen_for(self, index: int) -> StepScreen:
        return _STEP_SCREENS[STEPS[index]](self)

    def set_pin(self, pin: str, pin_again: str) -> None:
        """Keep the PIN as typed, in memory only."""
        self.secrets = Secrets(pin, pin_again)

    def finish_step(self, step: str) -> None:
        """Record ``step`` as done and show the next one, or write after review."""
        self.values.mark_completed(step)
        if step == "review":
            self._write()
            return
        self._save()
        self.switch_screen(self._screen_for(STEPS.index(step) + 1))

    def go_back(self, step: str) -> None:
        """Keep the values and show the step before ``step``."""
        self._save()
        index = STEPS.index(step)
        if index > 0:
            self.switch_screen(self._screen_for(index - 1))

    def action_quit_setup(self) -> None:
        """Keep the values so far (never the PIN) and leave the wizard."""
        if isinstance(self.screen, StepScreen):
            self.screen.store()
        self._save()
        self.exit(False)

    def _save(self) -> None:
        if not self._can_save:
            return
        try:
            save_progress(self.config_path, self.values)
        except OSError as err:
            _LOGGER.error(
                "Cannot save setup progress next to %s: %s", self.config_path, err
            )
            self.notify(
                f"cannot save the progress next to {self.config_path}: {err}",
                severity="error",
            )

    def _write(self) -> None:
        screen = self.screen
        try:
            write_setup(self.config_path, self.values, self.secrets.pin)
        except (SetupError, OSError, ValueError) as err:
            _LOGGER.error("Setup could not write %s: %s", self.config_path, err)
            if isinstance(screen, StepScreen):
                screen.show_error("general", f"Write failed: {err}")
            self._save()
            return
        self._can_save = False
        self.exit(True)
