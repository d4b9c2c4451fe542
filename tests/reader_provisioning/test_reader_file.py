"""The content of ``/reader.json`` built from a site file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.config import load_config
from provisioning.credentials import BrokerAccount
from provisioning.readers import ReaderArgumentError, reader_settings
from provisioning.readers.reader_file import read_wifi_password
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    ALTBEACON_HEX,
    NAMESPACE_HEX,
    SITE_UUID_HEX,
    WIFI_PASSWORD,
    site_file_fixture,
    write_site,
)

ACCOUNT = BrokerAccount("reader-exit-1", "generated-secret")
TIMING = {
    "batch_ms": 1000,
    "scan_interval_us": 100000,
    "scan_window_us": 30000,
    "stall_s": 25,
    "ring_batches": 600,
    "status_s": 30,
    "watchdog_ms": 30000,
}


def test_wifi_exit_reader_fields(site_file: Path) -> None:
    config = load_config(site_file)
    network = config.reader_network
    assert network is not None
    password = read_wifi_password(network)
    settings = reader_settings(
        config, config.reader("exit-1"), account=ACCOUNT, wifi_password=password
    )
    assert settings == {
        "v": 1,
        "site": "test",
        "reader": "exit-1",
        "role": "exit",
        "zone": "main-door",
        "uplink": "wifi",
        "wifi": {"ssid": "nightbox", "password": WIFI_PASSWORD},
        "broker": {
            "host": "192.168.4.1",
            "port": 1883,
            "username": "reader-exit-1",
            "password": "generated-secret",
        },
        "bands": {
            "ibeacon_uuid": SITE_UUID_HEX,
            "altbeacon_prefix": ALTBEACON_HEX,
            "eddystone_namespace": NAMESPACE_HEX,
            "eid": False,
        },
        **TIMING,
    }


def test_serial_reader_has_no_network(tmp_path: Path) -> None:
    path = write_site(
        tmp_path,
        network=False,
        extra='\n[[readers]]\nid = "exit-9"\nrole = "exit"\nuplink = "serial"\n'
        'serial_port = "/dev/ttyUSB3"\n',
    )
    config = load_config(path)
    settings = reader_settings(
        config, config.reader("exit-9"), account=None, wifi_password=None
    )
    assert settings["uplink"] == "serial"
    assert "wifi" not in settings
    assert "broker" not in settings
    assert "kit" not in settings
    assert settings["zone"] == ""


def test_kit_reader_section(site_file: Path) -> None:
    config = load_config(site_file)
    settings = reader_settings(
        config,
        config.reader("kit-1"),
        account=BrokerAccount("reader-kit-1", "x"),
        wifi_password=WIFI_PASSWORD,
    )
    assert settings["kit"] == {
        "button_pin": 0,
        "green_pin": 25,
        "red_pin": 26,
        "buzzer_pin": None,
        "answer_ms": 800,
        "near_dbm": -60,
        "offline_rule": "issue-once",
    }
    assert settings["role"] == "kit"


def test_eid_set_by_registered_key(tmp_path: Path) -> None:
    path = write_site(
        tmp_path,
        extra='\n[[bands.registered]]\nid = "band-eid-1"\n'
        'eid_identity_key = "000102030405060708090a0b0c0d0e0f"\n',
    )
    config = load_config(path)
    settings = reader_settings(
        config, config.reader("exit-2"), account=ACCOUNT, wifi_password="password1"
    )
    assert settings["bands"]["eid"] is True


def test_missing_network_rejected(tmp_path: Path) -> None:
    config = load_config(write_site(tmp_path, network=False))
    with pytest.raises(ReaderArgumentError, match=r"\[reader_network\]"):
        reader_settings(
            config, config.reader("exit-1"), account=ACCOUNT, wifi_password=None
        )


@pytest.mark.parametrize("password", ["short", "x" * 64, "tab\there-is-bad"])
def test_bad_wifi_password_hidden(tmp_path: Path, password: str) -> None:
    config = load_config(write_site(tmp_path))
    assert config.reader_network is not None
    (tmp_path / "wifi-password.txt").write_text(password)
    with pytest.raises(ReaderArgumentError) as caught:
        read_wifi_password(config.reader_network)
    assert "wifi-password.txt" in str(caught.value)
    assert password not in str(caught.value)


def test_hex_key_password_accepted(tmp_path: Path) -> None:
    config = load_config(write_site(tmp_path))
    assert config.reader_network is not None
    key = "0123456789abcdef" * 4
    (tmp_path / "wifi-password.txt").write_text(key + "\r\n")
    assert read_wifi_password(config.reader_network) == key


def test_missing_password_file(tmp_path: Path) -> None:
    config = load_config(write_site(tmp_path))
    assert config.reader_network is not None
    (tmp_path / "wifi-password.txt").unlink()
    with pytest.raises(ReaderArgumentError, match="cannot read the Wi-Fi password"):
        read_wifi_password(config.reader_network)


def test_password_second_line_rejected(tmp_path: Path) -> None:
    config = load_config(write_site(tmp_path))
    assert config.reader_network is not None
    (tmp_path / "wifi-password.txt").write_text(WIFI_PASSWORD + "\nguest network\n")
    with pytest.raises(ReaderArgumentError) as caught:
        read_wifi_password(config.reader_network)
    assert "has more than one line" in str(caught.value)
    assert "must contain only the network's password" in str(caught.value)
    assert WIFI_PASSWORD not in str(caught.value)


def test_readable_password_file_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_site(tmp_path))
    assert config.reader_network is not None
    password_file = tmp_path / "wifi-password.txt"
    password_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_wifi_password(config.reader_network) == WIFI_PASSWORD
    assert f"chmod 600 {password_file}" in caplog.text
    assert WIFI_PASSWORD not in caplog.text


def test_private_password_file_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_site(tmp_path))
    assert config.reader_network is not None
    with caplog.at_level(logging.WARNING):
        assert read_wifi_password(config.reader_network) == WIFI_PASSWORD
    assert caplog.records == []
