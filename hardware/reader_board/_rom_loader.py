"""The ESP32 ROM serial loader: command packets in, response packets out.

Packet layouts, opcodes and status bytes follow esptool 5.6
(``esptool/loader.py``; the ROM error codes are the table in
``esptool/util.py``). The ESP32 ROM appends four status bytes to every
response: failed flag, error code and two reserved zero bytes.
"""

from __future__ import annotations

import logging
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from hardware.reader_board import _registers
from hardware.reader_board._flash import Flash

_log = logging.getLogger(__name__)

# Command opcodes (esptool ESPLoader.ESP_CMDS).
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
READ_FLASH_SLOW = 0x0E
CHANGE_BAUDRATE = 0x0F
FLASH_DEFL_BEGIN = 0x10
FLASH_DEFL_DATA = 0x11
FLASH_DEFL_END = 0x12
SPI_FLASH_MD5 = 0x13

# Error codes in the second status byte.
ERROR_INVALID_MESSAGE = 0x05
ERROR_FAILED_TO_ACT = 0x06
ERROR_BAD_CHECKSUM = 0x07
ERROR_FLASH_WRITE = 0x08
ERROR_FLASH_READ = 0x09
ERROR_DEFLATE = 0x0B

_CHECKSUM_SEED = 0xEF
_SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32
# The ROM replies to SYNC eight times with a non-zero value. The flasher stub
# replies with 0, which is how esptool detects a running stub.
_SYNC_REPLIES = 8
_SYNC_VALUE = 0x20120707
_READ_FLASH_SLOW_BLOCK = 64
_ERROR_NAMES = {
    ERROR_INVALID_MESSAGE: "invalid-message",
    ERROR_FAILED_TO_ACT: "failed-to-act",
    ERROR_BAD_CHECKSUM: "bad-checksum",
    ERROR_FLASH_WRITE: "flash-write",
    ERROR_FLASH_READ: "flash-read",
    ERROR_DEFLATE: "deflate",
}
# Rejections of one kind are logged at most this often; the rest are counted.
_LOG_INTERVAL_S = 1.0


class LoaderAction(Enum):
    """The board's next step after a response has gone out."""

    STAY = "stay"
    RUN_FLASH = "run-flash"


def checksum(data: bytes) -> int:
    """Return the ROM's XOR checksum of a data block."""
    state = _CHECKSUM_SEED
    for byte in data:
        state ^= byte
    return state


@dataclass
class _WriteSession:
    offset: int
    end: int
    block_size: int
    compressed: bool
    position: int = 0
    inflater: zlib._Decompress | None = None


@dataclass
class RomLoader:
    """One download-mode session of the ROM loader, from reset to reset.

    ``flash_writes`` gets one ``(offset, length)`` entry per contiguous run
    of programmed bytes, extended as blocks arrive. ``errors`` counts the
    error statuses sent, by kind (``"bad-checksum"``, ``"invalid-message"``).
    """

    flash: Flash
    mac: bytes
    flash_writes: list[tuple[int, int]]
    errors: Counter[str] = field(default_factory=Counter)
    registers: dict[int, int] = field(default_factory=dict)
    _session: _WriteSession | None = None
    _last_logged: dict[int, float] = field(default_factory=dict)
    _unlogged: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.registers = _registers.initial_registers(self.mac)

    def handle(self, packet: bytes) -> tuple[list[bytes], LoaderAction]:
        """Process one decoded command packet; return the response packets."""
        if len(packet) < 8:
            # Too short to carry a header: the ROM cannot echo an opcode.
            reply = self._reject(
                0, ERROR_INVALID_MESSAGE, "packet shorter than 8 bytes"
            )
            return [reply], LoaderAction.STAY
        direction, op, size, chk = struct.unpack_from("<BBHI", packet)
        data = packet[8:]
        if direction != 0x00:
            return [], LoaderAction.STAY
        if size != len(data):
            reason = f"size field {size} but {len(data)} data bytes"
            return [self._reject(op, ERROR_INVALID_MESSAGE, reason)], LoaderAction.STAY
        try:
            return self._dispatch(op, data, chk)
        except (struct.error, ValueError) as err:
            reply = self._reject(op, ERROR_INVALID_MESSAGE, f"invalid data: {err}")
            return [reply], LoaderAction.STAY

    def _dispatch(
        self, op: int, data: bytes, chk: int
    ) -> tuple[list[bytes], LoaderAction]:
        stay = LoaderAction.STAY

        if op == SYNC:
            if data != _SYNC_PAYLOAD:
                reply = self._reject(op, ERROR_INVALID_MESSAGE, "invalid SYNC data")
                return [reply], stay
            return [self._reply(op, value=_SYNC_VALUE)] * _SYNC_REPLIES, stay

        if op == READ_REG:
            (address,) = struct.unpack("<I", data)
            return [self._reply(op, value=self.registers.get(address, 0))], stay

        if op == WRITE_REG:
            return [self._write_registers(data)], stay

        if op in (SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE):
            expected = {SPI_SET_PARAMS: 24, SPI_ATTACH: 8, CHANGE_BAUDRATE: 8}[op]
            if len(data) != expected:
                reason = f"{len(data)} data bytes, expected {expected}"
                return [self._reject(op, ERROR_INVALID_MESSAGE, reason)], stay
            return [self._reply(op)], stay

        if op in (FLASH_BEGIN, FLASH_DEFL_BEGIN):
            return [self._begin(op, data)], stay

        if op in (FLASH_DATA, FLASH_DEFL_DATA):
            return [self._block(op, data, chk)], stay

        if op in (FLASH_END, FLASH_DEFL_END):
            # The word is 0 to reboot or 1 to run user code. Both start the
            # application in flash.
            struct.unpack("<I", data)
            self._session = None
            self.flash.save()
            _log.info("board ROM loader: leaving download mode, running flash")
            return [self._reply(op)], LoaderAction.RUN_FLASH

        if op == SPI_FLASH_MD5:
            return [self._md5(op, data)], stay

        if op == READ_FLASH_SLOW:
            return [self._read_slow(op, data)], stay

        # A real ESP32 ROM also rejects GET_SECURITY_INFO (0x14) this way. It
        # accepts MEM_BEGIN, MEM_DATA and MEM_END, but the simulator cannot run
        # uploaded code such as esptool's stub, so esptool needs --no-stub.
        reply = self._reject(op, ERROR_INVALID_MESSAGE, "unsupported command")
        return [reply], stay

    def _reply(
        self, op: int, value: int = 0, body: bytes = b"", error: int = 0
    ) -> bytes:
        status = bytes([1 if error else 0, error, 0, 0])
        payload = body + status
        return struct.pack("<BBHI", 0x01, op, len(payload), value) + payload

    def _reject(self, op: int, error: int, reason: str) -> bytes:
        """Count, log (rate-limited per error kind) and build an error response."""
        self.errors[_ERROR_NAMES[error]] += 1
        now = time.monotonic()
        if now - self._last_logged.get(error, -_LOG_INTERVAL_S) >= _LOG_INTERVAL_S:
            _log.info(
                "board ROM loader: rejected command %#04x with error %#04x (%s); "
                "%d more rejections of this kind since the last message",
                op,
                error,
                reason,
                self._unlogged[error],
            )
            self._last_logged[error] = now
            self._unlogged[error] = 0
        else:
            self._unlogged[error] += 1
        return self._reply(op, error=error)

    def _write_registers(self, data: bytes) -> bytes:
        if not data or len(data) % 16:
            reason = f"{len(data)} data bytes, expected a multiple of 16"
            return self._reject(WRITE_REG, ERROR_INVALID_MESSAGE, reason)
        for address, value, mask, _delay_us in struct.iter_unpack("<IIII", data):
            old = self.registers.get(address, 0)
            self.registers[address] = (old & ~mask) | (value & mask)
            if address == _registers.SPI_CMD_REG and value & _registers.SPI_CMD_USR:
                _registers.run_spi_user_command(self.registers)
        return self._reply(WRITE_REG)

    def _begin(self, op: int, data: bytes) -> bytes:
        # The ESP32 ROM takes four words; the fifth (encrypted write) that
        # newer chips accept is an invalid message here.
        erase_size, _blocks, block_size, offset = struct.unpack("<IIII", data)
        if not self.flash.check_range(offset, erase_size) or block_size == 0:
            reason = f"region {offset:#x}+{erase_size:#x} outside the 4 MB flash"
            return self._reject(op, ERROR_INVALID_MESSAGE, reason)
        self.flash.erase(offset, erase_size)
        compressed = op == FLASH_DEFL_BEGIN
        self._session = _WriteSession(
            offset=offset,
            end=offset + erase_size,
            block_size=block_size,
            compressed=compressed,
            inflater=zlib.decompressobj() if compressed else None,
        )
        return self._reply(op)

    def _block(self, op: int, data: bytes, chk: int) -> bytes:
        length, seq, _, _ = struct.unpack_from("<IIII", data)
        block = data[16:]
        if length != len(block):
            reason = f"block {seq} length field {length} but {len(block)} bytes"
            return self._reject(op, ERROR_INVALID_MESSAGE, reason)
        if chk != checksum(block):
            reason = f"block {seq} checksum {chk:#04x}, computed {checksum(block):#04x}"
            return self._reject(op, ERROR_BAD_CHECKSUM, reason)
        session = self._session
        if session is None or session.compressed != (op == FLASH_DEFL_DATA):
            reason = f"block {seq} without a matching begin command"
            return self._reject(op, ERROR_FAILED_TO_ACT, reason)
        if session.inflater is not None:
            try:
                payload = session.inflater.decompress(block)
            except zlib.error as err:
                reason = f"block {seq} is invalid deflate data: {err}"
                return self._reject(op, ERROR_DEFLATE, reason)
            address = session.offset + session.position
        else:
            payload = block
            address = session.offset + seq * session.block_size
        if not self.flash.check_range(address, len(payload)):
            reason = f"block {seq} at {address:#x} is outside the 4 MB flash"
            return self._reject(op, ERROR_FLASH_WRITE, reason)
        self.flash.write(address, payload)
        session.position = address + len(payload) - session.offset
        self._record_write(address, len(payload))
        return self._reply(op)

    def _record_write(self, address: int, length: int) -> None:
        if self.flash_writes:
            last_offset, last_length = self.flash_writes[-1]
            if last_offset + last_length == address:
                self.flash_writes[-1] = (last_offset, last_length + length)
                return
        self.flash_writes.append((address, length))

    def _md5(self, op: int, data: bytes) -> bytes:
        address, size, _, _ = struct.unpack("<IIII", data)
        if not self.flash.check_range(address, size):
            reason = f"region {address:#x}+{size:#x} outside the 4 MB flash"
            return self._reject(op, ERROR_FLASH_READ, reason)
        self.flash.save()
        # The ROM sends the digest as 32 lowercase hex characters; the stub
        # sends 16 raw bytes instead.
        return self._reply(op, body=self.flash.md5_hex(address, size).encode())

    def _read_slow(self, op: int, data: bytes) -> bytes:
        offset, length = struct.unpack("<II", data)
        in_flash = self.flash.check_range(offset, length)
        if length > _READ_FLASH_SLOW_BLOCK or not in_flash:
            reason = f"read of {length:#x} bytes at {offset:#x}"
            return self._reject(op, ERROR_FLASH_READ, reason)
        block = self.flash.read(offset, length).ljust(_READ_FLASH_SLOW_BLOCK, b"\xff")
        return self._reply(op, body=block)
