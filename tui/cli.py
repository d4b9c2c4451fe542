"""``nightbox tui``: open the console of a local box, a remote box or a demo night.

This module only builds the command's options and finds the broker and
login; Textual is imported when the console starts, so other ``nightbox``
commands do not pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance._cli_arguments import whole_number
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from textual.app import App

    from tui.link import LinkSettings

_LOGGER = logging.getLogger(__name__)

CONSOLE_USERNAME = "terminal-console"
MAX_DEMO_GUESTS = 5000
# Stopping signals handled like the console's quit key: SIGTERM from a
# service manager or kill, SIGHUP when the terminal closes.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class ConsoleStopped(BaseException):
    """A stopping signal arrived while no console screen was running.

    A BaseException like KeyboardInterrupt, so no ``except Exception`` on the
    way swallows it and every ``finally`` (the demo's stop) still runs.
    """

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


@dataclass
class _SignalState:
    """The console app the stopping signals should quit, once it runs."""

    app: App[Any] | None = None
    # The first stopping signal received; later ones are ignored, so they
    # cannot interrupt the cleanup the first one started.
    received: int | None = None


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``nightbox tui`` to the ``nightbox`` sub-commands."""
    parser = commands.add_parser(
        "tui",
        help="open the terminal console of a box (or of a demo night)",
        description="Open the terminal console: a live dashboard and the operations "
        "screens of a box, over its MQTT broker. Give --config for the box this "
        "runs on, --login for a box elsewhere, or --demo for a simulated night.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        help="site configuration (TOML) of the box on this machine; "
        "default: $NIGHTBOX_CONFIG. A missing file starts the setup wizard",
    )
    where.add_argument(
        "--login",
        type=Path,
        help="login file of a remote box, from 'nightbox console login-file'",
    )
    where.add_argument(
        "--demo",
        action="store_true",
        help="start a simulated night in the background and open its console",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="run the setup wizard for --config first, even if the file exists "
        "(it never overwrites a finished site file)",
    )
    parser.add_argument(
        "--guests",
        type=whole_number(1, MAX_DEMO_GUESTS),
        default=200,
        help=f"with --demo: guests of the night, 1 to {MAX_DEMO_GUESTS} (default 200)",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="with --demo: simulated seconds per real second, above 0 (default 30)",
    )
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        help="file for the console's log while it runs "
        "(default: ~/.local/state/nightbox/tui.log)",
    )


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from err
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 and finite, not {text}")
    return value


def run(arguments: argparse.Namespace) -> int:
    """Run ``nightbox tui``; return the exit code. Raises NightboxError on bad input.

    SIGTERM and SIGHUP quit the console like its quit key: the screen is
    restored, a demo night is stopped and its folder removed, and the exit
    code is 128 plus the signal's number.
    """
    try:
        with _quit_on_stop_signals() as signals:
            return _run(arguments, signals)
    except ConsoleStopped as stopped:
        name = signal.Signals(stopped.signal_number).name
        print(f"nightbox tui: stopped by {name}", file=sys.stderr)
        return 128 + stopped.signal_number


@contextlib.contextmanager
def _quit_on_stop_signals() -> Iterator[_SignalState]:
    """Handle STOP_SIGNALS for the ``with`` block, then restore the old handlers.

    While the console's app runs, a signal asks it to exit on its event loop,
    which restores the terminal. At any other moment, such as while the demo
    starts, the handler raises ConsoleStopped.
    """
    state = _SignalState()

    def on_signal(signal_number: int, _frame: object) -> None:
        if state.received is not None:
            return
        state.received = signal_number
        app = state.app
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if app is None or loop is None:
            raise ConsoleStopped(signal_number)
        _LOGGER.warning(
            "Quitting the console on %s", signal.Signals(signal_number).name
        )
        loop.call_soon_threadsafe(lambda: app.exit(return_code=128 + signal_number))

    if threading.current_thread() is not threading.main_thread():
        # Python runs signal handlers only in the main thread.
        yield state
        return
    previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    try:
        yield state
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run(arguments: argparse.Namespace, signals: _SignalState) -> int:
    if not arguments.demo and (arguments.guests != 200 or arguments.speed is not None):
        raise ConfigError("--guests and --speed apply only with --demo")
    if arguments.setup and (arguments.demo or arguments.login is not None):
        raise ConfigError("--setup applies only to --config (the box on this machine)")
    if arguments.demo:
        return _run_demo(arguments, signals)
    if arguments.login is not None:
        from tui.link import LinkSettings

        settings = LinkSettings.from_login_file(arguments.login)
        return _run_console(settings, arguments, signals)
    config_path = arguments.config or _env_config()
    if config_path is None:
        raise ConfigError(
            "no box given; pass --config FILE (or set NIGHTBOX_CONFIG) for the box "
            "on this machine, --login FILE for a remote box, or --demo"
        )
    if not _run_setup_if_needed(Path(config_path), signals, force=arguments.setup):
        print(
            f"nightbox tui: setup of {config_path} is not finished; run "
            f"'nightbox tui --config {config_path}' again to continue it",
            file=sys.stderr,
        )
        return 1
    settings = local_link_settings(Path(config_path))
    return _run_console(settings, arguments, signals)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nightbox tui`` with ``argv`` (``python -m tui``)."""
    from appliance.cli import main as nightbox_main

    return nightbox_main(["tui", *(sys.argv[1:] if argv is None else argv)])


def _env_config() -> Path | None:
    value = os.environ.get("NIGHTBOX_CONFIG")
    return Path(value) if value else None


def setup_progress_path(config_path: Path) -> Path:
    """Return the wizard's progress file for ``config_path``: ``<FILE>.setup.json``."""
    return config_path.with_name(config_path.name + ".setup.json")


def _run_setup_if_needed(
    config_path: Path, signals: _SignalState, *, force: bool
) -> bool:
    """Run the setup wizard when needed; return whether the file is ready to use."""
    needed = (
        force or not config_path.exists() or setup_progress_path(config_path).exists()
    )
    if not needed:
        return True
    from tui.setup import SetupApp

    setup = SetupApp(config_path)
    signals.app = setup
    try:
        finished = setup.run()
    finally:
        signals.app = None
    if signals.received is not None:
        raise ConsoleStopped(signals.received)
    return finished is True


def local_link_settings(config_path: Path) -> LinkSettings:
    """Return how the console reaches the box that runs with ``config_path``.

    Raises ConfigError naming the file and the fix when the broker's address
    or the console's password cannot be found.
    """
    from appliance.config import load_config
    from provisioning.readers.survey import broker_address
    from tui.link import LinkSettings

    config = load_config(config_path)
    url = broker_address(config)
    if url is None:
        raise ConfigError(
            f"the broker address of the box in {config_path} is unknown: broker.port "
            "is 0 and the box has not written its mosquitto.conf yet; start the box "
            f"with 'nightbox run --config {config_path}' first"
        )
    secrets_path = config.data_dir / "secrets" / "broker.json"
    password = _console_password(secrets_path, config_path)
    return LinkSettings(
        host=url.host,
        port=url.port,
        site=config.site_id,
        box=config.box_id,
        username=CONSOLE_USERNAME,
        password=password,
        login_fix=f"restart the box with 'nightbox run --config {config_path}'",
        start_fix=f"start the box with 'nightbox run --config {config_path}'",
    )


def _console_password(secrets_path: Path, config_path: Path) -> str:
    # Read without provisioning.SiteCredentials, which would generate a
    # password the running broker does not know.
    try:
        accounts = json.loads(secrets_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(
            f"no broker credentials at {secrets_path}; start the box once with "
            f"'nightbox run --config {config_path}', which creates them"
        ) from err
    except PermissionError as err:
        raise ConfigError(
            f"cannot read {secrets_path} (permission denied); run the console as "
            "the user that runs the box, or use a login file "
            "('nightbox console login-file')"
        ) from err
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot read broker credentials {secrets_path}: {err}"
        ) from err
    password = accounts.get(CONSOLE_USERNAME) if isinstance(accounts, dict) else None
    if not isinstance(password, str) or not password:
        raise ConfigError(
            f"{secrets_path} has no {CONSOLE_USERNAME!r} account; restart the box "
            f"with 'nightbox run --config {config_path}', which creates it"
        )
    return password


def _run_demo(arguments: argparse.Namespace, signals: _SignalState) -> int:
    from tui.demo import DEFAULT_SPEED, start_demo
    from tui.link import LinkSettings

    speed = DEFAULT_SPEED if arguments.speed is None else arguments.speed
    print(
        f"nightbox tui: starting a demo night ({arguments.guests} guests, "
        f"speed {speed:g})...",
        file=sys.stderr,
        flush=True,
    )
    night = start_demo(guests=arguments.guests, speed=speed)
    try:
        settings = LinkSettings.from_login_file(night.console_file)
        return _run_console(settings, arguments, signals, demo_pin=night.pin or None)
    finally:
        code = night.stop()
        _LOGGER.info("Demo night stopped with exit code %s", code)


def _run_console(
    settings: LinkSettings,
    arguments: argparse.Namespace,
    signals: _SignalState,
    *,
    demo_pin: str | None = None,
) -> int:
    from tui.app import NightboxApp

    log_path = arguments.log or default_log_path()
    handlers = _log_to_file(log_path)
    app = NightboxApp(settings, demo_pin=demo_pin)
    signals.app = app
    try:
        app.run()
    finally:
        signals.app = None
        _restore_logging(handlers)
    if signals.received is not None and app.return_code == 0:
        # The signal arrived as the app was ending on its own.
        return 128 + signals.received
    # Textual sets return_code 1 when the app ended on an unexpected error.
    return app.return_code or 0


def default_log_path() -> Path:
    """Return ``$XDG_STATE_HOME/nightbox/tui.log`` (``~/.local/state`` by default)."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(
        Path.home() / ".local" / "state"
    )
    return Path(state_home) / "nightbox" / "tui.log"


def _log_to_file(path: Path) -> list[logging.Handler]:
    """Send the root logger to ``path`` while the screen belongs to the console.

    Log lines written to the terminal would tear through the screen. Returns
    the handlers it took off, for :func:`_restore_logging`.
    """
    root = logging.getLogger()
    removed = [
        handler
        for handler in root.handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]
    for handler in removed:
        root.removeHandler(handler)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        print(
            f"nightbox tui: cannot write the log file {path} ({err.strerror}); "
            "the console runs without a log",
            file=sys.stderr,
        )
        file_handler = logging.NullHandler()
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(file_handler)
    return [*removed, file_handler]


def _restore_logging(handlers: list[logging.Handler]) -> None:
    root = logging.getLogger()
    *removed, file_handler = handlers
    root.removeHandler(file_handler)
    file_handler.close()
    for handler in removed:
        root.addHandler(handler)
