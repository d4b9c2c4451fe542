"""Checks of each step's fields, ending with the loader of ``nightbox run``.

A step's own checks come first (a number that is not a number, a zone that
is not listed, two different PINs). Then the document built from every
value so far goes through ``appliance.config.parse_config``, and the key its
error names is mapped back to the field that contains it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import MAX_KIT_STOCK, parse_config
from appliance.console.pin import validate_pin
from appliance.errors import ConfigError
from tui.setup._document import (
    BAND_FIELDS,
    PLACEHOLDER_READER,
    build_document,
    item_lines,
    parse_item_lines,
    parse_reader_lines,
    reader_lines,
    zone_names,
)
from tui.setup._money import to_minor_units
from tui.setup._progress import STEPS, SetupValues

# Fields of each step, in screen order. The kits step adds one
# ``stock-<station>`` field per kit station.
STEP_FIELDS = {
    "site": ("site-id", "site-name", "timezone", "rollover-hour", "box-id", "data-dir"),
    "network": (),
    "time": ("clock-trusted",),
    "pin": ("pin", "pin-again"),
    "readers": ("zones", "exits", "kit-stations"),
    "bands": ("ibeacon-uuid", "altbeacon-prefix", "eddystone-namespace"),
    "kits": ("low-stock",),
    "wallet": ("currency", "max-charge", "night-limit", "items", "terminals"),
    "review": (),
}
# Keys of the site file and the field that contains each one.
_KEY_FIELDS = (
    ("site.id", "site-id"),
    ("site.name", "site-name"),
    ("site.timezone", "timezone"),
    ("site.night_rollover_hour", "rollover-hour"),
    ("box.id", "box-id"),
    ("box.data_dir", "data-dir"),
    ("bands.ibeacon_uuid", "ibeacon-uuid"),
    ("bands.altbeacon_prefix", "altbeacon-prefix"),
    ("bands.eddystone_namespace", "eddystone-namespace"),
    ("kits.low_stock", "low-stock"),
    ("wallet.currency", "currency"),
    ("wallet.max_charge", "max-charge"),
    ("wallet.night_spend_limit", "night-limit"),
)
# The values each band field accepts, added to the loader's message about it.
_BAND_HINTS = {
    "ibeacon-uuid": "Type a UUID (32 hex digits, dashes allowed)",
    "altbeacon-prefix": "Type the first 16 bytes of the beacon id (32 hex digits, "
    "dashes allowed)",
    "eddystone-namespace": "Type 20 hex digits (10 bytes)",
}
_READER_KEY = re.compile(r"readers\[(\d+)\](\.kit_stock)?")
_ITEM_KEY = re.compile(r"(?<![\w.])items\b(\[(\d+)\])?")
_TERMINAL_KEY = re.compile(r"(?<![\w.])terminals\b")
_WHOLE = re.compile(r"^[0-9]{1,18}\Z")
# Field that shows an error the loader raises about no key of the wizard.
GENERAL = "general"


@dataclass(frozen=True, slots=True)
class Secrets:
    """The PIN as typed twice; kept in memory only."""

    pin: str = ""
    pin_again: str = ""


def step_of(field: str) -> str:
    """Return the step that shows ``field``."""
    if field.startswith("stock-"):
        return "kits"
    for step, fields in STEP_FIELDS.items():
        if field in fields:
            return step
    return "review"


def check_step(
    step: str, values: SetupValues, config_path: Path, secrets: Secrets = Secrets()
) -> dict[str, str]:
    """Return ``{field: message}`` for the invalid fields of ``step``; empty when valid.

    On the review step every field of every step is checked.
    """
    errors = _own_checks(step, values, secrets)
    upto = STEPS.index(step)
    if step == "review":
        for earlier in STEPS[:upto]:
            errors = _own_checks(earlier, values, secrets)
            if errors:
                return errors
    placeholder = upto < STEPS.index("readers")
    document = build_document(values, placeholder_reader=placeholder)
    error = loader_error(document, config_path)
    if error is None:
        return errors
    field, message = field_for(error, document, values)
    # A later step's field still contains its default or nothing; that step
    # checks it. A field with an error of its own keeps that error.
    if STEPS.index(step_of(field)) <= upto and field not in errors:
        errors[field] = message
    return errors


def check_field(
    step: str,
    field: str,
    values: SetupValues,
    config_path: Path,
    secrets: Secrets = Secrets(),
) -> str:
    """Return the message for one field as it is typed, or "" when it is valid.

    The step's own checks of the field come first, then the loader, whose
    message counts only when it names a key of this field. A message about
    the whole file (such as a site without readers) waits for Next, because
    while a person types it is about what is not typed yet.
    """
    own = _own_checks(step, values, secrets)
    if field in own:
        return own[field]
    upto = STEPS.index(step)
    placeholder = upto < STEPS.index("readers")
    document = build_document(values, placeholder_reader=placeholder)
    error = loader_error(document, config_path)
    if error is None:
        return ""
    mapped, message = field_for(error, document, values, whole_file=False)
    return message if mapped == field else ""


def loader_error(document: dict[str, Any], config_path: Path) -> str | None:
    """Return the loader's message for ``document``, or None when it is valid."""
    try:
        parse_config(document, base_dir=config_path.parent)
    except ConfigError as err:
        return str(err)
    return None


def field_for(
    message: str,
    document: dict[str, Any],
    values: SetupValues,
    *,
    whole_file: bool = True,
) -> tuple[str, str]:
    """Map a loader message to the field holding the key it names.

    A message that names no key goes to GENERAL, or with ``whole_file`` a
    message about the readers as a whole goes to the exit readers' field.
    """
    reader_key = _READER_KEY.search(message)
    if reader_key is not None:
        return _reader_field(message, reader_key, document, values)
    item_key = _ITEM_KEY.search(message)
    if item_key is not None:
        lines = item_lines(values)
        index = int(item_key.group(2) or len(lines))
        if index < len(lines):
            return "items", f"line {lines[index].line}: {message}"
        return "items", message
    if _TERMINAL_KEY.search(message):
        return "terminals", message
    for key, field in _KEY_FIELDS:
        if re.search(rf"(?<![\w.]){re.escape(key)}\b", message):
            message = _money_context(field, values) + message
            if field in _BAND_HINTS:
                message = f"{message}. {_BAND_HINTS[field]}."
            return field, message
    if whole_file and "readers" in message:
        return "exits", message
    return GENERAL, message


def _reader_field(
    message: str, match: re.Match[str], document: dict[str, Any], values: SetupValues
) -> tuple[str, str]:
    readers = document["readers"]
    index = int(match.group(1))
    reader = readers[index] if index < len(readers) else {}
    if match.group(2):
        return f"stock-{reader.get('id', '')}", message
    field = "kit-stations" if reader.get("role") == "kit" else "exits"
    lines = reader_lines(values)
    if index < len(lines) and lines[index].id == reader.get("id"):
        return field, f"line {lines[index].line}: {message}"
    return field, message


def _money_context(field: str, values: SetupValues) -> str:
    text = {"max-charge": values.max_charge, "night-limit": values.night_limit}.get(
        field
    )
    if text is None:
        return ""
    return f"{text.strip()} {values.currency.strip()} in minor units: "


def _own_checks(step: str, values: SetupValues, secrets: Secrets) -> dict[str, str]:
    if step == "site":
        return _site_checks(values)
    if step == "pin":
        return _pin_checks(secrets)
    if step == "readers":
        return _reader_checks(values)
    if step == "bands":
        return _band_checks(values)
    if step == "kits":
        return _kit_checks(values)
    if step == "wallet":
        return _wallet_checks(values)
    return {}


def _site_checks(values: SetupValues) -> dict[str, str]:
    errors = {}
    if not values.site_name.strip():
        errors["site-name"] = "the site name is empty; type the name guests know"
    hour = values.rollover_hour.strip()
    if not _WHOLE.match(hour):
        errors["rollover-hour"] = (
            f"{values.rollover_hour!r:.40} is not a whole number; type an hour "
            "from 0 to 23"
        )
    return errors


def _pin_checks(secrets: Secrets) -> dict[str, str]:
    try:
        validate_pin(secrets.pin)
    except ValueError as err:
        return {"pin": str(err)}
    if secrets.pin_again != secrets.pin:
        return {"pin-again": "the two PINs differ; type the same PIN in both fields"}
    return {}


def _reader_checks(values: SetupValues) -> dict[str, str]:
    zones = zone_names(values.zones)
    for index, zone in enumerate(zones):
        probe: dict[str, Any] = {
            "site": {"id": "zone-check"},
            "box": {"id": "zone-check"},
            "readers": [{"id": PLACEHOLDER_READER, "role": "exit", "zone": zone}],
        }
        error = loader_error(probe, Path("."))
        if error is not None:
            return {"zones": error.replace("readers[0].zone", f"zone {index + 1}")}
    errors = {}
    for field, text, role in (
        ("exits", values.exits, "exit"),
        ("kit-stations", values.kit_stations, "kit"),
    ):
        try:
            parse_reader_lines(text, role, zones)
        except ValueError as err:
            errors[field] = str(err)
    if not errors and not (values.exits.strip() or values.kit_stations.strip()):
        errors["exits"] = (
            "no reader yet; type at least one exit reader, such as 'exit-1 "
            f"{zones[0] if zones else 'main-door'}'"
        )
    return errors


def _band_checks(values: SetupValues) -> dict[str, str]:
    # Each format goes through the loader on its own, so every bad value
    # shows at once and not only the first one the loader meets.
    errors: dict[str, str] = {}
    given = 0
    for key, _field in BAND_FIELDS:
        text = str(getattr(values, key)).strip()
        if not text:
            continue
        given += 1
        probe: dict[str, Any] = {
            "site": {"id": "band-check"},
            "box": {"id": "band-check"},
            "readers": [{"id": PLACEHOLDER_READER, "role": "exit"}],
            "bands": {key: text},
        }
        error = loader_error(probe, Path("."))
        if error is not None:
            mapped, message = field_for(error, probe, values)
            errors[mapped] = message
    if not given:
        errors["ibeacon-uuid"] = (
            "no band format yet; type at least one of the three, or press Ctrl+G "
            "to generate values for a new batch of bands"
        )
    return errors


def kit_station_ids(values: SetupValues) -> list[str]:
    """Return the kit stations of the readers step, or none while it is invalid."""
    return [line.id for line in reader_lines(values) if line.role == "kit"]


def _kit_checks(values: SetupValues) -> dict[str, str]:
    errors = {}
    for station in kit_station_ids(values):
        message = _kit_count_error(values.kit_stock.get(station, ""))
        if message:
            errors[f"stock-{station}"] = message
    message = _kit_count_error(values.low_stock)
    if message:
        errors["low-stock"] = message
    return errors


def _kit_count_error(text: str) -> str:
    """Return why ``text`` is not a count of kits (0 to MAX_KIT_STOCK), or ""."""
    count = text.strip()
    if not count.isascii() or not count.isdigit():
        return f"{text!r:.40} is not a whole number of kits; type 0 or more"
    if len(count) > len(str(MAX_KIT_STOCK)) or int(count) > MAX_KIT_STOCK:
        return (
            f"{count:.40} kits is above the maximum {MAX_KIT_STOCK}; "
            f"type 0 to {MAX_KIT_STOCK}"
        )
    return ""


def _wallet_checks(values: SetupValues) -> dict[str, str]:
    currency = values.currency.strip()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        return {
            "currency": (
                f"{values.currency!r:.20} is not an ISO 4217 code; type three "
                "capital letters such as 'EUR'"
            )
        }
    errors = {}
    amounts = {}
    for field, text in (
        ("max-charge", values.max_charge),
        ("night-limit", values.night_limit),
    ):
        try:
            amounts[field] = to_minor_units(text, currency)
        except ValueError as err:
            errors[field] = str(err)
    if not errors and amounts["night-limit"] < amounts["max-charge"]:
        errors["night-limit"] = (
            f"{values.night_limit.strip()} {currency} is below the per-charge limit "
            f"{values.max_charge.strip()} {currency}; raise it or lower the other"
        )
    try:
        parse_item_lines(values.items, currency)
    except ValueError as err:
        errors["items"] = str(err)
    return errors
