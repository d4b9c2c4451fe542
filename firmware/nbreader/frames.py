"""Serial uplink frames: one line ``NB1 <channel> <length> <crc> <payload>``.

``length`` is the payload's byte length in decimal (at most 3072), ``crc``
eight lowercase hex digits of the CRC-32 of ``<channel> <payload>``, and
``payload`` the bytes an MQTT message would carry. Lines that do not start
with ``NB1 `` are noise, such as the REPL banner or a traceback. A frame
line that fails a check is corrupt and a line over 4096 bytes is oversize.
Both are dropped, and reading resumes at the next newline.
"""

import binascii
import json

from micropython import const

MAGIC = b"NB1 "
MAX_PAYLOAD = const(3072)
MAX_LINE = const(4096)
READER_CHANNELS = ("hello", "availability", "status", "sightings", "api/kits/issue")
BOX_CHANNELS = ("clock", "reply")


class FrameError(ValueError):
    """Error for a frame that cannot be encoded or decoded; names the field."""


def encode(channel, payload):
    """Return the frame line (bytes, newline included) for ``payload``.

    ``payload`` is bytes or str. Raises FrameError for an unknown channel
    or a payload over MAX_PAYLOAD bytes.
    """
    if channel not in READER_CHANNELS and channel not in BOX_CHANNELS:
        raise FrameError("channel %r is unknown" % channel)
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(
            "payload of %d bytes on %s is over the %d-byte limit"
            % (len(payload), channel, MAX_PAYLOAD)
        )
    name = channel.encode()
    crc = binascii.crc32(payload, binascii.crc32(name + b" "))
    return b"NB1 %s %d %08x %s\n" % (name, len(payload), crc, payload)


class Decoder:
    """Checks frame lines and counts what it drops.

    ``channels`` are the channels this side accepts. Counters: ``noise``,
    ``corrupt``, ``oversize`` and ``frames`` (accepted).
    """

    def __init__(self, channels):
        self._channels = channels
        self.noise = 0
        self.corrupt = 0
        self.oversize = 0
        self.frames = 0
        self.last_problem = None

    def decode(self, line):
        """Return ``(channel, payload bytes)`` for a valid frame line, else None.

        ``line`` is bytes with or without the trailing newline.
        """
        if len(line) > MAX_LINE:
            self.oversize += 1
            return None
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(MAGIC):
            self.noise += 1
            return None
        try:
            result = self._check(line)
        except FrameError as err:
            self.corrupt += 1
            self.last_problem = str(err)
            return None
        self.frames += 1
        return result

    def _check(self, line):
        fields = line.split(b" ", 4)
        if len(fields) != 5:
            raise FrameError("frame has %d fields, expected 5" % len(fields))
        _, name, length_text, crc_text, payload = fields
        try:
            channel = name.decode()
        except UnicodeError:
            raise FrameError("channel is not UTF-8") from None
        if channel not in self._channels:
            raise FrameError("channel %r is not accepted here" % channel)
        if not length_text.isdigit() or int(length_text) != len(payload):
            raise FrameError(
                "length field %r does not match the %d payload bytes"
                % (length_text, len(payload))
            )
        if len(payload) > MAX_PAYLOAD:
            raise FrameError("payload of %d bytes is over the limit" % len(payload))
        expected = binascii.crc32(payload, binascii.crc32(name + b" "))
        if len(crc_text) != 8 or crc_text != b"%08x" % expected:
            raise FrameError("crc %r does not match %08x" % (crc_text, expected))
        try:
            text = payload.decode()
        except UnicodeError:
            raise FrameError("payload on %s is not UTF-8" % channel) from None
        if channel != "availability":
            try:
                json.loads(text)
            except ValueError:
                raise FrameError("payload on %s is not JSON" % channel) from None
        return channel, payload
