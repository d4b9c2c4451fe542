"""``nightbox reader provision`` on a board that already runs MicroPython."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.config import load_config
from hardware.reader_board import BoardSimulator
from provisioning.readers import BoardError
from tests.reader_provisioning._boards import (
    PROBE_TIMEOUT_S,
    RecordingProgress,
    board_config,
    provision,
)
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    board_bundle_fixture,
    micropython_board_fixture,
    mip_index_fixture,
    site_file_fixture,
    umqtt_sources_fixture,
)

TIMEOUT_S = 120.0


def test_micropython_board_not_flashed(
    site_file: Path, board_bundle: Path, micropython_board: BoardSimulator
) -> None:
    progress = RecordingProgress()
    result = provision(site_file, micropython_board, progress, role="kit", kit_stock=12)
    assert not result.flashed
    assert micropython_board.flash_writes == []
    assert "flash" not in progress.stages
    settings = board_config(micropython_board)
    assert settings["reader"] == "kit-2"
    assert settings["role"] == "kit"
    assert settings["kit"]["offline_rule"] == "issue-once"
    kit = load_config(site_file).reader("kit-2")
    assert kit is not None
    assert kit.kit_stock == 12


def test_second_run_skips_files(
    site_file: Path,
    board_bundle: Path,
    micropython_board: BoardSimulator,
    tmp_path: Path,
) -> None:
    first = provision(site_file, micropython_board, reader_id="exit-7")
    site_before = site_file.read_bytes()
    second = provision(site_file, micropython_board, reader_id="exit-7")
    assert second.copied == []
    assert sorted(second.unchanged) == sorted(first.copied)
    assert not second.reader_file_written
    assert not second.site_file_changed
    assert not second.account_created
    assert site_file.read_bytes() == site_before

    damaged = tmp_path / "mp-board" / "fs" / "lib" / "umqtt" / "simple.py"
    damaged.write_bytes(b"# damaged\n")
    third = provision(site_file, micropython_board, reader_id="exit-7")
    assert third.copied == ["lib/umqtt/simple.py"]
    expected = (board_bundle / "lib" / "umqtt" / "simple.py").read_bytes()
    assert micropython_board.files["/lib/umqtt/simple.py"] == expected


def test_serial_reader_config(
    site_file: Path, board_bundle: Path, micropython_board: BoardSimulator
) -> None:
    provision(site_file, micropython_board, uplink="serial")
    settings = board_config(micropython_board)
    assert settings["uplink"] == "serial"
    assert "wifi" not in settings
    assert "broker" not in settings
    entry = tomllib.loads(site_file.read_text())["readers"][-1]
    assert entry["uplink"] == "serial"
    assert entry["serial_port"] == micropython_board.url


def test_failed_copy_names_id(
    site_file: Path,
    board_bundle: Path,
    micropython_board: BoardSimulator,
    tmp_path: Path,
) -> None:
    # A folder where the copy writes main.py.new makes that write fail on the
    # board, after the files under lib/ were copied.
    blocker = tmp_path / "mp-board" / "fs" / "main.py.new"
    blocker.mkdir(parents=True)
    with pytest.raises(BoardError) as caught:
        provision(site_file, micropython_board)
    assert caught.value.reader_id == "exit-3"
    assert "writing /main.py on the board" in str(caught.value)
    assert "run the command again with --id exit-3" in str(caught.value)
    assert load_config(site_file).reader("exit-3") is not None

    blocker.rmdir()
    result = provision(site_file, micropython_board, reader_id="exit-3")
    assert result.copied == ["main.py"]
    assert not result.site_file_changed
    assert [reader.id for reader in load_config(site_file).readers] == [
        "exit-1",
        "exit-2",
        "kit-1",
        "exit-3",
    ]


def test_cli_failed_copy_json(
    site_file: Path,
    board_bundle: Path,
    micropython_board: BoardSimulator,
    tmp_path: Path,
) -> None:
    (tmp_path / "mp-board" / "fs" / "main.py.new").mkdir(parents=True)
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
            micropython_board.url,
            "--role",
            "exit",
            "--zone",
            "bar",
            "--probe-timeout",
            str(PROBE_TIMEOUT_S),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 4, result.stderr
    failure = json.loads(result.stdout)
    assert failure["reader"] == "exit-3"
    assert "--id exit-3" in failure["error"]
    assert "run the command again with --id exit-3" in result.stderr
