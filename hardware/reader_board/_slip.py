"""SLIP framing (RFC 1055) as the ESP32 ROM loader uses it on its UART."""

from __future__ import annotations

END = 0xC0
_ESC = 0xDB
_ESC_END = 0xDC
_ESC_ESC = 0xDD


def encode(packet: bytes) -> bytes:
    """Return ``packet`` escaped and framed by END bytes on both sides."""
    body = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class Decoder:
    """Turns a byte stream into complete packets.

    Bytes outside a frame are dropped, like the ROM does with line noise.
    An invalid escape keeps the byte after ESC as it is.
    """

    def __init__(self) -> None:
        self._packet: bytearray | None = None
        self._escaped = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data`` and return the packets it completed, in order."""
        packets: list[bytes] = []
        for byte in data:
            if self._packet is None:
                if byte == END:
                    self._packet = bytearray()
                continue
            if self._escaped:
                self._escaped = False
                if byte == _ESC_END:
                    self._packet.append(END)
                elif byte == _ESC_ESC:
                    self._packet.append(_ESC)
                else:
                    self._packet.append(byte)
            elif byte == _ESC:
                self._escaped = True
            elif byte == END:
                if self._packet:
                    packets.append(bytes(self._packet))
                    self._packet = None
                # An empty frame means the END was the opening of the next packet.
                else:
                    self._packet = bytearray()
            else:
                self._packet.append(byte)
        return packets
