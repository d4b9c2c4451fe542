"""A simulated night in a background process, for ``nightbox tui --demo``.

:func:`start_demo` runs ``nightbox demo --headless --console-file ...`` as a
child process with its files in a new temporary folder, and waits until the
demo's box writes its console login file (broker, account, password and the
demo's admin PIN). :meth:`DemoNight.stop` ends the child (SIGTERM, then
SIGKILL after a grace period) and removes the folder. On Linux the child
also gets SIGTERM from the kernel when the process that started it dies,
even by SIGKILL, so a crashed console leaves no demo night running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import NightboxError

_LOGGER = logging.getLogger(__name__)

# The demo night lasts 12 simulated hours, long enough to watch at any speed.
DEMO_MINUTES = 720
DEFAULT_SPEED = 30.0
STARTUP_TIMEOUT_S = 60.0
# The demo stops its broker and removes its files on SIGTERM; this is how long
# it gets before SIGKILL.
STOP_GRACE_S = 10.0
_POLL_S = 0.1
# prctl(2) option: the signal the kernel sends this process when its parent
# thread exits.
_PR_SET_PDEATHSIG = 1
_STDERR_LINES_SHOWN = 12


class DemoError(NightboxError, RuntimeError):
    """The background demo night could not be started."""


@dataclass
class DemoNight:
    """A running background demo: its process, folder and console login file."""

    process: subprocess.Popen[bytes]
    folder: Path
    console_file: Path
    login: dict[str, Any] = field(repr=False)

    @property
    def pin(self) -> str:
        """The demo's admin PIN, which the demo generated for this night."""
        return str(self.login.get("pin", ""))

    @property
    def log_path(self) -> Path:
        """The file that receives the demo's output."""
        return self.folder / "demo.log"

    def stop(self) -> int | None:
        """Stop the demo and remove its folder; return its exit code."""
        code = stop_process(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)
        return code


def demo_command(
    folder: Path, *, guests: int, speed: float, broker: str = "auto"
) -> list[str]:
    """Return the command line of the background demo night."""
    return [
        sys.executable,
        "-m",
        "appliance",
        "demo",
        "--headless",
        "--broker",
        broker,
        "--console-file",
        str(folder / "console.json"),
        "--data-dir",
        str(folder / "box"),
        "--guests",
        str(guests),
        "--speed",
        repr(float(speed)),
        "--minutes",
        str(DEMO_MINUTES),
    ]


def start_demo(
    *,
    guests: int = 200,
    speed: float = DEFAULT_SPEED,
    broker: str = "auto",
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> DemoNight:
    """Start a demo night in the background and wait for its console login file.

    Raises DemoError with the demo's last output lines when it exits or
    writes no login file within ``timeout_s``; nothing is left behind then.
    """
    folder = Path(tempfile.mkdtemp(prefix="nightbox-tui-demo-"))
    command = demo_command(folder, guests=guests, speed=speed, broker=broker)
    log = (folder / "demo.log").open("wb")
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_parent(),
        )
    except OSError as err:
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise DemoError(f"cannot start the demo night ({command[0]}): {err}") from err
    log.close()
    _LOGGER.info("Demo night started as process %d in %s", process.pid, folder)
    console_file = folder / "console.json"
    try:
        login = _wait_for_login(process, console_file, folder / "demo.log", timeout_s)
    except BaseException:
        stop_process(process)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return DemoNight(process, folder, console_file, login)


def _stop_with_parent() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child stop when this process dies.

    The kernel sends the child SIGTERM (``PR_SET_PDEATHSIG``) when the thread
    that started it exits, so :func:`start_demo` must be called from a thread
    that lives as long as the demo, such as the main thread. Returns None
    where prctl does not exist (not Linux); the demo then outlives a console
    that is killed with SIGKILL.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Loaded before the fork: the child should only make the system calls.
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def stop_with_parent() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl, in which case
        # the kernel never sends the signal.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)

    return stop_with_parent


@contextlib.contextmanager
def demo_night(**options: Any) -> Iterator[DemoNight]:
    """Run :func:`start_demo` for the ``with`` block and stop the demo after it."""
    night = start_demo(**options)
    try:
        yield night
    finally:
        night.stop()


def _wait_for_login(
    process: subprocess.Popen[bytes],
    console_file: Path,
    log_path: Path,
    timeout_s: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        if console_file.exists():
            # The demo writes the file atomically, so it is complete once there.
            try:
                login = json.loads(console_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DemoError(
                    f"the demo's console login file {console_file} is unreadable: {err}"
                ) from err
            if not isinstance(login, dict):
                raise DemoError(
                    f"the demo's console login file {console_file} is not an object"
                )
            return login
        code = process.poll()
        if code is not None:
            raise DemoError(
                f"the demo night exited with code {code} before it was ready; "
                f"its last output:\n{_last_lines(log_path)}"
            )
        if time.monotonic() > deadline:
            raise DemoError(
                f"the demo night wrote no console login file within {timeout_s:.0f} s; "
                f"its last output:\n{_last_lines(log_path)}"
            )
        time.sleep(_POLL_S)


def _last_lines(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "  (no output)"
    shown = lines[-_STDERR_LINES_SHOWN:] or ["(no output)"]
    return "\n".join(f"  {line}" for line in shown)


def stop_process(
    process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S
) -> int | None:
    """End ``process`` with SIGTERM, or SIGKILL after ``grace_s``; return its code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _LOGGER.warning(
                "Demo process %d ignored SIGTERM for %.0f s; killing it",
                process.pid,
                grace_s,
            )
            process.kill()
            process.wait()
    return process.returncode
