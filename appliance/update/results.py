"""The updater's record: the last result and how many of each kind there were.

``<updates_dir>/results.json``::

    {"counts": {"installed": 2, "switched-back": 1, "hash-mismatch": 1},
     "last": {"result": "switched-back", "version": "0.3.0", "reason":
              "health-check", "message": "...", "at": "2027-01-15T08:00:00Z",
              "seconds": 41.2, "steps": {"install wheels": 3.1, ...}}}

The file lives outside the application folder, so a rejected bundle leaves
the slots byte for byte as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from appliance.update._files import write_json_atomically
from appliance.update.slots import utc_now

_LOGGER = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
_MAX_BYTES = 256 * 1024


@dataclass(slots=True)
class UpdateResult:
    """One update attempt and its result: installed, switched-back, rejected, failed."""

    result: str
    version: str | None
    reason: str = ""
    message: str = ""
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the ``last`` object of ``results.json``."""
        return {
            "result": self.result,
            "version": self.version,
            "reason": self.reason,
            "message": self.message,
            "at": utc_now(),
            "seconds": round(self.seconds, 2),
            "steps": {name: round(value, 3) for name, value in self.steps.items()},
        }


def read_results(updates_dir: Path) -> dict[str, Any]:
    """Return ``results.json``, or an empty record when it is missing or unreadable."""
    try:
        data = (updates_dir / RESULTS_NAME).read_bytes()[:_MAX_BYTES]
        document = orjson.loads(data)
    except (OSError, orjson.JSONDecodeError):
        return {"counts": {}, "last": None}
    if not isinstance(document, dict) or not isinstance(document.get("counts"), dict):
        return {"counts": {}, "last": None}
    return document


def record_result(updates_dir: Path, outcome: UpdateResult) -> None:
    """Count ``outcome`` under its reason (or result) and keep it as the last one.

    A failure to write the record is logged and does not change the outcome.
    """
    document = read_results(updates_dir)
    counts = {
        str(key): value
        for key, value in document["counts"].items()
        if isinstance(value, int)
    }
    key = outcome.reason or outcome.result
    counts[key] = counts.get(key, 0) + 1
    try:
        updates_dir.mkdir(exist_ok=True)
        write_json_atomically(
            updates_dir / RESULTS_NAME, {"counts": counts, "last": outcome.to_json()}
        )
    except OSError as err:
        _LOGGER.error("Could not record the update result in %s: %s", updates_dir, err)
