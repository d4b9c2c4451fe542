"""The restart command of the update tests, in place of ``systemctl restart``.

``python supervisor.py restart --app-dir APP --config SITE --run-dir RUN``
stops the box process whose pid is in ``RUN/box.pid`` and starts
``APP/current/venv/bin/python -m appliance run --config SITE`` again, so it
runs whatever slot ``current`` points at now. ``stop`` only stops it. The
box's output goes to ``RUN/box.log``. The command returns once the new
process is started; the updater's health check decides whether it came up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT_S = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=("restart", "stop"))
    parser.add_argument("--app-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    arguments = parser.parse_args()
    arguments.run_dir.mkdir(parents=True, exist_ok=True)
    stop(arguments.run_dir / "box.pid")
    if arguments.action == "restart":
        start(arguments.app_dir, arguments.config, arguments.run_dir)
    return 0


def stop(pid_file: Path) -> None:
    """Stop the process named in ``pid_file`` with SIGTERM, then SIGKILL."""
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
        time.sleep(0.05)
    pid_file.unlink()


def running(pid: int) -> bool:
    """Return whether ``pid`` is a live process (a zombie counts as stopped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


def start(app_dir: Path, config: Path, run_dir: Path) -> None:
    """Start the box from ``app_dir/current`` in a session of its own."""
    python = app_dir / "current" / "venv" / "bin" / "python"
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME")
    }
    with (run_dir / "box.log").open("ab") as log:
        process = subprocess.Popen(
            [str(python), "-m", "appliance", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The run folder, never the repository: `python -m appliance`
            # puts the working folder first on sys.path.
            cwd=run_dir,
            env=environment,
            start_new_session=True,
        )
    (run_dir / "box.pid").write_text(str(process.pid))


if __name__ == "__main__":
    sys.exit(main())
