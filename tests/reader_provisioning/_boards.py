"""Helpers for provisioning simulated boards: recorded progress and one run."""

from __future__ import annotations

import json
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
        self.percents: list[tuple[str, str, int, int]] = []

    def stage(self, name: str, message: str) -> None:
        self.stages.append(name)

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
