"""Output of the ESP32 ROM on its UART at reset, before any application runs.

The lines follow the boot log of an ESP32 revision v3 ROM (ROM date Jul 29
2019). The simulator prints them for people and logs; esptool and mpremote
do not parse them.
"""

from __future__ import annotations

POWER_ON_RESET = "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"
SOFTWARE_RESET = "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"
WATCHDOG_RESET = "rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"

_ROM_HEADER = "ets Jul 29 2019 12:21:46\r\n\r\n"
_FLASH_SETUP = (
    "configsip: 0, SPIWP:0xee\r\n"
    "clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\n"
    "mode:DIO, clock div:2\r\n"
)
# Segment loads of the second-stage bootloader at 0x1000. The lengths are
# typical values, not read from the image in flash.
_IMAGE_LOAD = (
    "load:0x3fff0030,len:4728\r\n"
    "load:0x40078000,len:14888\r\n"
    "load:0x40080400,len:3368\r\n"
    "entry 0x400805cc\r\n"
)


def invalid_header(first_word: int) -> bytes:
    """Return the ROM's complaint about the word at 0x1000 (0xffffffff when blank)."""
    return f"invalid header: {first_word:#010x}\r\n".encode()


def rom_banner(reset_reason: str) -> bytes:
    """Return the ROM's first lines after a reset with ``reset_reason``."""
    return (_ROM_HEADER + reset_reason + "\r\n").encode()


def image_boot(reset_reason: str) -> bytes:
    """Return the ROM output for a reset that boots a valid image from flash."""
    return rom_banner(reset_reason) + (_FLASH_SETUP + _IMAGE_LOAD).encode()
