"""Reads and atomic rewrites of the site configuration file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.remote.site_file import (
    HIDDEN,
    append_array_table,
    config_get,
    config_set,
    replace_config,
)

SITE_TOML = """\
# The test venue.
[site]
id = "club"
name = "Club"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"

[[readers]]
id = "kit-1"
role = "kit"
kit_stock = 20

[wallet]
currency = "EUR"
max_charge = 20000
"""
# An Eddystone-EID identity key, which config_get must never return.
IDENTITY_KEY = "0123456789abcdef0123456789abcdef"
KEYED_BANDS = f"""
[[bands.registered]]
id = "eid-1"
eid_identity_key = "{IDENTITY_KEY}"
"""


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML, encoding="utf-8")
    path.chmod(0o640)
    return path


def test_get_dotted_key(site_file: Path) -> None:
    assert config_get(site_file, "wallet.max_charge") == 20000
    assert config_get(site_file, "site.name") == "Club"


def test_get_array_element(site_file: Path) -> None:
    assert config_get(site_file, "readers.1.kit_stock") == 20
    assert config_get(site_file, "readers.0") == {"id": "exit-1", "role": "exit"}


def test_get_whole_document(site_file: Path) -> None:
    document = config_get(site_file, None)
    assert document == tomllib.loads(SITE_TOML)


@pytest.fixture
def keyed_site_file(site_file: Path) -> Path:
    site_file.write_text(
        SITE_TOML + KEYED_BANDS + '\n[fleet]\noperator_keys = ["ops.pem"]\n',
        encoding="utf-8",
    )
    return site_file


def test_get_hides_identity_key(keyed_site_file: Path) -> None:
    document = config_get(keyed_site_file, None)
    band = config_get(keyed_site_file, "bands.registered.0")
    bands = config_get(keyed_site_file, "bands")
    key = config_get(keyed_site_file, "bands.registered.0.eid_identity_key")

    assert document["bands"]["registered"][0]["eid_identity_key"] == HIDDEN
    assert band == {"id": "eid-1", "eid_identity_key": HIDDEN}
    assert bands["registered"][0]["eid_identity_key"] == HIDDEN
    assert key == HIDDEN
    assert IDENTITY_KEY not in repr((document, band, bands, key))


def test_get_shows_operator_key_paths(keyed_site_file: Path) -> None:
    assert config_get(keyed_site_file, "fleet.operator_keys") == ["ops.pem"]
    assert config_get(keyed_site_file, None)["fleet"]["operator_keys"] == ["ops.pem"]


@pytest.mark.parametrize("value", ["00", "zz" + IDENTITY_KEY[2:], 5, 2**70])
def test_set_bad_identity_key_not_quoted(keyed_site_file: Path, value: object) -> None:
    before = keyed_site_file.read_bytes()

    with pytest.raises(ConfigError) as caught:
        config_set(keyed_site_file, "bands.registered.0.eid_identity_key", value)

    message = str(caught.value)
    assert "eid_identity_key is invalid" in message
    assert "32 hex digits" in message
    assert repr(value) not in message
    assert str(value) not in message
    assert caught.value.__cause__ is None
    assert keyed_site_file.read_bytes() == before


def test_replace_bad_identity_key_not_quoted(site_file: Path) -> None:
    document = tomllib.loads(SITE_TOML)
    document["bands"] = {"registered": [{"id": "eid-1", "eid_identity_key": "ab"}]}

    with pytest.raises(ConfigError) as caught:
        replace_config(site_file, document, site_id="club", box_id="box-1")

    message = str(caught.value)
    assert message.startswith("bands.registered[0].eid_identity_key is invalid")
    assert "'ab'" not in message


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("wallet.max_topup", "not set in the configuration file"),
        ("readers.5.id", "has 2 elements"),
        ("readers.first", "address an element by its index"),
        ("wallet.max_charge.x", "is a value"),
        ("wallet..max_charge", "empty part"),
        ("", "is invalid"),
    ],
)
def test_get_bad_key(site_file: Path, key: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_get(site_file, key)


def test_set_writes_and_keeps_previous(site_file: Path) -> None:
    config = config_set(site_file, "wallet.max_charge", 15000)

    assert config.commerce.wallet.max_charge == 15000
    assert tomllib.loads(site_file.read_text())["wallet"]["max_charge"] == 15000
    previous = site_file.with_name("site.toml.previous")
    assert previous.read_text() == SITE_TOML
    assert site_file.stat().st_mode & 0o777 == 0o640


def test_set_creates_missing_table(site_file: Path) -> None:
    config = config_set(site_file, "kits.low_stock", 3)

    assert config.kit_low_stock == 3
    assert config_get(site_file, "kits.low_stock") == 3


def test_set_array_element(site_file: Path) -> None:
    config = config_set(site_file, "readers.0.threshold_dbm", -70)

    exit_reader = config.reader("exit-1")
    assert exit_reader is not None
    assert exit_reader.threshold_dbm == -70.0


def test_set_null_removes_key(site_file: Path) -> None:
    config = config_set(site_file, "wallet.max_charge", None)

    assert "max_charge" not in config_get(site_file, "wallet")
    assert config.commerce.wallet.max_charge > 0


def test_set_invalid_value_keeps_file(site_file: Path) -> None:
    before = site_file.read_bytes()

    with pytest.raises(ConfigError, match=r"checkout\.threshold_dbm"):
        config_set(site_file, "checkout.threshold_dbm", 5)

    assert site_file.read_bytes() == before
    assert not site_file.with_name("site.toml.previous").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("site.id", "other"),
        ("box.id", "box-9"),
        ("box", {"id": "box-9", "data_dir": "data"}),
        ("site", {"id": "other"}),
        ("box.id", None),
    ],
)
def test_set_identity_rejected(site_file: Path, key: str, value: object) -> None:
    before = site_file.read_bytes()

    with pytest.raises(ConfigError, match="cannot be changed remotely"):
        config_set(site_file, key, value)

    assert site_file.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("box.data_dir", "../../tmp/evil"),
        ("box.data_dir", None),
        ("box", {"id": "box-1", "data_dir": "elsewhere"}),
        ("box", {"id": "box-1"}),
        ("broker.port", 1883),
        ("broker", {"mode": "external", "host": "10.0.0.9", "port": 1883}),
        ("sync", None),
        ("sync.broker", "mqtts://elsewhere.example:8883"),
        ("fleet", None),
        ("fleet.operator_keys", []),
        ("fleet.telemetry_interval_s", 5),
    ],
)
def test_set_local_only_rejected(site_file: Path, key: str, value: object) -> None:
    before = site_file.read_bytes()

    with pytest.raises(ConfigError) as caught:
        config_set(site_file, key, value)

    message = str(caught.value)
    assert "can be changed only in" in message
    assert "configuration file on the box" in message
    assert message.startswith(key.split(".")[0])
    assert site_file.read_bytes() == before


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "finite"),
        (2**70, "outside the signed 64-bit range"),
        (2**70, str(2**70)),
        (1.2345678901234568e29, "outside the signed 64-bit range"),
        (-1e19, "outside the signed 64-bit range"),
        ([1, None], "null"),
        ({"a": None}, "null"),
        (object(), "TOML cannot hold"),
    ],
)
def test_set_non_toml_value_rejected(
    site_file: Path, value: object, words: str
) -> None:
    before = site_file.read_bytes()

    with pytest.raises(ConfigError, match=words):
        config_set(site_file, "site.name", value)

    assert site_file.read_bytes() == before


def test_set_site_name_control_rejected(site_file: Path) -> None:
    before = site_file.read_bytes()

    with pytest.raises(ConfigError, match=r"control character U\+001B"):
        config_set(site_file, "site.name", "\x1b]0;owned\x07")

    assert site_file.read_bytes() == before


def test_replace_writes_document(site_file: Path) -> None:
    document = tomllib.loads(SITE_TOML)
    document["site"]["name"] = "Club Nord"

    config = replace_config(site_file, document, site_id="club", box_id="box-1")

    assert config.site_name == "Club Nord"
    assert config_get(site_file, "site.name") == "Club Nord"
    assert site_file.with_name("site.toml.previous").read_text() == SITE_TOML


@pytest.mark.parametrize(
    ("site_id", "box_id", "words"),
    [("annex", "box-1", "site.id"), ("club", "box-2", "box.id")],
)
def test_replace_other_identity_rejected(
    site_file: Path, site_id: str, box_id: str, words: str
) -> None:
    before = site_file.read_bytes()

    with pytest.raises(ConfigError, match=words):
        replace_config(
            site_file, tomllib.loads(SITE_TOML), site_id=site_id, box_id=box_id
        )

    assert site_file.read_bytes() == before


@pytest.mark.parametrize(
    ("table", "value", "key"),
    [
        ("box", {"id": "box-1", "data_dir": "../../tmp/evil"}, "box.data_dir"),
        ("box", {"id": "box-1"}, "box.data_dir"),
        ("broker", {"mode": "external", "host": "10.0.0.9", "port": 1883}, "broker"),
        ("sync", {"broker": "mqtts://elsewhere.example:8883"}, "sync"),
        ("fleet", {"operator_keys": []}, "fleet"),
    ],
)
def test_replace_local_only_change_rejected(
    site_file: Path, table: str, value: dict[str, object], key: str
) -> None:
    document = tomllib.loads(SITE_TOML)
    document[table] = value
    before = site_file.read_bytes()

    with pytest.raises(ConfigError) as caught:
        replace_config(site_file, document, site_id="club", box_id="box-1")

    message = str(caught.value)
    assert message.startswith(f"{key} differs from the configuration file on the box")
    assert "can be changed only in that file" in message
    assert site_file.read_bytes() == before


def test_replace_equal_local_tables_accepted(site_file: Path) -> None:
    text = SITE_TOML + "\n[fleet]\ntelemetry_interval_s = 10\n\n[broker]\nport = 0\n"
    site_file.write_text(text, encoding="utf-8")
    document = tomllib.loads(text)
    # Parsed values are compared, so 10.0 equals the file's 10, and an
    # empty table equals one that is left out.
    document["fleet"]["telemetry_interval_s"] = 10.0
    document["sync"] = {}
    document["site"]["name"] = "Club Nord"

    config = replace_config(site_file, document, site_id="club", box_id="box-1")

    assert config.site_name == "Club Nord"


def test_replace_other_box_named_first(site_file: Path) -> None:
    document = tomllib.loads(SITE_TOML)
    document["box"] = {"id": "box-2", "data_dir": "elsewhere"}
    document["readers"] = []
    document["wallet"]["max_charge"] = float("nan")

    with pytest.raises(ConfigError) as caught:
        replace_config(site_file, document, site_id="club", box_id="box-1")

    assert str(caught.value).startswith("box.id = 'box-2' differs from this box's id")


def test_replace_invalid_document_keeps_file(site_file: Path) -> None:
    document = tomllib.loads(SITE_TOML)
    document["readers"] = []
    before = site_file.read_bytes()

    with pytest.raises(ConfigError, match="no readers"):
        replace_config(site_file, document, site_id="club", box_id="box-1")

    assert site_file.read_bytes() == before


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config_get(tmp_path / "absent.toml", None)


@pytest.fixture
def linked_site_file(site_file: Path) -> Path:
    """A symlink ``link.toml`` to the site file, renamed ``real-site.toml``."""
    real = site_file.with_name("real-site.toml")
    site_file.rename(real)
    link = site_file.with_name("link.toml")
    link.symlink_to(real.name)
    return link


def test_set_through_symlink(linked_site_file: Path) -> None:
    config_set(linked_site_file, "wallet.max_charge", 15000)

    real = linked_site_file.with_name("real-site.toml")
    assert linked_site_file.is_symlink()
    assert tomllib.loads(real.read_text())["wallet"]["max_charge"] == 15000
    assert real.with_name("real-site.toml.previous").read_text() == SITE_TOML
    assert not linked_site_file.with_name("link.toml.previous").exists()
    assert real.stat().st_mode & 0o777 == 0o640


def test_replace_through_symlink(linked_site_file: Path) -> None:
    document = tomllib.loads(SITE_TOML)
    document["wallet"]["max_charge"] = 9000
    replace_config(linked_site_file, document, site_id="club", box_id="box-1")

    real = linked_site_file.with_name("real-site.toml")
    assert linked_site_file.is_symlink()
    assert tomllib.loads(real.read_text())["wallet"]["max_charge"] == 9000
    assert real.with_name("real-site.toml.previous").read_text() == SITE_TOML


def test_append_through_symlink(linked_site_file: Path) -> None:
    table = {"id": "exit-2", "role": "exit"}
    config = append_array_table(
        linked_site_file, "readers", table, site_id="club", box_id="box-1"
    )

    real = linked_site_file.with_name("real-site.toml")
    assert config.reader("exit-2") is not None
    assert linked_site_file.is_symlink()
    assert real.read_text().startswith(SITE_TOML)
    assert tomllib.loads(real.read_text())["readers"][-1] == table
    assert real.with_name("real-site.toml.previous").read_text() == SITE_TOML
    assert not linked_site_file.with_name("link.toml.previous").exists()
    assert real.stat().st_mode & 0o777 == 0o640
