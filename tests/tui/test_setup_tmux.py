"""``python -m tui.setup FILE`` in a real terminal: tmux at 80x24, then 40x12.

tmux runs on a private socket with its own server, which the test ends, so
no other tmux session is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tui.setup import progress_path

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Return a function that runs a tmux command on a private server."""
    socket = f"nightbox-setup-{uuid.uuid4().hex[:12]}"
    config = tmp_path / "tmux.conf"
    # The pane stays after the program ends, so its last screen can be read.
    config.write_text("set -g remain-on-exit on\nset -g status off\n")

    def run(*arguments: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", socket, "-f", str(config), *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    yield run
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def wait_for_screen(
    tmux: Callable[..., str], condition: Callable[[str], bool], what: str
) -> str:
    """Return the pane's text once ``condition`` holds; fail after 20 s."""
    deadline = time.monotonic() + 20
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", "setup")
        if condition(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"the pane never showed {what}; it shows:\n{screen}")


def test_wizard_survives_resize_to_40x12(
    tmux: Callable[..., str], tmp_path: Path
) -> None:
    config_path = tmp_path / "site.toml"
    environment = {
        "NIGHTBOX_NETWORK": "simulator",
        "PYTHONPATH": str(REPOSITORY),
        "TERM": "xterm-256color",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }
    exports = [f"{key}={value}" for key, value in environment.items()]
    tmux(
        "new-session",
        "-d",
        "-s",
        "setup",
        "-x",
        "80",
        "-y",
        "24",
        "env",
        *exports,
        "sh",
        "-c",
        '"$0" -m tui.setup "$1"; echo "wizard exit status $?"',
        sys.executable,
        str(config_path),
    )
    screen = wait_for_screen(tmux, lambda s: "step 1 of 9" in s, "step 1")
    assert "Site id (site.id)" in screen
    assert "^n Next" in screen
    tmux("send-keys", "-t", "setup", "-l", "Bad Site")
    screen = wait_for_screen(tmux, lambda s: "is invalid" in s, "the site id error")
    assert "'Bad Site'" in screen

    tmux("resize-window", "-t", "setup", "-x", "40", "-y", "12")
    screen = wait_for_screen(
        tmux, lambda s: len(s.splitlines()[0]) <= 40, "the 40-column layout"
    )
    tmux("send-keys", "-t", "setup", "C-n")
    tmux("resize-window", "-t", "setup", "-x", "80", "-y", "24")
    screen = wait_for_screen(tmux, lambda s: "step 1 of 9" in s, "step 1 again")
    assert "Traceback" not in screen

    tmux("send-keys", "-t", "setup", "C-q")
    screen = wait_for_screen(tmux, lambda s: "exit status" in s, "the exit status")
    assert "Traceback" not in screen
    assert "wizard exit status 1" in screen
    assert "Bad Site" in progress_path(config_path).read_text()
