"""The box's side of its ESP32 readers: the clock beacon and the USB serial bridge."""

from appliance.readers.clock_beacon import CLOCK_INTERVAL_S, ClockBeacon
from appliance.readers.serial_bridge import SerialBridge

__all__ = ["CLOCK_INTERVAL_S", "ClockBeacon", "SerialBridge"]
