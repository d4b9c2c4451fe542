"""Advertising data: the AD structure split, raw HCI reports and hex input.

Advertising data is a sequence of AD structures, each a length byte, an AD
type byte and ``length - 1`` data bytes (Bluetooth Core Spec Vol 3 Part C
section 11). The AD type numbers are from the Bluetooth Assigned Numbers,
section "Common Data Types".
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import NightboxError

AD_TYPE_FLAGS = 0x01
AD_TYPE_UUID16_INCOMPLETE = 0x02
AD_TYPE_UUID16_COMPLETE = 0x03
AD_TYPE_NAME_SHORT = 0x08
AD_TYPE_NAME_COMPLETE = 0x09
AD_TYPE_TX_POWER_LEVEL = 0x0A
AD_TYPE_SERVICE_DATA_UUID16 = 0x16
AD_TYPE_MANUFACTURER_DATA = 0xFF

# HCI LE Advertising Report event (Core Spec Vol 4 Part E sections 5.4.4 and
# 7.7.65.2), preceded by the packet indicator of the UART transport (Vol 4
# Part A), which Linux raw HCI sockets also deliver.
_HCI_EVENT_INDICATOR = 0x04
_HCI_EVENT_LE_META = 0x3E
_HCI_SUBEVENT_ADVERTISING_REPORT = 0x02
_HCI_REPORT_DATA_OFFSET = 14
_HCI_RSSI_NOT_AVAILABLE = 127

_MAX_SHOWN_TEXT = 60


class AdvertError(NightboxError, ValueError):
    """Error for advert text that cannot be converted to bytes.

    The message names the bad value and what to fix.
    """


def advert_from_hex(text: str) -> bytes:
    """Convert an advert written as hex digits to bytes.

    Whitespace is ignored and a leading ``0x`` is allowed. Raises AdvertError
    naming the bad character or the odd digit count.
    """
    body = text.strip()
    body_index = len(text) - len(text.lstrip())
    if body[:2] in ("0x", "0X"):
        body = body[2:]
        body_index += 2
    digits = "".join(body.split())
    try:
        return bytes.fromhex(digits)
    except ValueError:
        pass

    quoted_text = (
        text if len(text) <= _MAX_SHOWN_TEXT else text[:_MAX_SHOWN_TEXT] + "..."
    )
    for index, char in enumerate(body, start=body_index):
        if char not in "0123456789abcdefABCDEF" and not char.isspace():
            raise AdvertError(
                f"invalid advert hex {quoted_text!r}: {char!r} at index {index} "
                "is not a hex digit; write the advert bytes as digits 0-9 and a-f"
            ) from None
    raise AdvertError(
        f"invalid advert hex {quoted_text!r}: {len(digits)} hex digits is an odd "
        "count; every byte needs two digits, so one digit is missing or extra"
    ) from None


@dataclass(frozen=True, slots=True)
class AdStructures:
    """The AD structures of one advert, split by type.

    ``manufacturer_data`` maps the company id to the bytes after it, and
    ``service_data`` maps a 16-bit service UUID to the bytes after it. When
    a key repeats, the first structure wins. ``structures`` keeps every
    complete structure as ``(ad_type, data)`` in advert order. ``problems``
    lists what was wrong with the bytes, such as a truncated structure.
    """

    flags: int | None
    manufacturer_data: dict[int, bytes]
    service_data: dict[int, bytes]
    service_uuids: tuple[int, ...]
    tx_power_dbm: int | None
    local_name: str | None
    structures: tuple[tuple[int, bytes], ...]
    problems: tuple[str, ...]


def split_ad_structures(data: bytes) -> tuple[list[tuple[int, bytes]], list[str]]:
    """Split advertising data into ``(ad_type, data)`` pairs and problems.

    A length byte of zero ends the data early, as Core Spec Vol 3 Part C
    section 11 allows. A structure whose length runs past the end is dropped,
    because its bytes cannot be trusted, and the structures before it are
    kept. Never raises on any bytes.
    """
    structures: list[tuple[int, bytes]] = []
    problems: list[str] = []
    end_of_data = len(data)
    offset = 0
    while offset < end_of_data:
        length = data[offset]
        if length == 0:
            if data.count(0, offset) != end_of_data - offset:
                problems.append(
                    f"non-zero bytes after the zero length byte at offset {offset} "
                    "were ignored"
                )
            break
        end = offset + 1 + length
        if end > end_of_data:
            problems.append(
                f"AD structure at offset {offset} declares {length} bytes but the "
                f"advert ends after {byte_count(end_of_data - offset - 1)}; it was "
                "ignored"
            )
            break
        structures.append((data[offset + 1], data[offset + 2 : end]))
        offset = end
    return structures, problems


def parse_ad_structures(data: bytes) -> AdStructures:
    """Split advertising data into its AD structures, leniently.

    Unknown AD types are kept in ``structures`` only. Malformed structures
    are reported in ``problems`` and the rest is still returned (Core Spec
    Vol 3 Part C section 11). Never raises on any bytes.
    """
    structures, problems = split_ad_structures(data)
    flags: int | None = None
    manufacturer_data: dict[int, bytes] = {}
    service_data: dict[int, bytes] = {}
    service_uuids: list[int] = []
    tx_power_dbm: int | None = None
    short_name: str | None = None
    complete_name: str | None = None

    for ad_type, value in structures:
        if ad_type == AD_TYPE_MANUFACTURER_DATA:
            if len(value) < 2:
                problems.append(_too_short("manufacturer data", value, "company id"))
                continue
            manufacturer_data.setdefault(value[0] | value[1] << 8, value[2:])
        elif ad_type == AD_TYPE_SERVICE_DATA_UUID16:
            if len(value) < 2:
                problems.append(_too_short("service data", value, "16-bit UUID"))
                continue
            service_data.setdefault(value[0] | value[1] << 8, value[2:])
        elif ad_type in (AD_TYPE_UUID16_INCOMPLETE, AD_TYPE_UUID16_COMPLETE):
            if len(value) % 2:
                problems.append(
                    f"16-bit service UUID list has {byte_count(len(value))}, an odd "
                    "count; the last byte was ignored"
                )
            for index in range(0, len(value) - 1, 2):
                service_uuids.append(value[index] | value[index + 1] << 8)
        elif ad_type == AD_TYPE_TX_POWER_LEVEL:
            if len(value) != 1:
                problems.append(
                    f"tx power level has {byte_count(len(value))}, expected 1"
                )
                continue
            tx_power_dbm = value[0] - 256 if value[0] > 127 else value[0]
        elif ad_type == AD_TYPE_FLAGS:
            if not value:
                problems.append("flags AD structure has no data byte")
                continue
            flags = value[0]
        elif ad_type == AD_TYPE_NAME_COMPLETE:
            complete_name = value.decode("utf-8", errors="replace")
        elif ad_type == AD_TYPE_NAME_SHORT:
            short_name = value.decode("utf-8", errors="replace")

    return AdStructures(
        flags=flags,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=tuple(service_uuids),
        tx_power_dbm=tx_power_dbm,
        local_name=complete_name if complete_name is not None else short_name,
        structures=tuple(structures),
        problems=tuple(problems),
    )


def byte_count(count: int) -> str:
    """Return ``"1 byte"`` or ``"<count> bytes"`` for messages."""
    return "1 byte" if count == 1 else f"{count} bytes"


def _too_short(kind: str, value: bytes, missing: str) -> str:
    size = byte_count(len(value))
    return f"{kind} AD structure has {size} of data, too short for the {missing}"


@dataclass(frozen=True, slots=True)
class HciAdvertisingReport:
    """One report from an HCI LE Advertising Report event.

    ``address`` is written most significant byte first, as people read it
    (``11:22:33:44:55:66``); ``rssi_dbm`` is None when the controller sent
    127 (not available). ``data`` contains the AD structures. When the event is
    not a usable report, ``address`` is None, ``data`` is empty and
    ``problems`` explains why.
    """

    address: str | None
    address_type: int | None
    event_type: int | None
    rssi_dbm: int | None
    data: bytes
    problems: tuple[str, ...]


def parse_hci_le_advertising_report(packet: bytes) -> HciAdvertisingReport:
    """Extract address, RSSI and advertising data from a raw HCI event packet.

    The packet starts with the packet indicator byte, as read from a Linux
    raw HCI socket. Only single-report events are decoded. An event with
    several reports is returned as unusable, with a problem naming the
    count. Never raises on any bytes.
    """
    problems: list[str] = []
    if len(packet) < _HCI_REPORT_DATA_OFFSET + 1:
        return _unusable_report(
            f"HCI packet has {byte_count(len(packet))}, too short for an LE "
            f"Advertising Report (at least {_HCI_REPORT_DATA_OFFSET + 1})"
        )
    if packet[1] != _HCI_EVENT_LE_META or packet[3] != _HCI_SUBEVENT_ADVERTISING_REPORT:
        return _unusable_report(
            f"HCI event code 0x{packet[1]:02X} subevent 0x{packet[3]:02X} is not an "
            "LE Advertising Report (event 0x3E, subevent 0x02)"
        )
    if packet[4] != 1:
        return _unusable_report(
            f"HCI LE Advertising Report contains {packet[4]} reports; only 1 is "
            "supported"
        )
    if packet[0] != _HCI_EVENT_INDICATOR:
        problems.append(
            f"packet indicator is 0x{packet[0]:02X}, not 0x04 (HCI event); ignored"
        )

    # When a declared length disagrees with the bytes present, the bytes
    # present win. One read from a raw HCI socket returns exactly one event,
    # so the last byte is the RSSI and the AD data runs from the data length
    # byte up to it. The AD structures carry their own lengths, which are
    # checked again when they are split. A capture whose data length byte
    # is 25 while 30 bytes of AD structures follow keeps its iBeacon this
    # way. Honouring the 25 would cut the iBeacon structure short and read
    # the RSSI from the middle of the UUID.
    parameter_length = len(packet) - 3
    if packet[2] != parameter_length:
        problems.append(
            f"HCI parameter length byte is {packet[2]} but {parameter_length} "
            "bytes follow; used the bytes present"
        )
    data = packet[_HCI_REPORT_DATA_OFFSET:-1]
    declared_data_length = packet[_HCI_REPORT_DATA_OFFSET - 1]
    if declared_data_length != len(data):
        problems.append(
            f"report data length byte is {declared_data_length} but {len(data)} "
            "bytes lie before the RSSI byte; used the bytes present"
        )

    rssi = packet[-1] - 256 if packet[-1] > 127 else packet[-1]
    address = ":".join(f"{byte:02X}" for byte in reversed(packet[7:13]))
    return HciAdvertisingReport(
        address=address,
        address_type=packet[6],
        event_type=packet[5],
        rssi_dbm=None if rssi == _HCI_RSSI_NOT_AVAILABLE else rssi,
        data=bytes(data),
        problems=tuple(problems),
    )


def _unusable_report(problem: str) -> HciAdvertisingReport:
    return HciAdvertisingReport(
        address=None,
        address_type=None,
        event_type=None,
        rssi_dbm=None,
        data=b"",
        problems=(problem,),
    )
