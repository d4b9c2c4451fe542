"""What the setup wizard writes: money in minor units, the site file, progress."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from appliance.config import load_config
from tui.setup._document import build_document
from tui.setup._money import to_major_text, to_minor_units
from tui.setup._progress import (
    ProgressError,
    SetupValues,
    load_progress,
    progress_path,
    save_progress,
)
from tui.setup._write import SetupError, site_file_text, write_setup

PIN = "739154"


def finished_values(**changes: object) -> SetupValues:
    values = SetupValues(
        site_id="club",
        site_name="Club",
        timezone="Europe/Berlin",
        zones="door",
        exits="x1 door",
        kit_stations="k1 door",
        kit_stock={"k1": "40"},
        ibeacon_uuid="6e1f3a52-94c7-4d0b-8a26-d35f0c7e19b4",
        eddystone_namespace="8b2e5c0f71a94d36e2c8",
    )
    for name, value in changes.items():
        setattr(values, name, value)
    return values


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("15", "EUR", 1500),
        ("15.5", "EUR", 1550),
        ("0.01", "EUR", 1),
        ("1500", "JPY", 1500),
        ("1.234", "KWD", 1234),
    ],
)
def test_amounts_convert_to_minor_units(text: str, currency: str, minor: int) -> None:
    assert to_minor_units(text, currency) == minor


@pytest.mark.parametrize("text", ["0", "0.00", "-1", "1,50", "", "1e3", "15.001"])
def test_bad_amounts_are_rejected_with_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)[:10].replace("\\", "\\\\")):
        to_minor_units(text, "EUR")


def test_minor_units_format_back() -> None:
    assert to_major_text(25050, "EUR") == "250.50"
    assert to_major_text(1500, "JPY") == "1500"
    assert to_major_text(5, "KWD") == "0.005"


def test_site_file_round_trips_odd_names(tmp_path: Path) -> None:
    name = 'Bar "Zum Hafen" \\ #1 [b]neu[/b] Ünïcode'
    values = finished_values(site_name=name)
    text = site_file_text(values)
    assert tomllib.loads(text) == build_document(values)
    path = tmp_path / "site.toml"
    path.write_text(text)
    assert load_config(path).site_name == name


def test_box_set_up_by_first_boot_keeps_the_system_broker(tmp_path: Path) -> None:
    values = finished_values(broker_mode="system", broker_config_dir="broker")
    text = site_file_text(values)
    assert tomllib.loads(text) == build_document(values)
    path = tmp_path / "site.toml"
    path.write_text(text)
    broker = load_config(path).broker
    assert broker.mode == "system"
    assert broker.config_dir == tmp_path / "broker"
    assert (broker.host, broker.port) == ("0.0.0.0", 1883)


def test_wizard_elsewhere_lets_the_box_start_its_broker(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site_file_text(finished_values()))
    assert load_config(path).broker.mode == "auto"
    assert "config_dir" not in path.read_text()


def test_write_refuses_a_file_setup_did_not_write(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    config_path.write_text("# hand-written\n")
    with pytest.raises(SetupError, match="already exists"):
        write_setup(config_path, finished_values(), PIN)
    assert config_path.read_text() == "# hand-written\n"
    assert not (tmp_path / "data").exists()


def test_interrupted_write_is_redone_keeping_secrets(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    values = finished_values()
    save_progress(config_path, values)
    first = write_setup(config_path, values, PIN)
    broker = first.data_dir / "secrets" / "broker.json"
    passwords = json.loads(broker.read_text())
    key = (first.data_dir / "secrets" / "edge-token-key.pem").read_bytes()
    assert not progress_path(config_path).exists()

    # A write that stopped after the site file leaves the progress file.
    save_progress(config_path, values)
    second = write_setup(config_path, values, "802613")
    assert second.box_id == first.box_id
    assert json.loads(broker.read_text()) == passwords
    assert (first.data_dir / "secrets" / "edge-token-key.pem").read_bytes() == key


def test_progress_keeps_answers_and_rejects_a_broken_file(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    values = finished_values(completed=["site", "network"])
    save_progress(config_path, values)
    loaded = load_progress(config_path)
    assert loaded == values
    assert loaded is not None and loaded.first_unfinished() == 2
    progress_path(config_path).write_text('{"values": {"site_id": 7}}')
    with pytest.raises(ProgressError, match="site_id = 7"):
        load_progress(config_path)
    progress_path(config_path).write_text("not json")
    with pytest.raises(ProgressError, match="move it away"):
        load_progress(config_path)
