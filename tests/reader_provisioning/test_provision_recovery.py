"""Provisioning that fails part way, runs again, or meets a port that is taken."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import cli
from appliance.config import load_config
from hardware.reader_board import BoardSimulator
from provisioning.readers import (
    BoardError,
    BoardNotFoundError,
    ProvisionResult,
    ReaderArgumentError,
    ReaderRequest,
    provision_reader,
)
from provisioning.readers import provision as provision_module
from provisioning.readers.board import open_micropython
from provisioning.readers.provision import _register
from tests.reader_provisioning._boards import (
    PROBE_TIMEOUT_S,
    RecordingProgress,
    fake_box,
    provision,
)
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    blank_board_fixture,
    board_bundle_fixture,
    micropython_board_fixture,
    mip_index_fixture,
    site_file_fixture,
    umqtt_sources_fixture,
)


def test_rerun_reloads_box_missing_reader(
    site_file: Path,
    board_bundle: Path,
    micropython_board: BoardSimulator,
    tmp_path: Path,
) -> None:
    config = load_config(site_file)
    with fake_box(config.data_dir) as box:
        # The box's mosquitto started before the reader was registered.
        passwords = config.data_dir / "run" / "mosquitto.passwd"
        passwords.parent.mkdir(parents=True)
        passwords.write_text("reader-exit-1:$7$101$c2FsdA==$aGFzaA==\n")

        blocker = tmp_path / "mp-board" / "fs" / "main.py.new"
        blocker.mkdir(parents=True)
        with pytest.raises(BoardError) as caught:
            provision(site_file, micropython_board)
        assert caught.value.reader_id == "exit-3"
        assert not box.marker.exists()

        blocker.rmdir()
        progress = RecordingProgress()
        result = provision(site_file, micropython_board, progress, reader_id="exit-3")
        assert not result.site_file_changed
        assert not result.account_created
        assert result.box_pid == box.pid
        assert box.got_sighup()
        assert f"broker: the box (pid {box.pid}) restarts" in progress.messages[-1]


def stop_after(board: BoardSimulator, flash: Callable[..., str]) -> Callable[..., str]:
    """Wrap ``flash`` so the simulated board stops right after it was flashed."""

    def flash_then_stop(*args: Any, **kwargs: Any) -> str:
        chip = flash(*args, **kwargs)
        board.stop()
        return chip

    return flash_then_stop


def test_board_gone_after_flash_names_reader(
    site_file: Path,
    board_bundle: Path,
    blank_board: BoardSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        provision_module,
        "flash_micropython",
        stop_after(blank_board, provision_module.flash_micropython),
    )
    code = cli.main(
        [
            "reader",
            "provision",
            "--config",
            str(site_file),
            "--port",
            blank_board.url,
            "--role",
            "exit",
            "--zone",
            "bar",
            "--probe-timeout",
            str(PROBE_TIMEOUT_S),
            "--json",
        ]
    )
    output = capsys.readouterr()
    assert code == 4, output.err
    failure = json.loads(output.out)
    assert failure["reader"] == "exit-3"
    assert "run the command again with --id exit-3" in failure["error"]
    assert "run the command again with --id exit-3" in output.err
    assert load_config(site_file).reader("exit-3") is not None


def test_register_messages(site_file: Path) -> None:
    progress = RecordingProgress()
    result = ProvisionResult(load_config(site_file).readers[0], "/dev/ttyUSB0", "1")
    moved = ReaderRequest(
        role="exit", zone="bar", port="/dev/ttyUSB0", reader_id="exit-1"
    )
    _register(site_file, moved, progress, result)
    assert "reader exit-1 updated in" in progress.messages[-1]

    new = ReaderRequest(role="exit", zone="bar", port="/dev/ttyUSB0")
    _register(site_file, new, progress, result)
    assert "reader exit-3 added to" in progress.messages[-1]

    _register(site_file, dataclasses.replace(new, reader_id="exit-3"), progress, result)
    assert "reader exit-3 already in" in progress.messages[-1]


@pytest.fixture
def pty_port() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the controller's descriptor and the device path."""
    controller, device = os.openpty()
    tty.setraw(controller)
    os.set_blocking(controller, False)
    try:
        yield controller, os.ttyname(device)
    finally:
        os.close(device)
        os.close(controller)


def unread_bytes(controller: int) -> bytes:
    try:
        return os.read(controller, 4096)
    except BlockingIOError:
        return b""


def add_serial_reader(site_file: Path, port: str) -> None:
    """Add the serial kit reader kit-9 on ``port`` to the site file."""
    with site_file.open("a") as file:
        file.write(
            '\n[[readers]]\nid = "kit-9"\nrole = "kit"\nuplink = "serial"\n'
            f'serial_port = "{port}"\n'
        )


def test_other_readers_port_untouched(
    site_file: Path, board_bundle: Path, pty_port: tuple[int, str]
) -> None:
    controller, port = pty_port
    add_serial_reader(site_file, port)
    before = site_file.read_bytes()
    with pytest.raises(ReaderArgumentError, match="uplink of reader kit-9"):
        provision_reader(
            site_file,
            ReaderRequest(role="exit", zone="bar", port=port),
            RecordingProgress(),
            probe_timeout_s=PROBE_TIMEOUT_S,
        )
    assert unread_bytes(controller) == b""
    assert site_file.read_bytes() == before


def test_own_port_refused_while_box_runs(
    site_file: Path, board_bundle: Path, pty_port: tuple[int, str]
) -> None:
    controller, port = pty_port
    add_serial_reader(site_file, port)
    before = site_file.read_bytes()
    request = ReaderRequest(
        role="kit", zone="bar", port=port, reader_id="kit-9", uplink="serial"
    )
    with fake_box(load_config(site_file).data_dir) as box:
        with pytest.raises(ReaderArgumentError) as caught:
            provision_reader(
                site_file, request, RecordingProgress(), probe_timeout_s=1.0
            )
        assert f"running box (pid {box.pid}) holds open" in str(caught.value)
        assert "stop the box" in str(caught.value)
    assert unread_bytes(controller) == b""
    assert site_file.read_bytes() == before


def test_locked_port_reported_in_use(pty_port: tuple[int, str]) -> None:
    controller, port = pty_port
    # pyserial's exclusive=True, as the box opens a serial reader's port.
    with open(port, "rb", buffering=0) as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BoardNotFoundError) as caught:
            open_micropython(port, timeout_s=1.0)
    assert f"serial port {port} is in use by another program" in str(caught.value)
    assert "running box" in str(caught.value)
    assert unread_bytes(controller) == b""
