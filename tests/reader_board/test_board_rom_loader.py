"""The simulated board's ESP32 ROM loader, driven by esptool 5's Python API."""

from __future__ import annotations

import hashlib
import socket
import struct

import pytest
from esptool import cmds
from mpremote.transport_serial import SerialTransport

from hardware.reader_board import BoardSimulator, make_test_image

SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32


@pytest.fixture
def board(tmp_path):
    with BoardSimulator(tmp_path / "board") as sim:
        yield sim


def _connect(sim: BoardSimulator):
    return cmds.detect_chip(sim.url, connect_mode="no-reset", connect_attempts=2)


def test_esptool_detects_esp32(board):
    esp = _connect(board)
    try:
        assert esp.CHIP_NAME == "ESP32"
        assert esp.get_chip_description() == "ESP32-D0WD-V3 (revision v3.1)"
        assert "Dual Core + LP Core" in esp.get_chip_features()
        assert bytes(esp.read_mac()) == board.mac
        cmds.attach_flash(esp)
        assert cmds.detect_flash_size(esp) == "4MB"
    finally:
        esp._port.close()


def test_esptool_flashes_micropython(board):
    image = make_test_image()
    assert not board.has_micropython
    esp = _connect(board)
    try:
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(0x1000, image)], flash_size="keep")
        digest = esp.flash_md5sum(0x1000, len(image))
        cmds.reset_chip(esp, "hard-reset")
    finally:
        esp._port.close()

    assert digest == hashlib.md5(image).hexdigest()
    # Without compression esptool pads the last block to 0x400 bytes of 0xFF.
    padded = -(-len(image) // 0x400) * 0x400
    assert board.flash_writes == [(0x1000, padded)]
    assert board.has_micropython
    flash = (board.state_dir / "flash.bin").read_bytes()
    assert flash[0x1000 : 0x1000 + len(image)] == image
    assert flash[:0x1000] == b"\xff" * 0x1000

    # The next connection is a reset that boots the new firmware.
    transport = SerialTransport(board.url, timeout=5)
    try:
        transport.enter_raw_repl(soft_reset=False, timeout_overall=10)
        assert transport.eval("__import__('sys').implementation.name") == "micropython"
    finally:
        transport.close()


def test_esptool_compressed_write(board):
    data = bytes(range(256)) * 64 + b"tail"
    esp = _connect(board)
    try:
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(0x10000, data)], flash_size="keep", compress=True)
        assert esp.flash_md5sum(0x10000, len(data)) == hashlib.md5(data).hexdigest()
        assert esp.read_flash_slow(0x10000, 100, None) == data[:100]
    finally:
        esp._port.close()
    flash = (board.state_dir / "flash.bin").read_bytes()
    assert flash[0x10000 : 0x10000 + len(data)] == data
    assert board.flash_writes == [(0x10000, len(data))]
    assert not board.has_micropython


def test_flash_survives_restart(tmp_path):
    state = tmp_path / "board"
    with BoardSimulator(state, micropython=True) as sim:
        assert sim.has_micropython
    with BoardSimulator(state) as sim:
        assert sim.has_micropython


def _packet(op: int, data: bytes, checksum: int = 0, size: int | None = None) -> bytes:
    header = struct.pack("<BBHI", 0, op, len(data) if size is None else size, checksum)
    body = (header + data).replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


def _responses(conn: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` SLIP frames and return them unescaped."""
    buffer = b""
    while buffer.count(b"\xc0") < 2 * count:
        chunk = conn.recv(4096)
        assert chunk, "board closed the connection"
        buffer += chunk
    frames = [f for f in buffer.split(b"\xc0") if f][:count]
    return [
        f.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb") for f in frames
    ]


def test_rom_loader_error_status(board):
    with socket.create_connection(("127.0.0.1", board.port), timeout=5) as conn:
        conn.sendall(_packet(0x08, SYNC_PAYLOAD))
        sync = _responses(conn, 8)
        assert all(r[:2] == b"\x01\x08" for r in sync)

        conn.sendall(_packet(0x02, struct.pack("<IIII", 0x1000, 1, 0x400, 0x8000)))
        (begin,) = _responses(conn, 1)
        assert begin[-4:] == b"\x00\x00\x00\x00"

        block = b"\x11" * 0x400
        header = struct.pack("<IIII", len(block), 0, 0, 0)
        conn.sendall(_packet(0x03, header + block, checksum=0x00))
        (bad_checksum,) = _responses(conn, 1)
        assert bad_checksum[1] == 0x03
        assert bad_checksum[-4:-2] == b"\x01\x07"

        conn.sendall(_packet(0x0A, struct.pack("<I", 0x40001000), size=9))
        (bad_size,) = _responses(conn, 1)
        assert bad_size[-4:-2] == b"\x01\x05"

        conn.sendall(_packet(0x14, b""))
        (unsupported,) = _responses(conn, 1)
        assert unsupported[1] == 0x14
        assert unsupported[-4:-2] == b"\x01\x05"

        conn.sendall(_packet(0x0A, struct.pack("<I", 0x40001000)))
        (magic,) = _responses(conn, 1)
        assert struct.unpack_from("<I", magic, 4)[0] == 0x00F01D83
    assert board.flash_writes == []
    assert board.rom_errors["bad-checksum"] == 1
    assert board.rom_errors["invalid-message"] == 2


def test_flash_end_boots_image(board):
    esp = _connect(board)
    try:
        cmds.attach_flash(esp)
        cmds.write_flash(esp, [(0x1000, make_test_image())], flash_size="keep")
        # FLASH_BEGIN(0) + FLASH_END leaves the ROM loader and runs the image.
        cmds.run(esp)
        port = esp._port
        port.timeout = 10
        output = port.read_until(b">>> ")
    finally:
        esp._port.close()
    assert b"rst:0xc (SW_CPU_RESET)" in output
    assert output.endswith(b">>> ")
