"""The USB serial uplink of a reader: the frame format and a pyserial link.

A reader without Wi-Fi sends what it would publish over MQTT as one framed
line each (:func:`encode_frame`, :class:`FrameDecoder`), and
:class:`SerialLink` exchanges those frames with the box on a device path or
a pyserial URL.
"""

from hardware.serial_link._errors import FrameError, SerialLinkError, SerialPortError
from hardware.serial_link._frames import (
    CHANNELS,
    DOWN_CHANNELS,
    MAX_LINE_BYTES,
    MAX_PAYLOAD_BYTES,
    UP_CHANNELS,
    Frame,
    FrameDecoder,
    decode_line,
    encode_frame,
)
from hardware.serial_link._link import DEFAULT_BAUDRATE, SerialLink

__all__ = [
    "CHANNELS",
    "DEFAULT_BAUDRATE",
    "DOWN_CHANNELS",
    "MAX_LINE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "UP_CHANNELS",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "SerialLink",
    "SerialLinkError",
    "SerialPortError",
    "decode_line",
    "encode_frame",
]
