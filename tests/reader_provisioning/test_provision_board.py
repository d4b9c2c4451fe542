"""``nightbox reader provision`` on a blank simulated board: flash, copy, configure.

The simulator responds to esptool as the ESP32 ROM bootloader and runs the real
MicroPython WebAssembly port behind mpremote's raw REPL, so the same code
runs as with a board on a USB port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_config
from hardware.reader_board import BoardSimulator
from provisioning import SiteCredentials
from provisioning.readers import BundleError, verify_bundle
from tests.reader_provisioning._boards import (
    PROBE_TIMEOUT_S,
    RecordingProgress,
    board_config,
    provision,
)
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    WIFI_PASSWORD,
    blank_board_fixture,
    board_bundle_fixture,
    mip_index_fixture,
    site_file_fixture,
    umqtt_sources_fixture,
)

TIMEOUT_S = 120.0
STAGES = ["bundle", "probe", "register", "flash", "copy", "config", "broker"]


def test_blank_board_flashed(
    site_file: Path, board_bundle: Path, blank_board: BoardSimulator
) -> None:
    progress = RecordingProgress()
    result = provision(site_file, blank_board, progress)
    assert result.flashed
    assert result.chip == "ESP32"
    assert blank_board.has_micropython
    assert blank_board.flash_writes[0][0] == 0x1000
    assert progress.stages == STAGES
    flash_labels = {
        label for name, label, _done, _total in progress.percents if name == "flash"
    }
    assert flash_labels == {"micropython.bin"}


def test_blank_board_files(
    site_file: Path, board_bundle: Path, blank_board: BoardSimulator
) -> None:
    result = provision(site_file, blank_board)
    manifest = verify_bundle(board_bundle)
    assert sorted(result.copied) == sorted(file.path for file in manifest.board_files)
    for file in manifest.board_files:
        on_board = blank_board.files["/" + file.path]
        assert on_board == (board_bundle / file.path).read_bytes(), file.path
    assert "/micropython.bin" not in blank_board.files
    assert "/manifest.json" not in blank_board.files

    config = load_config(site_file)
    reader = config.reader("exit-3")
    assert reader is not None
    assert reader.zone == "back-door"
    credentials = SiteCredentials(config.data_dir / "secrets" / "broker.json")
    settings = board_config(blank_board)
    assert settings["reader"] == "exit-3"
    assert settings["site"] == "test"
    assert settings["uplink"] == "wifi"
    assert settings["wifi"] == {"ssid": "nightbox", "password": WIFI_PASSWORD}
    assert settings["broker"] == {
        "host": "192.168.4.1",
        "port": 1883,
        "username": "reader-exit-3",
        "password": credentials.account("reader-exit-3").password,
    }


def test_tampered_bundle_untouched_board(
    site_file: Path, board_bundle: Path, blank_board: BoardSimulator
) -> None:
    main = board_bundle / "main.py"
    main.write_bytes(main.read_bytes() + b"\n")
    site_before = site_file.read_bytes()
    with pytest.raises(BundleError, match=r"main\.py has \d+ bytes"):
        provision(site_file, blank_board)
    assert blank_board.flash_writes == []
    assert blank_board.files == {}
    assert site_file.read_bytes() == site_before


def test_cli_provision_json(
    site_file: Path, board_bundle: Path, blank_board: BoardSimulator
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "reader",
            "provision",
            "--config",
            str(site_file),
            "--port",
            blank_board.url,
            "--role",
            "exit",
            "--zone",
            "side-door",
            "--probe-timeout",
            str(PROBE_TIMEOUT_S),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["reader"] == "exit-3"
    assert summary["zone"] == "side-door"
    assert summary["flashed"] is True
    assert summary["box_reloaded"] is False
    assert "password" not in result.stdout
    assert WIFI_PASSWORD not in result.stdout + result.stderr
    stages = {line.split(":")[0] for line in result.stderr.splitlines()}
    assert set(STAGES) <= stages
    assert "flash: micropython.bin 100%" in result.stderr
    assert "copy: main.py 100%" in result.stderr
    assert board_config(blank_board)["zone"] == "side-door"
