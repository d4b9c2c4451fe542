"""The simulated board running MicroPython, driven by mpremote 1.29 and by hand."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from esptool.targets.esp32 import ESP32ROM
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from hardware.reader_board import BoardSimulator, MicroPythonRuntimeError

MAIN_PY = b"print('reader main')\n" * 200
READER_JSON = b'{"v": 1, "reader": "exit-1"}'


@pytest.fixture
def board(tmp_path):
    with BoardSimulator(tmp_path / "board", micropython=True) as sim:
        yield sim


@pytest.fixture
def transport(board):
    link = SerialTransport(board.url, timeout=5)
    try:
        link.enter_raw_repl(timeout_overall=10)
        yield link
    finally:
        link.close()


def test_raw_repl_exec_and_eval(transport):
    assert transport.eval("1 + 2") == 3
    assert (
        transport.exec("import sys; print(sys.implementation.name)") == b"micropython\n"
    )
    assert transport.eval("__import__('os').uname().sysname") == "esp32"
    assert transport.eval("len(__import__('machine').unique_id())") == 6
    with pytest.raises(TransportError):
        transport.exec("raise ValueError('bad config key')")


def test_raw_paste_used(board, transport):
    source = "total = 0\n" + "total += 1\n" * 300 + "print(total)\n"
    assert transport.exec(source) == b"300\n"
    assert transport.use_raw_paste is True
    with pytest.raises(TransportError, match="ZeroDivisionError"):
        transport.exec("1 / 0")
    assert transport.eval("'after error'") == "after error"


def test_files_round_trip(board, transport):
    progress: list[tuple[int, int]] = []
    transport.fs_mkdir("/lib")
    transport.fs_writefile(
        "/main.py",
        MAIN_PY,
        progress_callback=lambda done, total: progress.append((done, total)),
    )
    transport.fs_writefile("/reader.json", READER_JSON)

    assert progress[-1] == (len(MAIN_PY), len(MAIN_PY))
    assert transport.fs_exists("/main.py")
    assert not transport.fs_exists("/boot.py")
    names = {entry.name: entry for entry in transport.fs_listdir("/")}
    assert set(names) == {"lib", "main.py", "reader.json"}
    assert names["main.py"].st_size == len(MAIN_PY)
    assert (
        transport.fs_hashfile("/main.py", "sha256") == hashlib.sha256(MAIN_PY).digest()
    )
    assert transport.fs_readfile("/reader.json") == READER_JSON

    assert board.files == {"/main.py": MAIN_PY, "/reader.json": READER_JSON}
    assert (board.state_dir / "fs" / "lib").is_dir()


def test_files_survive_reset(board):
    first = SerialTransport(board.url, timeout=5)
    try:
        first.enter_raw_repl(timeout_overall=10)
        first.fs_mkdir("/lib")
        first.fs_writefile("/lib/config.py", b"SITE = 'club'\n")
    finally:
        first.close()

    second = SerialTransport(board.url, timeout=5)
    try:
        second.enter_raw_repl(timeout_overall=10)
        assert [e.name for e in second.fs_listdir("/lib")] == ["config.py"]
        assert second.eval("__import__('config').SITE") == "club"
        second.exec("import os; os.remove('/lib/config.py')")
    finally:
        second.close()
    assert board.files == {}
    assert board.connections == 2


def _read_until(conn: socket.socket, marker: bytes, timeout_s: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while marker not in data:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(4096)
        assert chunk, f"connection closed before {marker!r}; got {data!r}"
        data += chunk
    return data


def test_friendly_repl_and_soft_reset(board):
    with socket.create_connection(("127.0.0.1", board.port), timeout=10) as conn:
        conn.sendall(b"\r")
        boot = _read_until(conn, b">>> ")
        assert b"rst:0x1 (POWERON_RESET)" in boot
        assert b"Generic ESP32 module with ESP32" in boot

        conn.sendall(b"6 * 7\r")
        assert b"42" in _read_until(conn, b">>> ")

        conn.sendall(b"\x04")
        reboot = _read_until(conn, b">>> ")
        assert b"MPY: soft reboot" in reboot
        assert b"MicroPython v" in reboot


def test_machine_reset_reboots(board, transport):
    transport.exec_raw_no_follow("import machine; machine.reset()")
    output = transport.read_until(1, b">>> ", timeout=10)
    assert b"rst:0xc (SW_CPU_RESET)" in output
    assert output.endswith(b">>> ")


def test_blank_board_never_answers(tmp_path):
    with BoardSimulator(tmp_path / "blank") as sim:
        link = SerialTransport(sim.url, timeout=5)
        started = time.monotonic()
        try:
            with pytest.raises(TransportError, match="could not enter raw repl"):
                link.enter_raw_repl(soft_reset=False, timeout_overall=3)
        finally:
            link.close()
        assert time.monotonic() - started < 8
        assert not sim.has_micropython


def test_missing_runtime_named(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTBOX_NODE_MODULES", str(tmp_path / "node_modules"))
    sim = BoardSimulator(tmp_path / "board")
    with pytest.raises(
        MicroPythonRuntimeError, match="micropython-webassembly-pyscript"
    ):
        sim.start()


def test_module_entry_prints_url(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hardware.reader_board",
            "--state",
            str(tmp_path / "cli"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"socket://127\.0\.0\.1:(\d+)\s", line)
        assert match, f"unexpected first line {line!r}"
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5):
            pass
    finally:
        # Ctrl-C in a terminal.
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert status == 0
    assert (tmp_path / "cli" / "flash.bin").stat().st_size == 4 * 1024 * 1024


def test_machine_bootloader_enters_rom(board, transport):
    transport.exec_raw_no_follow("import machine; machine.bootloader()")
    output = transport.read_until(1, b"waiting for download\r\n", timeout=10)
    assert b"DOWNLOAD_BOOT" in output

    # The same serial connection now speaks the ROM loader protocol.
    esp = ESP32ROM(transport.serial)
    esp.connect("no-reset", attempts=2, warnings=False)
    assert esp.read_reg(0x40001000) == 0x00F01D83


def test_blank_board_boot_loop(tmp_path):
    with (
        BoardSimulator(tmp_path / "blank") as sim,
        socket.create_connection(("127.0.0.1", sim.port), timeout=10) as conn,
    ):
        conn.sendall(b"\r\x03")
        output = _read_until(conn, b"invalid header: 0xffffffff\r\n" * 2)
    assert output.startswith(b"ets Jul 29 2019")
    assert b"rst:0x1 (POWERON_RESET)" in output
    assert b">>>" not in output
