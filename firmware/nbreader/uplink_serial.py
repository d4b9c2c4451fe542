"""The serial uplink: frames on the USB serial line (see ``frames``).

Frames go out on ``sys.stdout`` and come in on ``sys.stdin``, which is read
only while ``select.poll`` reports waiting bytes, so the scan and batch
tasks never block on the line. The box's bridge publishes the frames
on the reader's MQTT topics and sends back ``clock`` and ``reply``.
"""

import json
import select
import sys
import time

from . import FW_VERSION
from .frames import BOX_CHANNELS, MAX_LINE, MAX_PAYLOAD, Decoder, encode


class SerialUplink:
    """Sends and receives frames over a serial line.

    ``stdin`` and ``stdout`` default to the board's USB serial line, and
    ``poller`` to a ``select.poll`` on ``stdin``. Received ``clock`` and
    ``reply`` payloads go to ``on_message(channel, payload)``.
    """

    name = "serial"
    max_payload = MAX_PAYLOAD

    def __init__(self, config, boot, on_message, stdin=None, stdout=None, poller=None):
        self._config = config
        self._boot = boot
        self.on_message = on_message
        self._stdin = stdin if stdin is not None else sys.stdin.buffer
        self._stdout = stdout if stdout is not None else sys.stdout.buffer
        if poller is None:
            poller = select.poll()
            poller.register(sys.stdin, select.POLLIN)
        self._poller = poller
        self._line = bytearray()
        self._discarding = False
        self.decoder = Decoder(BOX_CHANNELS)
        self.connected = False
        self.reconnects = 0
        self.sessions = 0

    def connect(self):
        """Send ``hello`` and ``online``; return True (no handshake on serial)."""
        self.sessions += 1
        # The hello is an envelope like every other payload; its ts is the
        # reader's own clock, because the box's time arrives only after it.
        hello = {
            "v": 1,
            "id": "%s-hello-%d" % (self._boot, self.sessions),
            "ts": time.time(),
            "src": "reader/" + self._config.reader,
            "data": {
                "reader": self._config.reader,
                "role": self._config.role,
                "boot": self._boot,
                "fw": FW_VERSION,
            },
        }
        self._write("hello", json.dumps(hello))
        self._write("availability", "online")
        self.connected = True
        return True

    def publish(self, channel, payload, retain=False, qos=1):
        """Write ``payload`` as one frame on ``channel``.

        ``retain`` and ``qos`` are decided by the box's bridge. Raises
        FrameError for a payload over the frame limit.
        """
        self._write(channel, payload)

    def _write(self, channel, payload):
        self._stdout.write(encode(channel, payload))
        flush = getattr(self._stdout, "flush", None)
        if flush is not None:
            flush()

    def poll(self):
        """Read the bytes waiting on the line and deliver complete frames."""
        while self._poller.poll(0):
            data = self._stdin.read(1)
            if not data:
                return
            self._feed(data[0])

    def _feed(self, byte):
        if byte == 0x0A:
            if self._discarding:
                self._discarding = False
            else:
                self._line.append(byte)
                frame = self.decoder.decode(bytes(self._line))
                if frame is not None:
                    self.on_message(frame[0], frame[1])
            self._line = bytearray()
            return
        if self._discarding:
            return
        if len(self._line) >= MAX_LINE:
            # Resynchronise at the next newline.
            self.decoder.oversize += 1
            self._discarding = True
            self._line = bytearray()
            return
        self._line.append(byte)

    def close(self):
        """Announce ``offline`` on the line."""
        if self.connected:
            self._write("availability", "offline")
        self.connected = False
