"""``nightbox tui`` in a real terminal: tmux at 80x24, resized, keys pressed.

Each test runs tmux on a private socket (``tmux -L``) with its own server,
so no other tmux session is touched, and reads the pane as a person at the
box's screen would see it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tui_night import (
    demo_night_fixture,  # noqa: F401 - registers the demo_night fixture
)

from tui.demo import DemoNight

REPOSITORY = Path(__file__).resolve().parents[2]


class Tmux:
    """One tmux server on a private socket, with the session ``tui``."""

    def __init__(self, folder: Path) -> None:
        self.socket = f"nightbox-test-{uuid.uuid4().hex[:12]}"
        self.config = folder / "tmux.conf"
        self.status_file = folder / "exit-status"
        # The pane stays after the program ends, so its last screen can be
        # read.
        self.config.write_text("set -g remain-on-exit on\nset -g status off\n")

    def run(self, *arguments: str) -> str:
        """Run a tmux command on this server and return its output."""
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", str(self.config), *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        """Start ``command`` in a detached 80x24 session.

        A shell around it writes its exit status to :attr:`status_file`,
        because tmux sometimes marks the pane dead without reaping the
        program, and then never reports the status.
        """
        exports = [f"{key}={value}" for key, value in env.items()]
        self.run(
            "new-session",
            "-d",
            "-s",
            "tui",
            "-x",
            "80",
            "-y",
            "24",
            # Only the given environment: COLUMNS and LINES from the test
            # runner would pin the console's size and hide every resize.
            "env",
            "-i",
            *exports,
            "sh",
            "-c",
            '"$@"; echo $? > "$0"',
            str(self.status_file),
            *command,
        )

    def screen(self) -> str:
        """Return the pane's visible text."""
        return self.run("capture-pane", "-p", "-t", "tui")

    def resize(self, columns: int, rows: int) -> None:
        """Resize the session's window."""
        self.run("resize-window", "-t", "tui", "-x", str(columns), "-y", str(rows))

    def keys(self, *keys: str) -> None:
        """Send keys to the pane."""
        self.run("send-keys", "-t", "tui", *keys)

    def exit_status(self) -> str | None:
        """Return the program's exit status, or None while it runs."""
        try:
            return self.status_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def kill(self) -> None:
        """Stop this tmux server."""
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    """A private tmux server, stopped after the test."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed; run 'make test', which installs it")
    server = Tmux(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def _environment(tmp_path: Path) -> dict[str, str]:
    return {
        "TERM": "xterm-256color",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path / "tmp"),
        "PYTHONPATH": str(REPOSITORY),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }


def _wait_for(tmux: Tmux, condition: Callable[[str], bool], what: str) -> str:
    # Generous, because a loaded machine runs the console, the demo night and
    # their shutdown several times slower.
    deadline = time.monotonic() + 90
    while True:
        screen = tmux.screen()
        if condition(screen):
            return screen
        status = tmux.exit_status()
        if status is not None:
            pytest.fail(
                f"waiting for {what}: the console exited with {status}; "
                f"screen:\n{screen}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; screen:\n{screen}")
        time.sleep(0.2)


def _wait_for_exit(tmux: Tmux) -> str:
    """Wait until the program has ended; return the pane's last screen."""
    deadline = time.monotonic() + 90
    while tmux.exit_status() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the console did not quit; screen:\n{tmux.screen()}")
        time.sleep(0.2)
    return tmux.screen()


def test_console_in_terminal(tmux: Tmux, tmp_path: Path, demo_night: DemoNight) -> None:
    command = [sys.executable, "-m", "appliance", "tui"]
    command += ["--login", str(demo_night.console_file)]
    (tmp_path / "tmp").mkdir()
    tmux.start(command, _environment(tmp_path))

    screen = _wait_for(
        tmux, lambda text: "Guests in" in text and " live " in text, "the dashboard"
    )
    lines = screen.splitlines()
    assert "Nightbox demo night" in lines[0]
    assert "clock trusted" in lines[0]
    assert "d Dash" in lines[1]
    assert "s System" in lines[1]
    assert "Checked out" in screen
    assert "Exits per minute" in screen
    assert "q Quit" in lines[-1]

    tmux.resize(40, 12)
    small = _wait_for(
        tmux,
        lambda text: "q Quit" in text.splitlines()[-1] and "Guests in" in text,
        "the 40x12 layout",
    )
    tmux.resize(80, 24)
    _wait_for(tmux, lambda text: "Exits per minute" in text, "the 80x24 layout again")

    tmux.keys("r")
    _wait_for(tmux, lambda text: "Exits per minute" not in text, "another screen")
    tmux.keys("d")
    back = _wait_for(tmux, lambda text: "Exits per minute" in text, "the dashboard")

    assert tmux.exit_status() is None
    assert "Traceback" not in small
    assert "Traceback" not in back

    tmux.keys("q")
    final = _wait_for_exit(tmux)
    assert tmux.exit_status() == "0"
    assert "Traceback" not in final


def test_demo_option_cleans_up(tmux: Tmux, tmp_path: Path) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = [sys.executable, "-m", "appliance", "tui", "--demo", "--guests", "50"]
    tmux.start(command, _environment(tmp_path))

    screen = _wait_for(
        tmux, lambda text: "demo PIN" in text and " live " in text, "the demo"
    )
    assert any(temporary.iterdir()), "the demo's folder is missing while it runs"
    tmux.keys("q")
    final = _wait_for_exit(tmux)

    assert "Nightbox demo night" in screen
    assert tmux.exit_status() == "0"
    assert "Traceback" not in final
    assert list(temporary.iterdir()) == []


def _console_pid(tmux: Tmux) -> int:
    """Return the pid of the console: the child of the pane's shell."""
    shell = int(tmux.run("list-panes", "-t", "tui", "-F", "#{pane_pid}").split()[0])
    children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    assert len(children) == 1, f"the pane's shell has children {children}"
    return int(children[0])


def _running(pid: int) -> bool:
    """Return whether ``pid`` runs; a zombie (ended, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.2)


def _start_demo_console(tmux: Tmux, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Start ``nightbox tui --demo`` and return its temporary root and login file."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = [sys.executable, "-m", "appliance", "tui", "--demo", "--guests", "50"]
    tmux.start(command, _environment(tmp_path))
    _wait_for(tmux, lambda text: "demo PIN" in text and " live " in text, "the demo")
    (login_file,) = temporary.glob("nightbox-tui-demo-*/console.json")
    return temporary, json.loads(login_file.read_text())


def _broker_answers(login: dict[str, Any]) -> bool:
    port = int(login["broker"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_demo_quits_on_sigterm(tmux: Tmux, tmp_path: Path) -> None:
    temporary, login = _start_demo_console(tmux, tmp_path)
    demo_pid = int(login["pid"])
    assert _running(demo_pid)

    os.kill(_console_pid(tmux), signal.SIGTERM)
    final = _wait_for_exit(tmux)

    assert tmux.exit_status() == str(128 + signal.SIGTERM)
    assert "Traceback" not in final
    # The console left its full-screen view, so the pane shows the shell's
    # screen again, not the dashboard.
    assert "Guests in" not in final
    assert not _running(demo_pid)
    _wait_until(lambda: not _broker_answers(login), "the demo's broker stops")
    assert list(temporary.iterdir()) == []


def test_demo_stops_when_terminal_closes(tmux: Tmux, tmp_path: Path) -> None:
    temporary, login = _start_demo_console(tmux, tmp_path)
    console_pid = _console_pid(tmux)
    demo_pid = int(login["pid"])

    # Killing the tmux server hangs up the pane's terminal: SIGHUP.
    tmux.kill()

    _wait_until(lambda: not _running(console_pid), "the console quits")
    _wait_until(lambda: not _running(demo_pid), "the demo night stops")
    _wait_until(lambda: not _broker_answers(login), "the demo's broker stops")
    assert list(temporary.iterdir()) == []


def test_demo_stops_when_console_killed(tmux: Tmux, tmp_path: Path) -> None:
    _temporary, login = _start_demo_console(tmux, tmp_path)
    demo_pid = int(login["pid"])

    os.kill(_console_pid(tmux), signal.SIGKILL)

    _wait_until(lambda: not _running(demo_pid), "the demo night stops")
    _wait_until(lambda: not _broker_answers(login), "the demo's broker stops")


def test_wizard_quits_on_sigterm(tmux: Tmux, tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    site_file = tmp_path / "venue" / "site.toml"
    command = [sys.executable, "-m", "appliance", "tui", "--config", str(site_file)]
    tmux.start(command, _environment(tmp_path))
    _wait_for(tmux, lambda text: "Nightbox setup, step 1" in text, "the wizard")

    os.kill(_console_pid(tmux), signal.SIGTERM)
    final = _wait_for_exit(tmux)

    assert tmux.exit_status() == str(128 + signal.SIGTERM)
    assert "Nightbox setup, step 1" not in final
    assert "Traceback" not in final
    assert not site_file.exists()
