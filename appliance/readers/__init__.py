"""The box's side of its ESP32 readers: the clock beacon, the USB serial bridge
and the firmware offer."""

from appliance.readers.clock_beacon import CLOCK_INTERVAL_S, ClockBeacon
from appliance.readers.firmware_offer import FirmwareOffer, find_firmware_source
from appliance.readers.serial_bridge import SerialBridge

__all__ = [
    "CLOCK_INTERVAL_S",
    "ClockBeacon",
    "FirmwareOffer",
    "SerialBridge",
    "find_firmware_source",
]
