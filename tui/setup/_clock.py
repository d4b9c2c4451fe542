"""The state of the box's clock: NTP synchronisation through timedatectl."""

from __future__ import annotations

import shutil
import subprocess


def ntp_synchronised() -> str:
    """Return "yes", "no" or "unknown" (no timedatectl, or no systemd to ask)."""
    executable = shutil.which("timedatectl")
    if executable is None:
        return "unknown"
    try:
        done = subprocess.run(
            [executable, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    state = done.stdout.strip()
    if done.returncode != 0 or state not in ("yes", "no"):
        return "unknown"
    return state
