"""Register values an ESP32-D0WD-V3 (revision v3.1) shows to the ROM loader.

Addresses and bit positions follow esptool 5.6 ``esptool/targets/esp32.py``,
which reads them to detect the chip, its revision, features and MAC.
"""

from __future__ import annotations

import hashlib

# Read by every esptool version to tell the chip families apart.
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC_VALUE = 0x00F01D83

EFUSE_RD_REG_BASE = 0x3FF5A000
APB_CTL_DATE_REG = 0x3FF6607C
RTC_CALI_CFG1_REG = 0x3FF5F06C
UART_CLKDIV_REG = 0x3FF40014
GPIO_STRAP_REG = 0x3FF44038

SPI_REG_BASE = 0x3FF42000
SPI_CMD_REG = SPI_REG_BASE + 0x00
SPI_ADDR_REG = SPI_REG_BASE + 0x04
SPI_USR2_REG = SPI_REG_BASE + 0x24
SPI_MISO_DLEN_REG = SPI_REG_BASE + 0x2C
SPI_W0_REG = SPI_REG_BASE + 0x80
SPI_CMD_USR = 1 << 18

# Winbond W25Q32 (manufacturer 0xEF, memory type 0x40, capacity 0x16 = 4 MB),
# in the byte order the RDID command leaves in SPI_W0.
FLASH_JEDEC_ID = 0x1640EF
_SPIFLASH_RDID = 0x9F
_SPIFLASH_RDSFDP = 0x5A
# The first bytes of an SFDP table: signature "SFDP", revision 1.6, one header.
_SFDP_TABLE = b"SFDP\x06\x01\x00\xff" + b"\x00\x06\x01\x10\x80\x00\x00\xff"

# Espressif's OUI 24:0A:C4; the last three bytes are derived per board.
_ESPRESSIF_OUI = bytes.fromhex("240ac4")

# The ROM computes the crystal frequency as cali * 15625 * ck8m / 40. These
# two values make it exactly 40 MHz, the crystal on common ESP32 modules.
_CK8M_FREQ = 0x80
_RTC_CALI_VALUE = 800


def board_mac(seed: str) -> bytes:
    """Return a stable MAC address for the board identified by ``seed``."""
    return _ESPRESSIF_OUI + hashlib.sha256(seed.encode()).digest()[:3]


def initial_registers(mac: bytes) -> dict[int, int]:
    """Return the register values of a freshly reset ESP32 in download mode."""
    efuse = [0] * 7
    # MAC bytes 2-5 sit in word 1 and bytes 0-1 in the low half of word 2; the
    # CRC byte above them is left 0 because esptool does not check it.
    efuse[1] = int.from_bytes(mac[2:6], "big")
    efuse[2] = int.from_bytes(mac[0:2], "big")
    # Word 3: package D0WD (1 << 9), revision bit 0 (bit 15), rated CPU
    # frequency set (bit 13) and not low (bit 12 clear), so 240 MHz, dual core.
    efuse[3] = (1 << 9) | (1 << 15) | (1 << 13)
    # Word 4: ADC reference calibration (bits 8-12) and the 8 MHz clock trim.
    efuse[4] = (0x11 << 8) | _CK8M_FREQ
    # Word 5: revision bit 1 (bit 20) and minor revision 1 (bits 24-25).
    efuse[5] = (1 << 20) | (1 << 24)
    registers = {
        EFUSE_RD_REG_BASE + 4 * index: word for index, word in enumerate(efuse)
    }
    registers[CHIP_DETECT_MAGIC_REG] = ESP32_MAGIC_VALUE
    # Bit 31 of the APB date register is revision bit 2; with the two eFuse
    # bits it makes major revision 3.
    registers[APB_CTL_DATE_REG] = 1 << 31
    registers[RTC_CALI_CFG1_REG] = _RTC_CALI_VALUE << 7
    # 40 MHz APB clock divided down to 115200 baud.
    registers[UART_CLKDIV_REG] = 40_000_000 // 115_200
    # GPIO0 held low at reset: download boot (boot:0x3).
    registers[GPIO_STRAP_REG] = 0x03
    return registers


def run_spi_user_command(registers: dict[int, int]) -> None:
    """Perform the SPI flash command set up in the SPI registers.

    esptool reads the flash id and SFDP table by loading a command byte into
    SPI_USR2, setting SPI_CMD_USR and polling until the bit clears.
    """
    command = registers.get(SPI_USR2_REG, 0) & 0xFF
    if command == _SPIFLASH_RDID:
        registers[SPI_W0_REG] = FLASH_JEDEC_ID
    elif command == _SPIFLASH_RDSFDP:
        # A 24-bit address is stored MSB-aligned in the 32-bit register.
        address = registers.get(SPI_ADDR_REG, 0) >> 8
        read_bits = registers.get(SPI_MISO_DLEN_REG, 0) + 1
        chunk = _SFDP_TABLE[address : address + 4].ljust(4, b"\xff")
        value = int.from_bytes(chunk, "little")
        registers[SPI_W0_REG] = value & ((1 << min(read_bits, 32)) - 1)
    else:
        # Status reads return 0 (idle, unprotected); resets and the rest
        # have no result.
        registers[SPI_W0_REG] = 0
    registers[SPI_CMD_REG] = registers.get(SPI_CMD_REG, 0) & ~SPI_CMD_USR
