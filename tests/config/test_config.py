"""The TOML site configuration: the sample parses, and every bad value is named.

Each bad-value case changes one key of the sample site and expects a
ConfigError whose message names that key and the value that was given.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance.config import (
    BrokerConfig,
    CheckoutConfig,
    ReaderConfig,
    load_config,
    parse_config,
)
from appliance.errors import ConfigError

SAMPLE = Path(appliance.__file__).parent / "samples" / "site.toml"
SAMPLE_RAW: dict[str, Any] = tomllib.loads(SAMPLE.read_text())

Change = Callable[[dict[str, Any]], None]


def sample() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE_RAW)


def parse(raw: dict[str, Any]) -> Any:
    return parse_config(raw, base_dir=SAMPLE.parent)


def test_config_sample_accepted() -> None:
    config = parse(sample())

    assert config.site_id == "sample"
    assert config.site_name == "Sample venue"
    assert config.box_id == "box-1"
    assert config.data_dir == (SAMPLE.parent / "../../var/sample").resolve()
    assert config.ibeacon_uuid == bytes.fromhex("426c7565436861726d426561636f6e73")
    assert config.altbeacon_prefix == bytes.fromhex("2f234454cf6d4a0fadf2f4911ba9ffa6")
    assert config.eddystone_namespace == bytes.fromhex("12345678901234678901")
    assert [band.id for band in config.bands] == ["band-eid-1"]
    assert config.bands[0].eid_identity_key == bytes.fromhex(
        "00112233445566778899aabbccddeeff"
    )
    assert config.bands[0].eid_rotation_exponent == 12
    assert config.readers == (
        ReaderConfig("exit-1", "exit", zone="main-door"),
        ReaderConfig("exit-2", "exit", threshold_dbm=-64.0, zone="main-door"),
        ReaderConfig("kit-1", "kit", kit_stock=150),
    )
    assert config.checkout == CheckoutConfig()
    assert config.broker.mode == "auto"
    assert config.scanner == "none"
    assert config.kits_require_checkout is False
    assert config.kit_low_stock == 10
    assert config.kits_offline_rule == "refuse"
    assert config.reader_network is None
    assert config.coupon_ttl_s == 168 * 3600.0


def test_config_load_matches_parse() -> None:
    assert load_config(SAMPLE) == parse(sample())


def test_config_minimal_defaults(tmp_path: Path) -> None:
    raw = {
        "site": {"id": "venue"},
        "box": {},
        "readers": [{"id": "exit-1", "role": "exit"}],
    }

    config = parse_config(raw, base_dir=tmp_path)

    assert config.site_name == "venue"
    assert config.box_id == "box-1"
    assert config.data_dir == tmp_path / "var" / "nightbox"
    assert config.readers == (ReaderConfig("exit-1", "exit"),)
    assert config.broker == BrokerConfig()
    assert config.ibeacon_uuid is None
    assert config.coupon_offer == "Recovery microcation: 20% off"


def test_config_scanner_alone_is_enough(tmp_path: Path) -> None:
    raw = {"site": {"id": "venue"}, "box": {"scanner": "simulator"}}

    config = parse_config(raw, base_dir=tmp_path)

    assert config.readers == (ReaderConfig("box-1", "exit"),)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "0.0.0.0", "::1", "fe80::1%eth0", "box.local", "broker-1", "a.b."],
)
def test_config_broker_host_accepted(host: str) -> None:
    raw = sample()
    raw["broker"]["host"] = host

    assert parse(raw).broker.host == host


def test_config_exit_reader_stock_zero_accepted() -> None:
    # Generated configurations write kit_stock = 0 for every reader.
    raw = sample()
    raw["readers"][0]["kit_stock"] = 0

    assert parse(raw).readers[0] == ReaderConfig("exit-1", "exit", zone="main-door")


def test_config_limits_accepted() -> None:
    raw = sample()
    raw["readers"][2]["kit_stock"] = 1_000_000
    raw["bands"]["registered"][0]["eid_clock_offset_s"] = 2**32 - 1

    config = parse(raw)

    assert config.readers[2].kit_stock == 1_000_000
    assert config.bands[0].eid_clock_offset_s == 2**32 - 1


def test_config_scanner_adds_box_reader() -> None:
    raw = sample()
    raw["box"]["scanner"] = "simulator"

    config = parse(raw)

    assert config.reader("box-1") == ReaderConfig("box-1", "exit")


def test_config_external_broker() -> None:
    raw = sample()
    raw["broker"] = {"mode": "external", "host": "127.0.0.1", "port": 1884}

    assert parse(raw).broker == BrokerConfig("external", "127.0.0.1", 1884)


def put(path: str, value: Any) -> Change:
    """Return a change that sets ``path`` (dots and [index]) in the document."""

    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return change


def drop(path: str) -> Change:
    def change(raw: dict[str, Any]) -> None:
        del raw[path]

    return change


def duplicate_reader(raw: dict[str, Any]) -> None:
    raw["readers"].append({"id": "exit-1", "role": "exit"})


def duplicate_band(raw: dict[str, Any]) -> None:
    raw["bands"]["registered"].append({"id": "band-eid-1"})


def duplicate_alias(raw: dict[str, Any]) -> None:
    raw["bands"]["registered"][0]["aliases"] = ["ib-1-2"]
    raw["bands"]["registered"].append({"id": "band-2", "aliases": ["ib-1-2"]})


def external_without_port(raw: dict[str, Any]) -> None:
    raw["broker"] = {"mode": "external"}


BAD_VALUES: list[tuple[str, Change, list[str]]] = [
    ("unknown-top-key", put("extras", 1), ["'extras'", "top level"]),
    ("unknown-checkout-key", put("checkout.dwell_s", 1), ["'dwell_s'", "[checkout]"]),
    ("unknown-reader-key", put("readers[0].stock", 3), ["'stock'", "readers[0]"]),
    ("missing-site", drop("site"), ["[site]", "missing"]),
    ("site-id-spaces", put("site.id", "Main Hall"), ["site.id", "'Main Hall'"]),
    ("site-name-number", put("site.name", 7), ["site.name", "7"]),
    (
        "uuid-short",
        put("bands.ibeacon_uuid", "426c7565-4368"),
        ["bands.ibeacon_uuid", "'426c7565-4368'", "16"],
    ),
    (
        "uuid-not-hex",
        put("bands.ibeacon_uuid", "426c7565-4368-6172-6d42-6561636f6eZZ"),
        ["bands.ibeacon_uuid", "6eZZ", "not hex"],
    ),
    (
        "namespace-long",
        put("bands.eddystone_namespace", "00" * 16),
        ["bands.eddystone_namespace", "00" * 16, "10"],
    ),
    (
        "prefix-number",
        put("bands.altbeacon_prefix", 12),
        ["bands.altbeacon_prefix", "12"],
    ),
    (
        "threshold-too-high",
        put("checkout.threshold_dbm", -10),
        ["checkout.threshold_dbm", "-10", "maximum"],
    ),
    (
        "threshold-text",
        put("checkout.threshold_dbm", "loud"),
        ["checkout.threshold_dbm", "'loud'"],
    ),
    (
        "threshold-nan",
        put("checkout.threshold_dbm", math.nan),
        ["checkout.threshold_dbm", "nan"],
    ),
    ("ttl-inf", put("coupons.ttl_h", math.inf), ["coupons.ttl_h", "inf"]),
    (
        "min-adverts-fraction",
        put("checkout.min_adverts", 1.5),
        ["checkout.min_adverts", "1.5"],
    ),
    (
        "min-adverts-bool",
        put("checkout.min_adverts", True),
        ["checkout.min_adverts", "True"],
    ),
    ("silence-short", put("checkout.silence_s", 0.5), ["checkout.silence_s", "0.5"]),
    ("reader-role", put("readers[1].role", "door"), ["readers[1].role", "'door'"]),
    ("reader-id", put("readers[0].id", "Exit 1"), ["readers[0].id", "'Exit 1'"]),
    ("reader-duplicate", duplicate_reader, ["readers", "'exit-1'", "twice"]),
    (
        "reader-stock-negative",
        put("readers[2].kit_stock", -1),
        ["readers[2].kit_stock", "-1"],
    ),
    (
        "reader-threshold-low",
        put("readers[0].threshold_dbm", -200),
        ["readers[0].threshold_dbm", "-200"],
    ),
    ("readers-table", put("readers", {"id": "exit-1"}), ["readers", "array"]),
    ("broker-mode", put("broker.mode", "cloud"), ["broker.mode", "'cloud'"]),
    ("broker-port-range", put("broker.port", 70000), ["broker.port", "70000"]),
    ("broker-port-text", put("broker.port", "1883"), ["broker.port", "'1883'"]),
    ("external-no-port", external_without_port, ["broker.port", "external"]),
    ("scanner", put("box.scanner", "usb"), ["box.scanner", "'usb'"]),
    (
        "require-checkout-text",
        put("kits.require_checkout", "yes"),
        ["kits.require_checkout", "'yes'"],
    ),
    ("low-stock", put("kits.low_stock", -5), ["kits.low_stock", "-5"]),
    (
        "eid-key-short",
        put("bands.registered[0].eid_identity_key", "0011"),
        ["bands.registered[0].eid_identity_key", "'0011'", "16"],
    ),
    (
        "eid-exponent",
        put("bands.registered[0].eid_rotation_exponent", 16),
        ["bands.registered[0].eid_rotation_exponent", "16"],
    ),
    (
        "eid-offset-nan",
        put("bands.registered[0].eid_clock_offset_s", math.nan),
        ["bands.registered[0].eid_clock_offset_s", "nan"],
    ),
    (
        "aliases-string",
        put("bands.registered[0].aliases", "ib-1-2"),
        ["bands.registered[0].aliases", "'ib-1-2'"],
    ),
    ("band-duplicate", duplicate_band, ["bands.registered", "'band-eid-1'", "twice"]),
    (
        "alias-not-band-id",
        put("bands.registered[0].aliases", ["IB 1 2"]),
        ["bands.registered[0].aliases", "'IB 1 2'"],
    ),
    ("alias-duplicate", duplicate_alias, ["aliases", "'ib-1-2'", "twice"]),
    ("data-dir-empty", put("box.data_dir", ""), ["box.data_dir", "''", "empty"]),
    (
        "data-dir-is-file",
        # Relative to the sample's folder, so this names the sample itself.
        put("box.data_dir", "site.toml"),
        ["box.data_dir", "'site.toml'", "not a directory"],
    ),
    (
        "data-dir-nul",
        put("box.data_dir", "var/\0box"),
        ["box.data_dir", "not a usable path"],
    ),
    (
        "reader-stock-huge",
        put("readers[2].kit_stock", 10**20),
        ["readers[2].kit_stock", str(10**20), "maximum 1000000"],
    ),
    (
        "reader-stock-on-exit",
        put("readers[0].kit_stock", 5),
        ["readers[0].kit_stock", "5", "exit reader", "role = 'kit'"],
    ),
    ("offer-empty", put("coupons.offer", ""), ["coupons.offer", "''", "empty"]),
    ("offer-blank", put("coupons.offer", "   "), ["coupons.offer", "empty"]),
    ("no-readers", put("readers", []), ["no readers", "[[readers]]"]),
    (
        "eid-offset-negative",
        put("bands.registered[0].eid_clock_offset_s", -1),
        ["bands.registered[0].eid_clock_offset_s", "-1", "minimum"],
    ),
    (
        "eid-offset-beyond-32-bits",
        put("bands.registered[0].eid_clock_offset_s", 2**32),
        ["bands.registered[0].eid_clock_offset_s", str(2**32), "maximum"],
    ),
    (
        "broker-host-spaces",
        put("broker.host", "my broker"),
        ["broker.host", "'my broker'", "host name"],
    ),
    ("broker-host-empty", put("broker.host", ""), ["broker.host", "''"]),
    (
        "broker-host-bad-ipv4",
        put("broker.host", "256.1.1.1"),
        ["broker.host", "'256.1.1.1'", "IPv4"],
    ),
    (
        "broker-host-url",
        put("broker.host", "mqtt://box.local"),
        ["broker.host", "'mqtt://box.local'"],
    ),
    (
        "broker-host-label-hyphen",
        put("broker.host", "-box.local"),
        ["broker.host", "'-box.local'"],
    ),
    (
        "broker-host-long-label",
        put("broker.host", "a" * 64 + ".local"),
        ["broker.host", "a" * 40],
    ),
    ("broker-host-number", put("broker.host", 127), ["broker.host", "127"]),
    (
        "site-name-nul",
        put("site.name", "Club\x00Nord"),
        ["site.name", "control character U+0000 at position 4"],
    ),
    (
        "site-name-escape",
        put("site.name", "\x1b[31mClub"),
        ["site.name", "control character U+001B at position 0"],
    ),
    (
        "site-name-c1",
        put("site.name", "Club\x85"),
        ["site.name", "control character U+0085"],
    ),
    (
        "site-name-bidi-override",
        put("site.name", "Evil\u202ename"),
        ["site.name", "control character U+202E at position 4"],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [(change, expected) for _name, change, expected in BAD_VALUES],
    ids=[name for name, _change, _expected in BAD_VALUES],
)
def test_config_bad_value_named(change: Change, expected: list[str]) -> None:
    raw = sample()
    change(raw)

    with pytest.raises(ConfigError) as caught:
        parse(raw)

    message = str(caught.value)
    for text in expected:
        assert text in message


def test_config_site_name_unicode_accepted() -> None:
    raw = sample()
    raw["site"]["name"] = "Club Nörd ✨"

    assert parse(raw).site_name == "Club Nörd ✨"


def test_config_error_is_value_error() -> None:
    # Callers that only know the builtins still catch configuration errors.
    raw = sample()
    raw["site"]["id"] = "Main Hall"

    with pytest.raises(ValueError, match=r"site\.id"):
        parse(raw)


def test_config_load_names_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SAMPLE.read_text().replace('id = "exit-2"', 'id = "exit-1"'))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(path) in str(caught.value)
    assert "'exit-1'" in str(caught.value)


def test_config_load_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[site\nid = 'x'\n")

    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path)

    assert str(path) in str(caught.value)


def test_config_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="not found") as caught:
        load_config(path)

    assert str(path) in str(caught.value)


def test_config_load_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'[site]\nid = "\xff\xfe\x00\x01"\n')

    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load_config(path)

    assert str(path) in str(caught.value)
    assert "0xff" in str(caught.value)


def test_config_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as caught:
        load_config(tmp_path)

    assert str(tmp_path) in str(caught.value)


def test_config_load_through_file(tmp_path: Path) -> None:
    # A path that runs through a file gives NotADirectoryError, not "not found".
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "site.toml"

    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(path)

    assert str(path) in str(caught.value)
