"""The board's 4 MB SPI flash, kept in a file, and a small MicroPython test image."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from hardware.reader_board._errors import BoardSimulatorError

_log = logging.getLogger(__name__)

FLASH_SIZE = 4 * 1024 * 1024
SECTOR_SIZE = 0x1000
# The ESP32 second-stage bootloader (or a merged MicroPython image) starts here.
APP_IMAGE_OFFSET = 0x1000
_IMAGE_MAGIC = 0xE9
_MICROPYTHON_MARKER = b"micropython"


class Flash:
    """A flash chip backed by ``path``: erased bytes are 0xFF.

    Changes stay in memory until :meth:`save`, which writes the whole file
    atomically so a crash never leaves half an image behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = bytearray(b"\xff" * FLASH_SIZE)
        # A new board writes its blank flash file on the first save.
        self._dirty = not path.exists()
        if path.exists():
            stored = path.read_bytes()
            if len(stored) != FLASH_SIZE:
                raise BoardSimulatorError(
                    f"flash file {path} has {len(stored)} bytes, expected "
                    f"{FLASH_SIZE}; delete it to start with a blank board"
                )
            self._data[:] = stored

    def check_range(self, offset: int, length: int) -> bool:
        """Return True when ``[offset, offset + length)`` lies inside the chip."""
        return offset >= 0 and length >= 0 and offset + length <= FLASH_SIZE

    def erase(self, offset: int, length: int) -> None:
        """Erase whole sectors covering ``[offset, offset + length)``."""
        start = offset - offset % SECTOR_SIZE
        end = min(FLASH_SIZE, -(-(offset + length) // SECTOR_SIZE) * SECTOR_SIZE)
        self._data[start:end] = b"\xff" * (end - start)
        self._dirty = True

    def write(self, offset: int, data: bytes) -> None:
        """Program ``data`` at ``offset``; like NOR flash, bits only go from 1 to 0."""
        current = int.from_bytes(self._data[offset : offset + len(data)], "big")
        programmed = current & int.from_bytes(data, "big")
        self._data[offset : offset + len(data)] = programmed.to_bytes(len(data), "big")
        self._dirty = True

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset``."""
        return bytes(self._data[offset : offset + length])

    def md5_hex(self, offset: int, length: int) -> str:
        """Return the lowercase hex MD5 of a region, as the ROM's SPI_FLASH_MD5 does."""
        view = memoryview(self._data)[offset : offset + length]
        return hashlib.md5(view).hexdigest()

    def has_micropython(self) -> bool:
        """Return True when a MicroPython image starts at 0x1000."""
        if self._data[APP_IMAGE_OFFSET] != _IMAGE_MAGIC:
            return False
        return self._data.find(_MICROPYTHON_MARKER, APP_IMAGE_OFFSET) != -1

    def save(self) -> None:
        """Write the flash file if anything changed since the last save."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(self._data)
        os.replace(partial, self.path)
        self._dirty = False
        _log.debug("flash saved to %s", self.path)


def make_test_image() -> bytes:
    """Build a small valid ESP32 application image that counts as MicroPython.

    The image has one data segment containing ``micropython``, the checksum
    and the appended SHA-256 that esptool 5 verifies, and chip id 0 (ESP32),
    so ``esptool write_flash`` accepts it at 0x1000 without ``force``.
    """
    # esptool is a dependency of the package, but only images need it.
    from esptool.bin_image import ELFSection, ESP32FirmwareImage

    image = ESP32FirmwareImage()
    image.entrypoint = 0x40080000
    text = b"MicroPython test image for the Nightbox board simulator: micropython\n"
    payload = text + bytes(range(256)) * 8
    image.segments = [ELFSection(b".dram0.data", 0x3FFB0000, payload, flags=0)]
    image.append_digest = True
    data = image.save(None)
    if data is None:
        raise BoardSimulatorError("esptool returned no image bytes")
    return data
