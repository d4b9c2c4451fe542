"""Reader zones and uplinks, the readers' network and the kits' offline rule.

Each bad-value case changes one key of the sample site and expects a
ConfigError naming the key, the value given and what would be accepted.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance.config import ReaderNetwork, parse_config
from appliance.errors import ConfigError

SAMPLE = Path(appliance.__file__).parent / "samples" / "site.toml"
SAMPLE_RAW: dict[str, Any] = tomllib.loads(SAMPLE.read_text())


def sample() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE_RAW)


def parse(raw: dict[str, Any]) -> Any:
    return parse_config(raw, base_dir=SAMPLE.parent)


def serial_reader(reader_id: str = "exit-3", port: str = "/dev/ttyUSB0") -> dict:
    return {"id": reader_id, "role": "exit", "uplink": "serial", "serial_port": port}


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    return str(caught.value)


def test_reader_defaults_wifi_no_zone() -> None:
    reader = parse(sample()).reader("kit-1")

    assert reader.zone == ""
    assert reader.uplink == "wifi"
    assert reader.serial_port is None


def test_reader_serial_uplink_accepted() -> None:
    raw = sample()
    raw["readers"].append(serial_reader())
    raw["readers"].append(serial_reader("kit-2", "rfc2217://127.0.0.1:4000"))
    raw["readers"][-1]["role"] = "kit"

    config = parse(raw)

    assert config.reader("exit-3").uplink == "serial"
    assert config.reader("exit-3").serial_port == "/dev/ttyUSB0"
    assert config.reader("kit-2").serial_port == "rfc2217://127.0.0.1:4000"


def test_reader_network_defaults_from_broker() -> None:
    raw = sample()
    raw["broker"] = {"host": "192.168.4.1", "port": 1883}
    raw["reader_network"] = {"wifi_ssid": "nightbox"}

    network = parse(raw).reader_network

    assert network == ReaderNetwork("nightbox", None, "192.168.4.1", 1883)


def test_reader_network_all_keys() -> None:
    raw = sample()
    raw["reader_network"] = {
        "wifi_ssid": "Club Nörd",
        "wifi_password_file": "wifi-password.txt",
        "broker_host": "box.local",
        "broker_port": 8883,
    }

    network = parse(raw).reader_network

    assert network.wifi_ssid == "Club Nörd"
    # Resolved from the site file's folder, like box.data_dir; not read yet.
    assert network.wifi_password_file == SAMPLE.parent / "wifi-password.txt"
    assert network.broker_host == "box.local"
    assert network.broker_port == 8883


def test_reader_network_ssid_32_bytes_accepted() -> None:
    raw = sample()
    raw["reader_network"] = {"wifi_ssid": "ü" * 16}

    assert parse(raw).reader_network.wifi_ssid == "ü" * 16


def test_kits_offline_rule_issue_once() -> None:
    raw = sample()
    raw["kits"]["offline_rule"] = "issue-once"

    assert parse(raw).kits_offline_rule == "issue-once"


BAD_VALUES: list[tuple[str, str, Any, list[str]]] = [
    # (case, key under readers[0] or a dotted path, value, expected texts)
    ("zone-upper", "readers.0.zone", "Main", ["readers[0].zone", "'Main'", "1-32"]),
    ("zone-long", "readers.0.zone", "z" * 33, ["readers[0].zone", "1-32"]),
    ("zone-number", "readers.0.zone", 3, ["readers[0].zone", "3"]),
    (
        "uplink-unknown",
        "readers.0.uplink",
        "ble",
        ["readers[0].uplink", "'ble'", "wifi, serial"],
    ),
    (
        "port-on-wifi",
        "readers.0.serial_port",
        "/dev/ttyUSB0",
        ["readers[0].serial_port", "uplink = 'wifi'", "uplink = 'serial'"],
    ),
    (
        "offline-rule",
        "kits.offline_rule",
        "issue-twice",
        ["kits.offline_rule", "'issue-twice'", "refuse, issue-once"],
    ),
    ("offline-rule-bool", "kits.offline_rule", True, ["kits.offline_rule", "True"]),
]


def put(raw: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [case[1:] for case in BAD_VALUES],
    ids=[case[0] for case in BAD_VALUES],
)
def test_reader_bad_value_named(path: str, value: Any, expected: list[str]) -> None:
    raw = sample()
    put(raw, path, value)

    message = config_error(raw)

    for text in expected:
        assert text in message


def test_reader_serial_without_port() -> None:
    raw = sample()
    raw["readers"][0]["uplink"] = "serial"

    message = config_error(raw)

    assert "missing readers[0].serial_port" in message
    assert "/dev/ttyUSB0" in message


@pytest.mark.parametrize("port", ["", "   ", "/dev/tty USB0", "/dev/ttyUSB0\n"])
def test_reader_serial_port_invalid(port: str) -> None:
    raw = sample()
    raw["readers"].append(serial_reader(port=port))

    message = config_error(raw)

    assert "readers[3].serial_port" in message


def test_reader_serial_port_twice() -> None:
    raw = sample()
    raw["readers"].append(serial_reader("exit-3"))
    raw["readers"].append(serial_reader("exit-4"))

    message = config_error(raw)

    assert "readers 'exit-3' and 'exit-4' both use serial_port '/dev/ttyUSB0'" in (
        message
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/dev/pts/0", "/dev//pts/0"),
        ("/dev/pts/0", "//dev/pts/0"),
        ("/dev/pts/0", "/dev/pts/./0"),
        ("/dev/ttyUSB0", "/dev/serial/../ttyUSB0"),
    ],
    ids=["double-slash", "leading-double-slash", "dot", "dot-dot"],
)
def test_reader_serial_port_same_device(first: str, second: str) -> None:
    raw = sample()
    raw["readers"].append(serial_reader("exit-3", first))
    raw["readers"].append(serial_reader("exit-4", second))

    message = config_error(raw)

    assert "'exit-3' and 'exit-4'" in message
    assert repr(first) in message
    assert repr(second) in message


def test_reader_serial_port_symlink(tmp_path: Path) -> None:
    device = tmp_path / "ttyUSB0"
    device.touch()
    link = tmp_path / "usb-Silicon_Labs_CP2102-if00-port0"
    link.symlink_to(device)
    raw = sample()
    raw["readers"].append(serial_reader("exit-3", str(device)))
    raw["readers"].append(serial_reader("exit-4", str(link)))

    message = config_error(raw)

    assert "'exit-3' and 'exit-4'" in message
    assert str(link) in message


def test_reader_serial_urls_as_text() -> None:
    raw = sample()
    raw["readers"].append(serial_reader("exit-3", "socket://127.0.0.1:4000"))
    raw["readers"].append(serial_reader("exit-4", "socket://127.0.0.1:4001"))
    raw["readers"].append(serial_reader("exit-5", "rfc2217://127.0.0.1:4000"))

    config = parse(raw)

    assert config.reader("exit-3").serial_port == "socket://127.0.0.1:4000"
    assert config.reader("exit-4").serial_port == "socket://127.0.0.1:4001"
    assert config.reader("exit-5").serial_port == "rfc2217://127.0.0.1:4000"


def test_reader_serial_url_twice() -> None:
    raw = sample()
    raw["readers"].append(serial_reader("exit-3", "loop://"))
    raw["readers"].append(serial_reader("exit-4", "loop://"))

    message = config_error(raw)

    assert "readers 'exit-3' and 'exit-4' both use serial_port 'loop://'" in message


NETWORK_BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no-ssid", {}, ["reader_network.wifi_ssid", "missing"]),
    ("ssid-empty", {"wifi_ssid": ""}, ["reader_network.wifi_ssid", "''", "1-32"]),
    ("ssid-long", {"wifi_ssid": "n" * 33}, ["reader_network.wifi_ssid", "1-32"]),
    # 17 two-byte characters are 34 bytes.
    ("ssid-bytes", {"wifi_ssid": "ü" * 17}, ["reader_network.wifi_ssid", "bytes"]),
    ("ssid-control", {"wifi_ssid": "night\nbox"}, ["reader_network.wifi_ssid"]),
    (
        "password-file-empty",
        {"wifi_ssid": "nightbox", "wifi_password_file": ""},
        ["reader_network.wifi_password_file", "empty"],
    ),
    (
        "host-any",
        {"wifi_ssid": "nightbox", "broker_host": "0.0.0.0"},
        ["reader_network.broker_host", "'0.0.0.0'", "cannot dial"],
    ),
    (
        "host-url",
        {"wifi_ssid": "nightbox", "broker_host": "mqtt://box"},
        ["reader_network.broker_host", "'mqtt://box'"],
    ),
    (
        "port-range",
        {"wifi_ssid": "nightbox", "broker_port": 65536},
        ["reader_network.broker_port", "65536", "maximum"],
    ),
    (
        "port-zero",
        {"wifi_ssid": "nightbox", "broker_port": 0},
        ["reader_network.broker_port", "0", "broker.port"],
    ),
    (
        "unknown-key",
        {"wifi_ssid": "nightbox", "wifi_password": "secret-value"},
        ["'wifi_password'", "[reader_network]", "wifi_password_file"],
    ),
]


@pytest.mark.parametrize(
    ("table", "expected"),
    [case[1:] for case in NETWORK_BAD_VALUES],
    ids=[case[0] for case in NETWORK_BAD_VALUES],
)
def test_reader_network_bad_value(table: dict[str, Any], expected: list[str]) -> None:
    raw = sample()
    raw["reader_network"] = table or {"broker_port": 1883}

    message = config_error(raw)

    for text in expected:
        assert text in message


def test_reader_network_inherits_port_zero() -> None:
    raw = sample()
    raw["broker"]["port"] = 0
    raw["reader_network"] = {"wifi_ssid": "nightbox"}

    message = config_error(raw)

    assert "reader_network.broker_port is 0" in message
