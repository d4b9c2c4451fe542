"""The site configuration the wizard builds: a TOML document and its commented text.

The document is validated by ``appliance.config.parse_config``, the loader of
``nightbox run``, so the wizard accepts exactly what the box accepts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tui.setup._money import to_minor_units
from tui.setup._progress import SetupValues

# Stands in for the readers while the organiser has not reached the readers
# step, because the loader rejects a site with no reader at all.
PLACEHOLDER_READER = "setup-placeholder"
# The band formats of the ``[bands]`` table, each paired with the wizard's
# field. Each key is also the name of the SetupValues attribute for it.
BAND_FIELDS = (
    ("ibeacon_uuid", "ibeacon-uuid"),
    ("altbeacon_prefix", "altbeacon-prefix"),
    ("eddystone_namespace", "eddystone-namespace"),
)
_NUMBER = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?\Z")


@dataclass(frozen=True, slots=True)
class ReaderLine:
    """One reader as typed on a line of the readers step (line counts from 1)."""

    id: str
    role: str
    zone: str
    threshold_dbm: float | None
    line: int


@dataclass(frozen=True, slots=True)
class ItemLine:
    """One catalogue item as typed on a line of the wallet step (line counts from 1).

    ``price`` is in minor units, or None when the terminal types the amount.
    """

    id: str
    name: str
    price: int | None
    line: int


def parse_item_lines(text: str, currency: str) -> list[ItemLine]:
    """Parse ``id name [price]`` lines; the name may have spaces, the price is last.

    Raises ValueError naming the line and the price that is wrong.
    """
    result = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        item_id, *rest = words
        price: int | None = None
        if rest and _NUMBER.match(rest[-1]):
            try:
                price = to_minor_units(rest[-1], currency)
            except ValueError as err:
                raise ValueError(f"line {number}: price {err}") from err
            rest = rest[:-1]
        result.append(ItemLine(item_id, " ".join(rest) or item_id, price, number))
    return result


def item_lines(values: SetupValues) -> list[ItemLine]:
    """Return the catalogue typed in the wallet step; none while a line is wrong."""
    try:
        return parse_item_lines(values.items, values.currency.strip())
    except ValueError:
        return []


def zone_names(text: str) -> list[str]:
    """Split the zones field: names separated by commas or spaces."""
    return [name for name in re.split(r"[,\s]+", text) if name]


def parse_reader_lines(text: str, role: str, zones: list[str]) -> list[ReaderLine]:
    """Parse ``id [zone] [threshold dBm]`` lines; kit stations take no threshold.

    Raises ValueError naming the line and the value that is wrong.
    """
    readers = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        reader_id, *rest = words
        zone = ""
        threshold: float | None = None
        for word in rest:
            if _NUMBER.match(word) and role == "exit" and threshold is None:
                threshold = float(word)
            elif not zone and not _NUMBER.match(word):
                zone = word
            else:
                raise ValueError(_line_error(number, word, role))
        if zone and zone not in zones:
            listed = ", ".join(zones) or "none yet"
            raise ValueError(
                f"line {number}: zone {zone!r:.40} is not in the zones field "
                f"({listed}); add it there or fix the name"
            )
        readers.append(ReaderLine(reader_id, role, zone, threshold, number))
    return readers


def _line_error(number: int, word: str, role: str) -> str:
    shape = "id zone threshold-dBm" if role == "exit" else "id zone"
    return (
        f"line {number}: unexpected {word!r:.40}; write one reader per line "
        f"as '{shape}'"
    )


def build_document(
    values: SetupValues, *, placeholder_reader: bool = False
) -> dict[str, Any]:
    """Return the site configuration as a TOML document (a dict of tables).

    Text that does not convert (an hour that is not a number) stays text, so
    the loader rejects it naming the key. Unparseable reader lines are left
    out; the readers step reports them first.
    """
    readers = [_reader_table(reader, values) for reader in reader_lines(values)]
    if not readers and placeholder_reader:
        readers = [{"id": PLACEHOLDER_READER, "role": "exit"}]
    document: dict[str, Any] = {
        "site": {
            "id": values.site_id.strip(),
            "name": values.site_name.strip(),
            "timezone": values.timezone.strip(),
            "night_rollover_hour": _whole(values.rollover_hour),
        },
        "box": {
            "id": values.effective_box_id,
            "data_dir": values.data_dir.strip(),
            "scanner": "none",
            "clock_trusted": values.clock_trusted,
        },
        "broker": _broker_table(values),
        "readers": readers,
        "kits": {"low_stock": _whole(values.low_stock)},
        "wallet": {
            "currency": values.currency.strip(),
            "max_charge": _minor(values.max_charge, values.currency.strip()),
            "night_spend_limit": _minor(values.night_limit, values.currency.strip()),
        },
    }
    bands = band_table(values)
    if bands:
        document["bands"] = bands
    terminals = zone_names(values.terminals)
    if terminals:
        document["terminals"] = [{"id": terminal} for terminal in terminals]
    items = [_item_table(item) for item in item_lines(values)]
    if items:
        document["items"] = items
    return document


def _item_table(item: ItemLine) -> dict[str, Any]:
    table: dict[str, Any] = {"id": item.id, "name": item.name}
    if item.price is not None:
        table["price"] = item.price
    return table


def band_table(values: SetupValues) -> dict[str, str]:
    """Return the ``[bands]`` table: the band formats given, as typed."""
    table = {}
    for key, _field in BAND_FIELDS:
        text = str(getattr(values, key)).strip()
        if text:
            table[key] = text
    return table


def reader_lines(values: SetupValues) -> list[ReaderLine]:
    """Return the exit readers then the kit stations, in the site file's order.

    Returns none while a line does not parse; the readers step reports it.
    """
    zones = zone_names(values.zones)
    try:
        exits = parse_reader_lines(values.exits, "exit", zones)
        kits = parse_reader_lines(values.kit_stations, "kit", zones)
    except ValueError:
        return []
    return exits + kits


def _reader_table(reader: ReaderLine, values: SetupValues) -> dict[str, Any]:
    table: dict[str, Any] = {"id": reader.id, "role": reader.role}
    if reader.zone:
        table["zone"] = reader.zone
    if reader.threshold_dbm is not None:
        table["threshold_dbm"] = reader.threshold_dbm
    if reader.role == "kit":
        table["kit_stock"] = _whole(values.kit_stock.get(reader.id, "0"))
    return table


def _whole(text: str) -> int | str:
    cleaned = text.strip()
    return int(cleaned) if re.fullmatch(r"[+-]?[0-9]{1,18}", cleaned) else cleaned


def _minor(text: str, currency: str) -> int | str:
    try:
        return to_minor_units(text, currency)
    except ValueError:
        return text.strip()


def _broker_table(values: SetupValues) -> dict[str, Any]:
    table: dict[str, Any] = {"mode": "auto", "host": "0.0.0.0", "port": 1883}
    if values.broker_mode == "system":
        table["mode"] = "system"
        table["config_dir"] = values.broker_config_dir.strip() or "broker"
    return table


def _broker_config_dir_lines(broker: dict[str, Any]) -> list[str]:
    if broker["mode"] != "system":
        return []
    return [
        "# system: systemd runs mosquitto; the box writes its configuration,",
        "# password file and ACL into this folder, and mosquitto reloads them.",
        f"config_dir = {_value(broker['config_dir'])}",
    ]


def render_toml(document: dict[str, Any], zones: list[str]) -> str:
    """Return the document as commented TOML, in the layout of the sample site."""
    site, box, broker = document["site"], document["box"], document["broker"]
    kits, wallet = document["kits"], document["wallet"]
    lines = [
        "# Nightbox site configuration, written by the first-boot setup wizard.",
        "# `nightbox run --config <this file>` reads it; edit it by hand as needed.",
        "",
        "[site]",
        f"id = {_value(site['id'])}",
        f"name = {_value(site['name'])}",
        "# Times in this file without an offset are read in this zone. A night",
        "# runs from night_rollover_hour to the same hour the next day, so a sale",
        "# at 02:00 belongs to the night before.",
        f"timezone = {_value(site['timezone'])}",
        f"night_rollover_hour = {_value(site['night_rollover_hour'])}",
        "",
        "[box]",
        "# Each box of a site has its own id.",
        f"id = {_value(box['id'])}",
        "# Relative paths resolve from this file's folder. The box keeps its",
        "# database, broker passwords, token signing key and admin PIN hash here.",
        f"data_dir = {_value(box['data_dir'])}",
        f"scanner = {_value(box['scanner'])}",
        "# true when NTP or a real-time clock keeps this box's clock right. A",
        "# Raspberry Pi has no battery-backed clock, so without NTP it starts with",
        "# a wrong time after a power cut and the box judges token lifetimes and",
        "# deadlines with care.",
        f"clock_trusted = {_value(box['clock_trusted'])}",
        "",
        "[broker]",
        "# auto: start a private mosquitto if installed, else the embedded broker.",
        "# Readers on the box's network dial host:port; 0.0.0.0 listens on every",
        "# interface of the box.",
        f"mode = {_value(broker['mode'])}",
        f"host = {_value(broker['host'])}",
        f"port = {_value(broker['port'])}",
        *_broker_config_dir_lines(broker),
        "",
        *_band_lines(document.get("bands", {})),
        f"# ESP32 readers. Zones of this site: {', '.join(zones) or 'none'}.",
        "# `nightbox reader provision` writes each one's settings onto the board.",
    ]
    for reader in document["readers"]:
        lines += ["[[readers]]"]
        lines += [f"{key} = {_value(value)}" for key, value in reader.items()]
        lines += [""]
    lines += [
        "[kits]",
        "# A kit station whose stock falls to this many kits raises a warning.",
        f"low_stock = {_value(kits['low_stock'])}",
        "",
        "# Amounts are whole minor units of the currency (1500 = 15.00 EUR).",
        "# max_charge limits one charge, night_spend_limit a band's spending in",
        "# one night.",
        "[wallet]",
        f"currency = {_value(wallet['currency'])}",
        f"max_charge = {_value(wallet['max_charge'])}",
        f"night_spend_limit = {_value(wallet['night_spend_limit'])}",
        "",
        *_catalogue_lines(document),
    ]
    return "\n".join(lines)


def _catalogue_lines(document: dict[str, Any]) -> list[str]:
    lines = [
        "# Point-of-sale terminals besides the built-in desk and console. Each",
        "# one acts with an edge token: `nightbox token issue --subject <id>`.",
    ]
    for terminal in document.get("terminals", []):
        lines += ["[[terminals]]", f"id = {_value(terminal['id'])}", ""]
    if not document.get("terminals"):
        lines += ["# [[terminals]]", '# id = "bar-1"', ""]
    lines += [
        "# What the terminals sell. price is in minor units; an item without a",
        "# price has its amount typed at the terminal.",
    ]
    for item in document.get("items", []):
        lines += ["[[items]]"]
        lines += [f"{key} = {_value(value)}" for key, value in item.items()]
        lines += [""]
    if not document.get("items"):
        lines += [
            "# [[items]]",
            '# id = "beer"',
            '# name = "Beer"',
            "# price = 450",
            "",
        ]
    return lines


# Comment above each band format in the site file.
_BAND_COMMENTS = {
    "ibeacon_uuid": [
        "# iBeacon proximity UUID (16 bytes). A band sending major M and minor N",
        "# is band ib-M-N.",
    ],
    "altbeacon_prefix": [
        "# First 16 bytes of the 20-byte AltBeacon id. The last 4 bytes name the",
        "# band: alt-<8 hex digits>.",
    ],
    "eddystone_namespace": [
        "# Eddystone-UID namespace (10 bytes). The 6-byte instance names the",
        "# band: uid-<12 hex digits>.",
    ],
}


def _band_lines(bands: dict[str, str]) -> list[str]:
    lines = ["# The band formats of the site's wristbands."]
    if bands:
        lines += [
            "# Bands must be programmed with these values; the box ignores adverts",
            "# with any other identity.",
            "[bands]",
        ]
    else:
        lines += ["# Without a [bands] table the box recognises no band.", "# [bands]"]
    for key, _field in BAND_FIELDS:
        if key in bands:
            lines += [*_BAND_COMMENTS[key], f"{key} = {_value(bands[key])}"]
    return [
        *lines,
        "# An Eddystone-EID band changes its id every 2^eid_rotation_exponent",
        "# seconds, so each one is registered with its identity key (format in",
        "# appliance/samples/site.toml):",
        "# [[bands.registered]]",
        '# id = "band-eid-1"',
        '# eid_identity_key = "<32 hex digits>"',
        "# eid_rotation_exponent = 10",
        "",
    ]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a TOML basic string once DEL, which JSON leaves as
    # it is and TOML forbids, is escaped too.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
