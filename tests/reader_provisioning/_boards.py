"""Helpers for provisioning simulated boards: recorded progress, one run, a box."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.reader_board import BoardSimulator
from provisioning.readers import ProvisionResult, ReaderRequest, provision_reader

# A blank board never responds, so the probe waits this long before flashing.
# The simulated MicroPython responds within about 0.2 s.
PROBE_TIMEOUT_S = 3.0


class RecordingProgress:
    """Progress that keeps the stages and percentages it was given."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.messages: list[str] = []
        self.percents: list[tuple[str, str, int, int]] = []

    def stage(self, name: str, message: str) -> None:
        self.stages.append(name)
        self.messages.append(f"{name}: {message}")

    def percent(self, name: str, label: str, done: int, total: int) -> None:
        self.percents.append((name, label, done, total))


def provision(
    site_file: Path,
    board: BoardSimulator,
    progress: RecordingProgress | None = None,
    **changes: Any,
) -> ProvisionResult:
    """Provision ``board`` as an exit reader in zone back-door, with ``changes``."""
    fields: dict[str, Any] = {"role": "exit", "zone": "back-door", "port": board.url}
    fields.update(changes)
    return provision_reader(
        site_file,
        ReaderRequest(**fields),
        progress or RecordingProgress(),
        probe_timeout_s=PROBE_TIMEOUT_S,
    )


def board_config(board: BoardSimulator) -> dict[str, Any]:
    """Return the board's ``/reader.json``."""
    return json.loads(board.files["/reader.json"])


# A stand-in for `nightbox run`: it holds the data folder's lock with its pid
# in it, as the box does, and creates the marker file when it gets SIGHUP.
HOLDER = """
import fcntl, os, signal, sys, time
path, marker = sys.argv[1], sys.argv[2]
handle = open(path, "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.truncate(0)
handle.write(f"{os.getpid()}\\n")
handle.flush()
signal.signal(signal.SIGHUP, lambda *_: open(marker, "w").close())
print("locked", flush=True)
for _ in range(1200):
    if os.path.exists(marker):
        break
    time.sleep(0.05)
"""
# How long a SIGHUP may take to reach the stand-in box.
SIGHUP_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class FakeBox:
    """The running stand-in box: its pid and the file that SIGHUP creates."""

    pid: int
    marker: Path

    def got_sighup(self, wait_s: float = SIGHUP_WAIT_S) -> bool:
        """Return whether the box got SIGHUP, waiting up to ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while not self.marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.marker.exists()


@contextlib.contextmanager
def fake_box(data_dir: Path) -> Iterator[FakeBox]:
    """Run the stand-in box on ``data_dir`` until the block ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir.parent / "hup-received"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir / "nightbox.lock"), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield FakeBox(holder.pid, marker)
    finally:
        holder.kill()
        holder.wait()
