"""The box's TOML configuration, validated into typed settings.

Every error names the key, the bad value and what would be accepted, so an
organiser can fix the file without reading code. A sample lives in
``appliance/samples/site.toml``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance._toml_values import (
    boolean as _bool,
)
from appliance._toml_values import (
    choice as _choice,
)
from appliance._toml_values import (
    hex_bytes as _hex_bytes,
)
from appliance._toml_values import (
    identifier as _identifier,
)
from appliance._toml_values import (
    integer as _int,
)
from appliance._toml_values import (
    items as _items,
)
from appliance._toml_values import (
    nonblank as _nonblank,
)
from appliance._toml_values import (
    number as _number,
)
from appliance._toml_values import (
    reject_duplicates as _reject_duplicates,
)
from appliance._toml_values import (
    reject_unknown as _reject_unknown,
)
from appliance._toml_values import (
    string as _string,
)
from appliance._toml_values import (
    table as _table,
)
from appliance.assets.config import AssetsConfig, parse_assets_config
from appliance.clock import SystemClock, TimeSource
from appliance.commerce.config import COMMERCE_TABLES, CommerceConfig, parse_commerce
from appliance.errors import ConfigError
from appliance.image.layout import DEFAULT_BROKER_DIR
from appliance.portal.config import PortalConfig, parse_portal
from appliance.remote.config import FleetConfig, SyncConfig, parse_fleet, parse_sync
from appliance.studio.config import StudioConfig, parse_studio
from appliance.update.config import UpdateConfig, parse_update

_BAND_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
# One label of a DNS host name: 1-63 letters, digits and '-', with no '-'
# at either end.
_HOST_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# The kit_stock column is an SQLite INTEGER (64-bit). No venue hands out a
# million kits, so a larger figure is a typing error.
MAX_KIT_STOCK = 1_000_000
# An Eddystone-EID band counts seconds in 32 bits (see
# appliance/wristbands/_eid.py). The offset is the Unix time at which that
# counter was 0, so it is kept in the same range.
_MAX_EID_CLOCK_OFFSET_S = 2**32 - 1
# A zone groups readers by place, such as the readers of one door.
_ZONE_PATTERN = re.compile(r"^[a-z0-9-]{1,32}\Z")
# IEEE 802.11 limits an SSID to 32 bytes.
_MAX_SSID_BYTES = 32

ReaderRole = Literal["exit", "kit"]
ReaderUplink = Literal["wifi", "serial"]
KitOfflineRule = Literal["refuse", "issue-once"]
BrokerMode = Literal["auto", "mosquitto", "embedded", "external", "system"]
ScannerBackend = Literal["none", "simulator", "bleak"]


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """One ESP32 reader: an exit reader or a kit station."""

    id: str
    role: ReaderRole
    threshold_dbm: float | None = None
    kit_stock: int = 0
    zone: str = ""
    # "wifi": the reader dials the broker itself. "serial": it sends frames
    # over USB serial on ``serial_port`` and the box publishes them.
    uplink: ReaderUplink = "wifi"
    serial_port: str | None = None


@dataclass(frozen=True, slots=True)
class ReaderNetwork:
    """The Wi-Fi network and broker address written into Wi-Fi readers.

    ``wifi_password_file`` is read only when a reader is provisioned, so the
    password never passes through the parsed configuration.
    """

    wifi_ssid: str
    wifi_password_file: Path | None
    broker_host: str
    broker_port: int


@dataclass(frozen=True, slots=True)
class RegisteredBand:
    """A band that the site identifies by more than its derived identity."""

    id: str
    eid_identity_key: bytes | None = None
    eid_rotation_exponent: int = 10
    eid_clock_offset_s: float = 0.0
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckoutConfig:
    """Parameters of the proximity decision at exits."""

    threshold_dbm: float = -66.0
    min_dwell_s: float = 0.5
    window_s: float = 1.5
    min_adverts: int = 2
    exit_window_s: float = 900.0
    silence_s: float = 10.0
    stall_s: float = 30.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Location of the broker: one that the box starts itself, or an external one."""

    mode: BrokerMode = "auto"
    host: str = "127.0.0.1"
    port: int = 0
    # With mode "system": where the box writes mosquitto.conf, its password
    # file and ACL for the mosquitto that systemd runs.
    config_dir: Path = DEFAULT_BROKER_DIR


_DEFAULT_COUPON_OFFER = "Recovery microcation: 20% off"


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Everything the box needs to run a night."""

    site_id: str
    site_name: str
    box_id: str
    data_dir: Path
    ibeacon_uuid: bytes | None = None
    altbeacon_prefix: bytes | None = None
    eddystone_namespace: bytes | None = None
    bands: tuple[RegisteredBand, ...] = ()
    readers: tuple[ReaderConfig, ...] = ()
    checkout: CheckoutConfig = field(default_factory=CheckoutConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    scanner: ScannerBackend = "none"
    clock_trusted: bool = False
    kits_require_checkout: bool = False
    kit_low_stock: int = 10
    # What a kit station does with a kit request while the box is
    # unreachable: "refuse" hands out nothing, "issue-once" hands the kit out
    # and sends the request with ``offline_at`` once the box is back.
    kits_offline_rule: KitOfflineRule = "refuse"
    coupon_ttl_s: float = 7 * 24 * 3600.0
    coupon_offer: str = _DEFAULT_COUPON_OFFER
    commerce: CommerceConfig = field(default_factory=CommerceConfig)
    sync: SyncConfig | None = None
    fleet: FleetConfig = field(default_factory=FleetConfig)
    reader_network: ReaderNetwork | None = None
    # The camera studio; None on a box without a camera.
    studio: StudioConfig | None = None
    # The guest portal; None on a box that serves no portal.
    portal: PortalConfig | None = None
    # The asset cache's budget and USB preload folder; defaults without [assets].
    assets: AssetsConfig = field(default_factory=AssetsConfig)
    # The software updater's slots, key and health check; image defaults.
    update: UpdateConfig = field(default_factory=UpdateConfig)

    def system_clock(self) -> SystemClock:
        """Return the host's clock, vouched for when ``box.clock_trusted`` is set.

        Set it on a box whose clock NTP or a real-time clock keeps right. A
        Raspberry Pi without either starts with a wrong clock after a power
        cut.
        """
        source = TimeSource.OPERATOR if self.clock_trusted else TimeSource.UNTRUSTED
        return SystemClock(source)

    def reader(self, reader_id: str) -> ReaderConfig | None:
        """Return the reader called ``reader_id``, or None."""
        return next((r for r in self.readers if r.id == reader_id), None)


def load_config(path: Path) -> SiteConfig:
    """Read and validate the TOML file at ``path``.

    Raises ConfigError naming the file and the key for anything invalid.
    """
    raw = read_toml_file(path)
    try:
        return parse_config(raw, base_dir=path.parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def read_toml_file(path: Path) -> dict[str, Any]:
    """Return the parsed TOML document at ``path``, not yet validated.

    Raises ConfigError when the file is missing, unreadable, not UTF-8 or
    not TOML.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"configuration file {path} not found") from err
    except IsADirectoryError as err:
        raise ConfigError(
            f"configuration file {path} is a directory; give the path of a TOML file"
        ) from err
    except OSError as err:
        raise ConfigError(
            f"cannot read configuration file {path}: {err.strerror}"
        ) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); TOML files must be saved as UTF-8"
        ) from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err


def parse_config(raw: dict[str, Any], *, base_dir: Path) -> SiteConfig:
    """Validate a parsed TOML document; relative paths resolve from ``base_dir``."""
    _reject_unknown(raw, "", {"site", "box", "broker", "bands", "checkout"} | _MORE)
    site = _table(raw, "site")
    box = _table(raw, "box")
    bands = _table(raw, "bands", required=False)
    _reject_unknown(
        site,
        "site",
        {"id", "name", "timezone", "night_rollover_hour", "portal_url"},
    )
    _reject_unknown(box, "box", {"id", "data_dir", "scanner", "clock_trusted"})
    _reject_unknown(
        bands,
        "bands",
        {"ibeacon_uuid", "altbeacon_prefix", "eddystone_namespace", "registered"},
    )
    data_dir = _data_dir(box, base_dir)
    readers = tuple(_reader(item, index) for index, item in _items(raw, "readers"))
    box_id = _identifier(box, "box.id", default="box-1")
    scanner = _choice(box, "box.scanner", ("none", "simulator", "bleak"), "none")
    if scanner != "none" and not any(reader.id == box_id for reader in readers):
        # The box's own scanner reports as an exit reader named after the box.
        readers += (ReaderConfig(box_id, "exit"),)
    if not readers:
        raise ConfigError(
            "the site has no readers and box.scanner is 'none'; add at least one "
            "[[readers]] entry (id and role) or set box.scanner"
        )
    _reject_duplicates([reader.id for reader in readers], "readers")
    _reject_shared_serial_ports(readers)
    registered = tuple(
        _band(item, index) for index, item in _items(bands, "registered", "bands.")
    )
    _reject_duplicates([band.id for band in registered], "bands.registered")
    _reject_duplicates(
        [alias for band in registered for alias in band.aliases],
        "the aliases of bands.registered",
    )
    broker = _broker(_table(raw, "broker", required=False), base_dir)
    kits = _table(raw, "kits", required=False)
    coupons = _table(raw, "coupons", required=False)
    _reject_unknown(kits, "kits", {"require_checkout", "low_stock", "offline_rule"})
    _reject_unknown(coupons, "coupons", {"ttl_h", "offer"})
    return SiteConfig(
        site_id=_identifier(site, "site.id"),
        site_name=_site_name(site),
        box_id=box_id,
        data_dir=data_dir,
        ibeacon_uuid=_hex_bytes(bands, "bands.ibeacon_uuid", 16),
        altbeacon_prefix=_hex_bytes(bands, "bands.altbeacon_prefix", 16),
        eddystone_namespace=_hex_bytes(bands, "bands.eddystone_namespace", 10),
        bands=registered,
        readers=readers,
        checkout=_checkout(_table(raw, "checkout", required=False)),
        broker=broker,
        scanner=scanner,
        clock_trusted=_bool(box, "box.clock_trusted", False),
        kits_require_checkout=_bool(kits, "kits.require_checkout", False),
        kit_low_stock=_int(kits, "kits.low_stock", 10, minimum=0),
        kits_offline_rule=_choice(
            kits, "kits.offline_rule", ("refuse", "issue-once"), "refuse"
        ),
        coupon_ttl_s=_number(coupons, "coupons.ttl_h", 168.0, minimum=0.1) * 3600.0,
        coupon_offer=_nonblank(coupons, "coupons.offer", _DEFAULT_COUPON_OFFER),
        commerce=parse_commerce(raw, site, box_id),
        sync=parse_sync(raw, base_dir=base_dir, data_dir=data_dir),
        fleet=parse_fleet(raw, base_dir=base_dir),
        reader_network=_reader_network(
            _table(raw, "reader_network", required=False), broker, base_dir
        ),
        studio=parse_studio(raw),
        portal=parse_portal(raw),
        assets=parse_assets_config(raw, base_dir=base_dir),
        update=parse_update(raw, base_dir=base_dir),
    )


_MORE = {
    "readers",
    "reader_network",
    "kits",
    "coupons",
    "sync",
    "fleet",
    "studio",
    "portal",
    "assets",
    "update",
} | COMMERCE_TABLES


_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _site_name(site: dict[str, Any]) -> str:
    # The name is shown on screens and in Home Assistant, where a control
    # character (NUL, ESC) would corrupt the display.
    name = _string(site, "site.name", default=site.get("id", ""))
    for position, character in enumerate(name):
        # Cc: control characters; bidirectional marks and overrides can make
        # a name read differently from what it holds.
        if unicodedata.category(character) == "Cc" or character in _BIDI_CONTROLS:
            raise ConfigError(
                f"site.name = {name!r:.80} contains the control character "
                f"U+{ord(character):04X} at position {position}; remove it"
            )
    return name


def _data_dir(box: dict[str, Any], base_dir: Path) -> Path:
    text = _nonblank(box, "box.data_dir", "var/nightbox")
    try:
        path = (base_dir / text).resolve()
    except (OSError, RuntimeError, ValueError) as err:
        # Path.resolve raises ValueError for a NUL character and, in Python
        # 3.11, RuntimeError for a symlink loop.
        raise ConfigError(
            f"box.data_dir = {text!r} is not a usable path: {err}"
        ) from err
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"box.data_dir = {text!r} resolves to {path}, which exists and is "
            "not a directory; point it at a folder (it is created when missing)"
        )
    return path


def _checkout(table: dict[str, Any]) -> CheckoutConfig:
    defaults = CheckoutConfig()
    _reject_unknown(table, "checkout", set(CheckoutConfig.__slots__))
    return CheckoutConfig(
        threshold_dbm=_number(
            table, "checkout.threshold_dbm", defaults.threshold_dbm, -120, -20
        ),
        min_dwell_s=_number(
            table, "checkout.min_dwell_s", defaults.min_dwell_s, 0.0, 60.0
        ),
        window_s=_number(table, "checkout.window_s", defaults.window_s, 0.1, 60.0),
        min_adverts=_int(
            table, "checkout.min_adverts", defaults.min_adverts, minimum=1, maximum=100
        ),
        exit_window_s=_number(
            table, "checkout.exit_window_s", defaults.exit_window_s, 1.0, 86400.0
        ),
        silence_s=_number(table, "checkout.silence_s", defaults.silence_s, 1.0, 3600.0),
        stall_s=_number(table, "checkout.stall_s", defaults.stall_s, 1.0, 3600.0),
    )


def _broker(table: dict[str, Any], base_dir: Path) -> BrokerConfig:
    _reject_unknown(table, "broker", {"mode", "host", "port", "config_dir"})
    mode = _choice(
        table,
        "broker.mode",
        ("auto", "mosquitto", "embedded", "external", "system"),
        "auto",
    )
    port = _int(table, "broker.port", 0, minimum=0, maximum=65535)
    if mode in ("external", "system") and port == 0:
        raise ConfigError(
            f"broker.port is required when broker.mode is {mode!r}; set it to the "
            "port the broker listens on (1883 on the Nightbox image)"
        )
    if "config_dir" in table and mode != "system":
        raise ConfigError(
            f"broker.config_dir applies only when broker.mode is 'system', not "
            f"{mode!r}; remove it or set broker.mode = 'system'"
        )
    return BrokerConfig(
        mode=mode,
        host=_host(table, "broker.host"),
        port=port,
        config_dir=_broker_config_dir(table, base_dir),
    )


def _broker_config_dir(table: dict[str, Any], base_dir: Path) -> Path:
    text = _nonblank(table, "broker.config_dir", str(DEFAULT_BROKER_DIR))
    try:
        path = (base_dir / text).resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(
            f"broker.config_dir = {text!r} is not a usable path: {err}"
        ) from err
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"broker.config_dir = {text!r} resolves to {path}, which exists and is "
            "not a directory; point it at the folder that mosquitto.service reads "
            f"its configuration from ({DEFAULT_BROKER_DIR} on the Nightbox image)"
        )
    return path


def _host(table: dict[str, Any], key: str, default: str = "127.0.0.1") -> str:
    # Only the form is checked: resolving the name here would make parsing
    # depend on the network.
    value = _string(table, key, default=default)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    labels = value.removesuffix(".").split(".")
    # No top-level domain is all digits, so "256.1.1.1" is a bad IPv4
    # address, not a host name.
    if (
        len(value) <= 253
        and all(_HOST_LABEL_PATTERN.match(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return value
    raise ConfigError(
        f"{key} = {value!r:.80} is invalid; use an IPv4 or IPv6 address "
        "(127.0.0.1, ::1) or a host name of letters, digits, '-' and '.'"
    )


def _reader(item: Any, index: int) -> ReaderConfig:
    key = f"readers[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(
            f"{key} must be a table like {{ id = 'exit-1', role = 'exit' }}"
        )
    _reject_unknown(
        item,
        key,
        {"id", "role", "threshold_dbm", "kit_stock", "zone", "uplink", "serial_port"},
    )
    role = _choice(item, f"{key}.role", ("exit", "kit"), None)
    uplink = _choice(item, f"{key}.uplink", ("wifi", "serial"), "wifi")
    threshold = item.get("threshold_dbm")
    kit_stock = _int(item, f"{key}.kit_stock", 0, minimum=0, maximum=MAX_KIT_STOCK)
    # NOTE: 0 stays accepted on an exit reader, because it is the default and
    # generated configurations write it for every reader.
    if role == "exit" and kit_stock:
        raise ConfigError(
            f"{key}.kit_stock = {kit_stock} is set on an exit reader; only kit "
            "readers hand out kits, so remove it or set role = 'kit'"
        )
    return ReaderConfig(
        id=_identifier(item, f"{key}.id"),
        role=role,
        threshold_dbm=None
        if threshold is None
        else _number(item, f"{key}.threshold_dbm", -65.0, -120, -20),
        kit_stock=kit_stock,
        zone=_zone(item, f"{key}.zone"),
        uplink=uplink,
        serial_port=_serial_port(item, key, uplink),
    )


def _zone(item: dict[str, Any], key: str) -> str:
    value = _string(item, key, default="")
    if value and not _ZONE_PATTERN.match(value):
        raise ConfigError(
            f"{key} = {value!r:.80} is invalid; use 1-32 lowercase letters, "
            "digits and '-', such as 'main-door', or leave it out"
        )
    return value


def _reject_shared_serial_ports(readers: tuple[ReaderConfig, ...]) -> None:
    owners: dict[str, ReaderConfig] = {}
    for reader in readers:
        if reader.serial_port is None:
            continue
        device = _serial_device(reader.serial_port)
        owner = owners.setdefault(device, reader)
        if owner is reader:
            continue
        same = (
            f"serial_port {reader.serial_port!r}"
            if owner.serial_port == reader.serial_port
            else f"the same serial port {device!r} ({owner.serial_port!r} and "
            f"{reader.serial_port!r})"
        )
        raise ConfigError(
            f"readers {owner.id!r} and {reader.id!r} both use {same}; give each "
            "serial reader its own port"
        )


def _serial_device(port: str) -> str:
    """Return the device a serial_port names, for finding duplicates.

    A pyserial URL (``socket://``, ``rfc2217://``, ``loop://``) is compared as
    written. A device path is made absolute and normalised, and its symlinks
    (such as ``/dev/serial/by-id/...``) are resolved where they exist, so
    ``/dev//ttyUSB0`` and a link to ``/dev/ttyUSB0`` name the same device.
    """
    if "://" in port:
        # pyserial's serial_for_url treats any text with "://" as a URL.
        return port
    return os.path.realpath(port)


def _serial_port(item: dict[str, Any], key: str, uplink: str) -> str | None:
    if "serial_port" not in item:
        if uplink == "serial":
            raise ConfigError(
                f"missing {key}.serial_port, which uplink = 'serial' needs; give "
                "the reader's device path (/dev/ttyUSB0) or a pyserial URL"
            )
        return None
    if uplink != "serial":
        raise ConfigError(
            f"{key}.serial_port is set on a reader with uplink = {uplink!r}; "
            "set uplink = 'serial' or remove serial_port"
        )
    value = _nonblank(item, f"{key}.serial_port", "")
    if any(character.isspace() or not character.isprintable() for character in value):
        raise ConfigError(
            f"{key}.serial_port = {value!r:.80} contains a space or control "
            "character; give a device path such as /dev/ttyUSB0 or a pyserial "
            "URL such as rfc2217://host:port"
        )
    return value


def _reader_network(
    table: dict[str, Any], broker: BrokerConfig, base_dir: Path
) -> ReaderNetwork | None:
    if not table:
        return None
    _reject_unknown(
        table,
        "reader_network",
        {"wifi_ssid", "wifi_password_file", "broker_host", "broker_port"},
    )
    ssid = _string(table, "reader_network.wifi_ssid")
    if not 1 <= len(ssid.encode()) <= _MAX_SSID_BYTES or not ssid.isprintable():
        raise ConfigError(
            f"reader_network.wifi_ssid = {ssid!r:.80} is invalid; use the "
            f"network's name, 1-{_MAX_SSID_BYTES} bytes of printable UTF-8"
        )
    password_file = None
    if "wifi_password_file" in table:
        text = _nonblank(table, "reader_network.wifi_password_file", "")
        try:
            password_file = (base_dir / text).resolve()
        except (OSError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"reader_network.wifi_password_file = {text!r} is not a usable "
                f"path: {err}"
            ) from err
    host = _host(table, "reader_network.broker_host", default=broker.host)
    if _is_unspecified(host):
        raise ConfigError(
            f"reader_network.broker_host = {host!r} is an address readers "
            "cannot dial; set it to the box's address on the readers' network "
            "(192.168.4.1)"
        )
    port = _int(
        table, "reader_network.broker_port", broker.port, minimum=0, maximum=65535
    )
    if port == 0:
        raise ConfigError(
            "reader_network.broker_port is 0, which picks a new port at every "
            "start, so readers could not find the broker; set "
            "reader_network.broker_port or broker.port (1883)"
        )
    return ReaderNetwork(
        wifi_ssid=ssid,
        wifi_password_file=password_file,
        broker_host=host,
        broker_port=port,
    )


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified
    except ValueError:
        return False


def _band(item: Any, index: int) -> RegisteredBand:
    key = f"bands.registered[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{key} must be a table with at least an id")
    allowed = {"id", "eid_identity_key", "eid_rotation_exponent", "eid_clock_offset_s"}
    _reject_unknown(item, key, allowed | {"aliases"})
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(
        isinstance(alias, str) and _BAND_ID_PATTERN.match(alias) for alias in aliases
    ):
        raise ConfigError(
            f"{key}.aliases must be a list of band ids like 'ib-1-7' or "
            f"'uid-00000000002a', not {aliases!r:.80}"
        )
    return RegisteredBand(
        id=_identifier(item, f"{key}.id"),
        eid_identity_key=_hex_bytes(item, f"{key}.eid_identity_key", 16),
        eid_rotation_exponent=_int(
            item, f"{key}.eid_rotation_exponent", 10, minimum=0, maximum=15
        ),
        eid_clock_offset_s=_number(
            item, f"{key}.eid_clock_offset_s", 0.0, 0.0, _MAX_EID_CLOCK_OFFSET_S
        ),
        aliases=tuple(aliases),
    )
