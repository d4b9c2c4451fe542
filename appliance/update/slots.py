"""The two application slots, the ``current`` link and ``state.json``.

::

    app/
      slot-a/  venv/  firmware/  slot.json   {"version", "complete", "installed_at"}
      slot-b/  ...
      current -> slot-a
      state.json  {"active": "slot-a", "trying": null, "previous": null}

A slot is complete once its ``slot.json`` contains ``"complete": true``. The
updater writes that file last and removes it first. While a new slot is on
trial, ``state.json`` names it in ``trying`` and the slot to return to in
``previous``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.errors import NightboxError
from appliance.image.layout import (
    CURRENT_LINK_NAME,
    SLOT_MARKER_NAME,
    SLOT_NAMES,
    SLOT_STATE_NAME,
)

VENV_NAME = "venv"
FIRMWARE_NAME = "firmware"
# The temporary folders that bundles are extracted into start with this.
INCOMING_PREFIX = ".incoming-"
_MAX_JSON_BYTES = 64 * 1024


class SlotError(NightboxError, RuntimeError):
    """The slots are in a state the updater cannot work from; the message gives why."""


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """The version and install time in the ``slot.json`` of a complete slot."""

    version: str
    installed_at: str


@dataclass(frozen=True, slots=True)
class SlotState:
    """The content of ``state.json``.

    ``trying`` is the slot on trial, or None; ``previous`` the slot that was
    active before the trial (kept after a successful one, for the record).
    ``trying_version`` and ``trial_started_at`` describe the trial.
    """

    active: str
    trying: str | None = None
    previous: str | None = None
    trying_version: str | None = None
    trial_started_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object written to ``state.json``."""
        document: dict[str, Any] = {
            "active": self.active,
            "trying": self.trying,
            "previous": self.previous,
        }
        if self.trying is not None:
            document["trying_version"] = self.trying_version
            document["trial_started_at"] = self.trial_started_at
        return document


class AppDir:
    """The paths of one application folder (``/var/lib/nightbox/app`` on a box)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def slot(self, name: str) -> Path:
        """Return the folder of slot ``name``."""
        if name not in SLOT_NAMES:
            raise ValueError(f"unknown slot {name!r}; expected one of {SLOT_NAMES}")
        return self.path / name

    def venv_python(self, name: str) -> Path:
        """Return the Python of slot ``name``'s venv."""
        return self.slot(name) / VENV_NAME / "bin" / "python"

    def marker(self, name: str) -> Path:
        """Return ``slot.json`` of slot ``name``."""
        return self.slot(name) / SLOT_MARKER_NAME

    @property
    def current_link(self) -> Path:
        """The ``current`` symlink."""
        return self.path / CURRENT_LINK_NAME

    @property
    def state_file(self) -> Path:
        """``state.json``."""
        return self.path / SLOT_STATE_NAME

    def current_slot(self) -> str | None:
        """Return the slot ``current`` points at, or None when it is missing or odd."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        return target if target in SLOT_NAMES else None

    def slot_info(self, name: str) -> SlotInfo | None:
        """Return the ``slot.json`` of a complete slot ``name``, else None."""
        document = _read_json(self.marker(name))
        if document is None or document.get("complete") is not True:
            return None
        version = document.get("version")
        installed_at = document.get("installed_at")
        if not isinstance(version, str) or not isinstance(installed_at, str):
            return None
        if not self.venv_python(name).exists():
            return None
        return SlotInfo(version, installed_at)

    def read_state(self) -> SlotState | None:
        """Return ``state.json``, or None when it is missing or unreadable."""
        document = _read_json(self.state_file)
        if document is None:
            return None
        active = document.get("active")
        trying = document.get("trying")
        previous = document.get("previous")
        if active not in SLOT_NAMES:
            return None
        if trying is not None and (trying not in SLOT_NAMES or trying == active):
            return None
        if previous is not None and previous not in SLOT_NAMES:
            return None
        trying_version = document.get("trying_version")
        started = document.get("trial_started_at")
        return SlotState(
            active=active,
            trying=trying,
            previous=previous,
            trying_version=trying_version if isinstance(trying_version, str) else None,
            trial_started_at=started if isinstance(started, str) else None,
        )

    def incoming_folders(self) -> list[Path]:
        """Return the extraction folders that an interrupted update left behind."""
        if not self.path.is_dir():
            return []
        return sorted(
            entry
            for entry in self.path.iterdir()
            if entry.name.startswith(INCOMING_PREFIX)
        )


def other_slot(name: str) -> str:
    """Return the slot that is not ``name``."""
    first, second = SLOT_NAMES
    return second if name == first else first


def marker_document(version: str) -> dict[str, Any]:
    """Return the ``slot.json`` of a slot completed now with ``version``."""
    return {"version": version, "complete": True, "installed_at": utc_now()}


def utc_now() -> str:
    """Return the current time as ISO 8601 UTC, such as 2027-01-15T08:00:00Z."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_JSON_BYTES + 1)
    except OSError:
        return None
    if len(data) > _MAX_JSON_BYTES:
        return None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
