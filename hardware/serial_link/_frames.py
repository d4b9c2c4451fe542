"""The line format of the USB serial uplink between a reader and the box.

One frame per line, ASCII: ``NB1 <channel> <length> <crc> <payload>\\n``.
``length`` is the payload's byte count in decimal, at most 3072, and ``crc``
is the CRC-32 (``zlib.crc32``) of ``<channel> <payload>`` as 8 lowercase hex
digits. The payload is what the reader would publish over MQTT: a JSON
envelope, or plain ``online``/``offline`` on the availability channel.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import orjson

from hardware.serial_link._errors import FrameError

_LOGGER = logging.getLogger(__name__)

MAGIC = b"NB1 "
MAX_PAYLOAD_BYTES = 3072
# A whole line, newline excluded; a longer one is dropped as oversize.
MAX_LINE_BYTES = 4096
# Channels a reader sends to the box, and channels the box sends down.
UP_CHANNELS = frozenset(
    {"hello", "availability", "status", "sightings", "api/kits/issue"}
)
DOWN_CHANNELS = frozenset({"clock", "reply"})
CHANNELS = UP_CHANNELS | DOWN_CHANNELS
AVAILABILITY_VALUES = (b"online", b"offline")

_LENGTH = re.compile(rb"^(0|[1-9][0-9]{0,3})\Z")
_CRC = re.compile(rb"^[0-9a-f]{8}\Z")
_LOG_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame: its channel and the payload bytes it carried."""

    channel: str
    payload: bytes


def encode_frame(channel: str, payload: bytes) -> bytes:
    """Return the line for one frame, newline included.

    Raises FrameError for an unknown channel, a payload over 3072 bytes or
    a payload containing a newline.
    """
    if channel not in CHANNELS:
        raise FrameError(f"unknown channel {channel!r}; use one of {sorted(CHANNELS)}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise FrameError(
            f"payload of {len(payload)} bytes on channel {channel} exceeds the "
            f"frame limit of {MAX_PAYLOAD_BYTES} bytes"
        )
    if b"\n" in payload or b"\r" in payload:
        raise FrameError(f"payload on channel {channel} contains a line break")
    crc = zlib.crc32(channel.encode() + b" " + payload)
    return b"%s%s %d %08x %s\n" % (MAGIC, channel.encode(), len(payload), crc, payload)


def decode_line(line: bytes) -> Frame:
    """Check one line (without its newline) that starts with ``NB1 ``.

    Raises FrameError naming the failed check: field count, length, CRC,
    channel, UTF-8 or JSON.
    """
    fields = line.split(b" ", 4)
    if len(fields) != 5 or fields[0] != MAGIC.strip():
        raise FrameError(f"expected 5 space-separated fields, got {len(fields)}")
    _magic, channel_bytes, length_text, crc_text, payload = fields
    if not _LENGTH.match(length_text) or int(length_text) > MAX_PAYLOAD_BYTES:
        raise FrameError(
            f"length {length_text[:8]!r} is not a decimal of at most "
            f"{MAX_PAYLOAD_BYTES}"
        )
    if int(length_text) != len(payload):
        raise FrameError(
            f"length field is {int(length_text)} bytes, payload has {len(payload)}"
        )
    if not _CRC.match(crc_text):
        raise FrameError(f"crc {crc_text[:10]!r} is not 8 lowercase hex digits")
    if int(crc_text, 16) != zlib.crc32(channel_bytes + b" " + payload):
        raise FrameError("crc does not match the channel and payload")
    channel = channel_bytes.decode("ascii", errors="replace")
    if channel not in CHANNELS:
        raise FrameError(f"unknown channel {channel[:20]!r}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FrameError(f"payload is not UTF-8 (byte {err.start})") from err
    if channel == "availability":
        if payload not in AVAILABILITY_VALUES:
            raise FrameError(f"availability {text[:20]!r} is not online or offline")
    else:
        try:
            # orjson rejects NaN, Infinity and nesting deeper than 1024 levels
            # with JSONDecodeError. The json module would raise RecursionError
            # on deep nesting, which no ValueError handler catches.
            orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            raise FrameError(f"payload is not JSON: {err}") from err
    return Frame(channel, payload)


class FrameDecoder:
    """Splits a byte stream into frames, counting and dropping bad lines.

    ``counts`` has ``frames`` (good ones), ``noise`` (lines not starting
    ``NB1 ``, such as a REPL banner or a traceback), ``corrupt`` (``NB1``
    lines that fail a check) and ``oversize`` (lines over 4096 bytes). After
    any bad line the decoder carries on at the next newline.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[str] = Counter(
            {"frames": 0, "noise": 0, "corrupt": 0, "oversize": 0}
        )
        self._buffer = bytearray()
        self._discarding = False
        self._last_log = 0.0

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames that they completed."""
        frames: list[Frame] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    self._drop_oversize()
                    self._buffer.clear()
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                # The tail of a line already counted as oversize.
                self._discarding = False
                continue
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)
        return frames

    def _drop_oversize(self) -> None:
        if not self._discarding:
            self.counts["oversize"] += 1
            self._log("a line over %d bytes", MAX_LINE_BYTES)
        self._discarding = True

    def _line(self, line: bytes) -> Frame | None:
        if line.endswith(b"\r"):
            # MicroPython's REPL console may end lines with CR LF.
            line = line[:-1]
        if len(line) > MAX_LINE_BYTES:
            self.counts["oversize"] += 1
            self._log("a line over %d bytes", MAX_LINE_BYTES)
            return None
        if not line.startswith(MAGIC):
            self.counts["noise"] += 1
            return None
        try:
            frame = decode_line(line)
        except FrameError as err:
            self.counts["corrupt"] += 1
            self._log("a corrupt frame (%s)", err)
            return None
        self.counts["frames"] += 1
        return frame

    def _log(self, what: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_INTERVAL_S:
            self._last_log = now
            _LOGGER.warning(
                "Serial port %s: dropped " + what + "; counts so far %s",
                self.name,
                *args,
                dict(self.counts),
            )
