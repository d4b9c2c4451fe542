"""Choose a scanner backend from configuration or the environment."""

from __future__ import annotations

import os

from hardware.scanner._base import Scanner
from hardware.scanner._bleak import BleakBackend
from hardware.scanner._simulated import SimulatedScanner

ENVIRONMENT_VARIABLE = "NIGHTBOX_SCANNER"
BACKENDS = ("bleak", "simulator")


def create_scanner(backend: str, *, adapter: str | None = None) -> Scanner:
    """Return a scanner for ``backend``; ``NIGHTBOX_SCANNER`` overrides it.

    Raises ValueError naming the backend when it is unknown.
    """
    chosen = os.environ.get(ENVIRONMENT_VARIABLE) or backend
    if chosen == "bleak":
        return BleakBackend(adapter)
    if chosen == "simulator":
        return SimulatedScanner()
    raise ValueError(
        f"unknown scanner backend {chosen!r}; use one of {', '.join(BACKENDS)}"
    )
