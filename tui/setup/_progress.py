"""The wizard's values and the progress file that lets an organiser resume.

Progress lives in ``<config file>.setup.json`` (mode 0600, written
atomically). It keeps the values as typed and the finished steps, never the
admin PIN or a Wi-Fi password: neither is a field of :class:`SetupValues`.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.secret_file import write_secret_file

STEPS = (
    "site",
    "network",
    "time",
    "pin",
    "readers",
    "bands",
    "kits",
    "wallet",
    "review",
)
STEP_TITLES = {
    "site": "Site",
    "network": "Network",
    "time": "Time",
    "pin": "Admin PIN",
    "readers": "Zones and exits",
    "bands": "Wristbands",
    "kits": "Kit stock",
    "wallet": "Currency, wallet limits and catalogue",
    "review": "Review",
}
# The PIN is kept only in memory, so a run that resumes asks for it again.
UNSAVED_STEPS = frozenset({"pin"})
_FORMAT_VERSION = 1


class ProgressError(ValueError):
    """The progress file exists but cannot be read."""


def generate_box_id() -> str:
    """Return a fresh box id: ``box-`` and 6 random hex digits."""
    return f"box-{secrets.token_hex(3)}"


@dataclass(slots=True)
class SetupValues:
    """Every value of the wizard as the organiser typed it."""

    site_id: str = ""
    site_name: str = ""
    timezone: str = "UTC"
    rollover_hour: str = "12"
    box_id: str = ""
    data_dir: str = "data"
    generated_box_id: str = field(default_factory=generate_box_id)
    wifi_ssid: str = ""
    clock_trusted: bool = False
    zones: str = ""
    exits: str = ""
    kit_stations: str = ""
    ibeacon_uuid: str = ""
    altbeacon_prefix: str = ""
    eddystone_namespace: str = ""
    kit_stock: dict[str, str] = field(default_factory=dict)
    low_stock: str = "10"
    currency: str = "EUR"
    max_charge: str = "200.00"
    night_limit: str = "1000.00"
    items: str = ""
    terminals: str = ""
    # "system" on the appliance image, where systemd runs mosquitto and the
    # box writes its files into broker_config_dir; "auto" elsewhere.
    broker_mode: str = "auto"
    broker_config_dir: str = ""
    completed: list[str] = field(default_factory=list)

    @property
    def effective_box_id(self) -> str:
        """The box id typed in step 1, or the generated one."""
        return self.box_id.strip() or self.generated_box_id

    def first_unfinished(self) -> int:
        """Return the index in STEPS of the first step not finished yet."""
        for index, step in enumerate(STEPS):
            if step in UNSAVED_STEPS or step not in self.completed:
                return index
        return len(STEPS) - 1

    def mark_completed(self, step: str) -> None:
        if step not in UNSAVED_STEPS and step not in self.completed:
            self.completed.append(step)


def progress_path(config_path: Path) -> Path:
    """Return the progress file of the setup that writes ``config_path``."""
    return config_path.with_name(config_path.name + ".setup.json")


def save_progress(config_path: Path, values: SetupValues) -> None:
    """Write ``values`` to the progress file (0600, atomically)."""
    document = {"version": _FORMAT_VERSION, "values": dataclasses.asdict(values)}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    write_secret_file(progress_path(config_path), text.encode())


def load_progress(config_path: Path) -> SetupValues | None:
    """Return the saved values, or None when no setup is under way.

    Raises ProgressError naming the file when it cannot be read.
    """
    path = progress_path(config_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ProgressError(
            f"cannot read setup progress {path}: {err}; move it away to start over"
        ) from err
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProgressError(
            f"setup progress {path} is not JSON ({err}); move it away to start over"
        ) from err
    return _values_from(document, path)


def _values_from(document: Any, path: Path) -> SetupValues:
    saved = document.get("values") if isinstance(document, dict) else None
    if not isinstance(saved, dict):
        raise ProgressError(
            f"setup progress {path} has no 'values' object; move it away to start over"
        )
    values = SetupValues()
    for item in dataclasses.fields(SetupValues):
        if item.name not in saved:
            continue
        value = saved[item.name]
        default = getattr(values, item.name)
        if not _same_shape(value, default):
            raise ProgressError(
                f"setup progress {path}: {item.name} = {value!r:.60} is not a "
                f"{type(default).__name__}; move the file away to start over"
            )
        setattr(values, item.name, value)
    return values


def _same_shape(value: Any, default: Any) -> bool:
    if isinstance(default, dict):
        return isinstance(value, dict) and all(
            isinstance(key, str) and isinstance(text, str)
            for key, text in value.items()
        )
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(s, str) for s in value)
    return type(value) is type(default)
