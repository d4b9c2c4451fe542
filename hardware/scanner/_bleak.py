"""BlueZ scanning through bleak, imported only when this backend starts."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Mapping
from typing import Any

from hardware.scanner._base import Advertisement, Scanner, ScannerError

_LOGGER = logging.getLogger(__name__)

# Bluetooth Core Supplement part A section 1: AD type codes.
_AD_FLAGS = 0x01
_AD_UUID16_COMPLETE = 0x03
_AD_NAME_COMPLETE = 0x09
_AD_TX_POWER = 0x0A
_AD_SERVICE_DATA_UUID16 = 0x16
_AD_MANUFACTURER = 0xFF
_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


def _uuid16(uuid: str) -> int | None:
    text = uuid.lower()
    if len(text) == 36 and text.endswith(_BASE_UUID_SUFFIX) and text.startswith("0000"):
        return int(text[4:8], 16)
    return None


def _structure(ad_type: int, payload: bytes) -> bytes:
    return bytes((len(payload) + 1, ad_type)) + payload


def advert_bytes_from_fields(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    service_uuids: list[str],
    tx_power: int | None,
    local_name: str | None,
) -> bytes:
    """Rebuild AD structures from the fields bleak reports.

    BlueZ hands bleak parsed fields, not the raw bytes, so the box rebuilds
    the structures in a fixed order. Only 16-bit service UUIDs survive,
    because wristband frames use nothing longer. Field contents are kept
    byte for byte, so the decoder gets what the band sent.
    """
    parts: list[bytes] = []
    uuids = [value for value in map(_uuid16, service_uuids) if value is not None]
    if uuids:
        parts.append(
            _structure(
                _AD_UUID16_COMPLETE, b"".join(struct.pack("<H", u) for u in uuids)
            )
        )
    for uuid, payload in service_data.items():
        short = _uuid16(uuid)
        if short is not None:
            parts.append(
                _structure(_AD_SERVICE_DATA_UUID16, struct.pack("<H", short) + payload)
            )
    for company_id, payload in manufacturer_data.items():
        parts.append(
            _structure(_AD_MANUFACTURER, struct.pack("<H", company_id) + payload)
        )
    if tx_power is not None:
        parts.append(
            _structure(_AD_TX_POWER, struct.pack("b", max(-127, min(127, tx_power))))
        )
    if local_name:
        parts.append(_structure(_AD_NAME_COMPLETE, local_name.encode()[:29]))
    return b"".join(part for part in parts if len(part) <= 31)


class BleakBackend(Scanner):
    """Scans with bleak on BlueZ, reporting every advert, duplicates included.

    BlueZ filters repeated adverts by default, which would starve the RSSI
    smoothing at exits, so the discovery filter requests ``DuplicateData``.
    """

    def __init__(self, adapter: str | None = None, queue_size: int = 10_000) -> None:
        super().__init__(queue_size)
        self._adapter = adapter
        self._scanner: Any = None

    async def start(self) -> None:
        """Start an active BlueZ scan; raises ScannerError when bleak or BlueZ fails."""
        try:
            from bleak import BleakScanner
            from bleak.args.bluez import BlueZScannerArgs
            from bleak.exc import BleakError
        except ImportError as err:
            raise ScannerError(
                "the bleak backend needs bleak: pip install 'nightbox[ble]'"
            ) from err
        bluez: BlueZScannerArgs = {"filters": {"DuplicateData": True}}
        if self._adapter:
            bluez["adapter"] = self._adapter
        # NOTE: run against bleak 3.1's BlueZ API only in type checks and unit
        # tests; no Bluetooth adapter was available to test a real scan.
        self._scanner = BleakScanner(
            self._on_advert, scanning_mode="active", bluez=bluez
        )
        try:
            await self._scanner.start()
        except (BleakError, OSError) as err:
            raise ScannerError(
                "BlueZ scan failed to start on "
                f"{self._adapter or 'the default adapter'}: {err}"
            ) from err
        _LOGGER.info("BLE scan started on %s", self._adapter or "the default adapter")

    async def stop(self) -> None:
        """Stop the scan."""
        if self._scanner is not None:
            await self._scanner.stop()
            self._scanner = None

    def _on_advert(self, device: Any, data: Any) -> None:
        raw = advert_bytes_from_fields(
            data.manufacturer_data,
            data.service_data,
            list(data.service_uuids),
            data.tx_power,
            data.local_name,
        )
        self._enqueue(
            Advertisement(device.address.lower(), int(data.rssi), raw, time.time())
        )
