"""The reader's configuration file, ``/reader.json``, read and checked at boot.

Provisioning writes the file. An invalid file raises ConfigError naming the
key and what is accepted, and the reader then does not start scanning.
Missing optional keys take the defaults below.
"""

import binascii
import json

CONFIG_PATH = "/reader.json"

_ROLES = ("exit", "kit")
_UPLINKS = ("wifi", "serial")
_OFFLINE_RULES = ("refuse", "issue-once")
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"
_HEX_DIGITS = "0123456789abcdef"

# (key, default, minimum, maximum). BLE allows scan intervals and windows of
# 2.5 ms to 10.24 s (Core Spec Vol 6 Part B section 4.4.3).
_NUMBERS = (
    ("batch_ms", 1000, 100, 60000),
    ("scan_interval_us", 100000, 2500, 10240000),
    ("scan_window_us", 30000, 2500, 10240000),
    ("stall_s", 30, 5, 3600),
    ("ring_batches", 600, 1, 10000),
    ("status_s", 30, 1, 3600),
    ("watchdog_ms", 30000, 5000, 120000),
)
_KIT_NUMBERS = (
    ("answer_ms", 800, 100, 1000),
    ("near_dbm", -60, -127, 0),
)
_TOP_KEYS = (
    "v",
    "site",
    "reader",
    "role",
    "zone",
    "uplink",
    "wifi",
    "broker",
    "bands",
    "kit",
    "batch_ms",
    "scan_interval_us",
    "scan_window_us",
    "stall_s",
    "ring_batches",
    "status_s",
    "watchdog_ms",
)


class ConfigError(ValueError):
    """Error for an invalid ``/reader.json``; the message names the key.

    MicroPython cannot combine two built-in exception bases, so this
    inherits ValueError only.
    """


class KitConfig:
    """The kit station's pins, reply window and offline rule."""

    def __init__(self, table):
        _only_keys(
            table,
            "kit",
            (
                "button_pin",
                "green_pin",
                "red_pin",
                "buzzer_pin",
                "answer_ms",
                "near_dbm",
                "offline_rule",
            ),
        )
        self.button_pin = _pin(table, "kit.button_pin", 0, False)
        self.green_pin = _pin(table, "kit.green_pin", 25, False)
        self.red_pin = _pin(table, "kit.red_pin", 26, False)
        self.buzzer_pin = _pin(table, "kit.buzzer_pin", None, True)
        for key, default, minimum, maximum in _KIT_NUMBERS:
            value = _integer(table, "kit." + key, default, minimum, maximum)
            setattr(self, key, value)
        self.offline_rule = _choice(table, "kit.offline_rule", _OFFLINE_RULES, "refuse")


class ReaderConfig:
    """The checked contents of ``/reader.json``.

    Identities in ``bands`` are bytes (or None when the site does not use
    that format); times carry their unit in the attribute name.
    """

    def __init__(self, document):
        if type(document) is not dict:
            raise ConfigError("reader.json must contain a JSON object")
        _only_keys(document, "", _TOP_KEYS)
        version = document.get("v")
        if version != 1:
            raise ConfigError(
                "key 'v' = %r is not supported; this firmware reads version 1"
                % (version,)
            )
        self.site = _identifier(document, "site", None)
        self.reader = _identifier(document, "reader", None)
        self.role = _choice(document, "role", _ROLES, None)
        self.zone = _zone(document)
        self.uplink = _choice(document, "uplink", _UPLINKS, "wifi")
        for key, default, minimum, maximum in _NUMBERS:
            setattr(self, key, _integer(document, key, default, minimum, maximum))
        if self.scan_window_us > self.scan_interval_us:
            raise ConfigError(
                "key 'scan_window_us' = %d is longer than scan_interval_us = %d; "
                "the window must fit in the interval"
                % (self.scan_window_us, self.scan_interval_us)
            )
        if self.watchdog_ms < 3 * self.batch_ms:
            raise ConfigError(
                "key 'watchdog_ms' = %d is shorter than 3 x batch_ms (%d); raise "
                "watchdog_ms so a healthy reader is never reset"
                % (self.watchdog_ms, 3 * self.batch_ms)
            )
        self._read_uplink(document)
        self._read_bands(document.get("bands"))
        kit = document.get("kit")
        if self.role == "kit":
            if kit is None:
                kit = {}
            if type(kit) is not dict:
                raise ConfigError("key 'kit' must be an object")
            self.kit = KitConfig(kit)
        elif kit is not None:
            raise ConfigError(
                "key 'kit' is only allowed with role 'kit'; remove it for role %r"
                % self.role
            )
        else:
            self.kit = None

    def _read_uplink(self, document):
        wifi = document.get("wifi")
        broker = document.get("broker")
        if self.uplink == "serial":
            for key, value in (("wifi", wifi), ("broker", broker)):
                if value is not None:
                    raise ConfigError(
                        "key %r is only allowed with uplink 'wifi'; remove it" % key
                    )
            self.wifi_ssid = self.wifi_password = None
            self.broker_host = self.broker_username = self.broker_password = None
            self.broker_port = None
            return
        if type(wifi) is not dict:
            raise ConfigError("key 'wifi' must be an object with ssid and password")
        if type(broker) is not dict:
            raise ConfigError(
                "key 'broker' must be an object with host, port, username and password"
            )
        _only_keys(wifi, "wifi", ("ssid", "password"))
        _only_keys(broker, "broker", ("host", "port", "username", "password"))
        self.wifi_ssid = _text(wifi, "wifi.ssid", 1, 32)
        self.wifi_password = _text(wifi, "wifi.password", 0, 64)
        self.broker_host = _text(broker, "broker.host", 1, 253)
        self.broker_port = _integer(broker, "broker.port", 1883, 1, 65535)
        self.broker_username = _text(broker, "broker.username", 1, 64)
        self.broker_password = _text(broker, "broker.password", 1, 128)

    def _read_bands(self, bands):
        if type(bands) is not dict:
            raise ConfigError(
                "key 'bands' must be an object with ibeacon_uuid, altbeacon_prefix, "
                "eddystone_namespace and eid"
            )
        _only_keys(
            bands,
            "bands",
            ("ibeacon_uuid", "altbeacon_prefix", "eddystone_namespace", "eid"),
        )
        self.ibeacon_uuid = _identity(bands, "ibeacon_uuid", 16)
        self.altbeacon_prefix = _identity(bands, "altbeacon_prefix", 16)
        self.eddystone_namespace = _identity(bands, "eddystone_namespace", 10)
        eid = bands.get("eid", True)
        if type(eid) is not bool:
            raise ConfigError("key 'bands.eid' must be true or false, not %r" % (eid,))
        self.eid = eid
        if (
            self.ibeacon_uuid is None
            and self.altbeacon_prefix is None
            and self.eddystone_namespace is None
            and not eid
        ):
            raise ConfigError(
                "key 'bands' enables no band format; set ibeacon_uuid, "
                "altbeacon_prefix, eddystone_namespace or eid"
            )


def load(path=CONFIG_PATH):
    """Read and check the configuration file; return a ReaderConfig.

    Raises ConfigError when the file is missing, is not JSON or has an
    invalid key.
    """
    try:
        with open(path) as file:
            text = file.read()
    except OSError as err:
        raise ConfigError(
            "cannot read %s (%s); provision the reader" % (path, err)
        ) from None
    return parse(text)


def parse(text):
    """Check the text of ``/reader.json``; return a ReaderConfig.

    Raises ConfigError naming the invalid key.
    """
    try:
        document = json.loads(text)
    except ValueError:
        raise ConfigError(
            "reader.json is not valid JSON; provision the reader again"
        ) from None
    return ReaderConfig(document)


def _only_keys(table, prefix, allowed):
    for key in table:
        if key not in allowed:
            name = prefix + "." + key if prefix else key
            raise ConfigError(
                "key %r is unknown; allowed: %s" % (name, ", ".join(allowed))
            )


def _integer(table, key, default, minimum, maximum):
    value = table.get(key.split(".")[-1], default)
    if type(value) is not int:
        raise ConfigError("key %r must be an integer, not %r" % (key, value))
    if not minimum <= value <= maximum:
        raise ConfigError(
            "key %r = %d is outside %d..%d" % (key, value, minimum, maximum)
        )
    return value


def _text(table, key, shortest, longest):
    value = table.get(key.split(".")[-1])
    if type(value) is not str:
        raise ConfigError("key %r must be a string" % key)
    if not shortest <= len(value) <= longest:
        # The value itself is not shown: it may be a password.
        raise ConfigError(
            "key %r has %d characters; it must have %d to %d"
            % (key, len(value), shortest, longest)
        )
    return value


def _choice(table, key, choices, default):
    value = table.get(key.split(".")[-1], default)
    if value not in choices:
        raise ConfigError(
            "key %r = %r is invalid; use one of: %s" % (key, value, ", ".join(choices))
        )
    return value


def _identifier(table, key, default):
    value = table.get(key, default)
    if type(value) is not str or not 1 <= len(value) <= 32 or value[0] == "-":
        raise ConfigError(
            "key %r = %r is invalid; use 1-32 lowercase letters, digits and '-', "
            "starting with a letter or digit" % (key, value)
        )
    for char in value:
        if char not in _ID_CHARS:
            raise ConfigError(
                "key %r = %r contains %r; use lowercase letters, digits and '-'"
                % (key, value, char)
            )
    return value


def _zone(table):
    value = table.get("zone", "")
    if value == "":
        return value
    if type(value) is not str or len(value) > 32:
        raise ConfigError("key 'zone' must be a string of 1-32 characters or empty")
    for char in value:
        if char not in _ID_CHARS:
            raise ConfigError(
                "key 'zone' = %r contains %r; use lowercase letters, digits and '-'"
                % (value, char)
            )
    return value


def _pin(table, key, default, optional):
    value = table.get(key.split(".")[-1], default)
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value <= 48:
        raise ConfigError(
            "key %r = %r is invalid; use a GPIO number 0-48%s"
            % (key, value, " or null" if optional else "")
        )
    return value


def _identity(table, key, length):
    value = table.get(key)
    if value is None:
        return None
    if type(value) is str:
        digits = value.lower()
        if len(digits) == 2 * length and all(char in _HEX_DIGITS for char in digits):
            return binascii.unhexlify(digits)
    raise ConfigError(
        "key 'bands.%s' = %r is invalid; use %d hex digits without dashes, or null"
        % (key, value, 2 * length)
    )
