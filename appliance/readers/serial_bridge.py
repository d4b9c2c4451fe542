"""The box's bridge between a reader on USB serial and the site's broker.

A reader with ``uplink = "serial"`` cannot reach the broker, so the box
publishes its frames for it, as the box, on that reader's own topics. The
bridge trusts the port, never the ids inside frames. A frame goes to the
topics of the reader that the site file assigns to the port. A ``hello``
naming another reader stops the port's frames until a correct ``hello``,
and only the channels of the reader's role pass. Replies to the reader's
kit requests and the box's clock beacon go down the line as frames.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import Counter
from typing import Any

import aiomqtt
import orjson

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.config import ReaderConfig
from appliance.errors import PayloadError
from appliance.readers.clock_beacon import ClockBeacon
from hardware.serial_link import Frame, FrameError, SerialLink, SerialPortError

_LOGGER = logging.getLogger(__name__)

# Channels each role may send; hello and availability need no grant.
_ROLE_CHANNELS = {
    "exit": frozenset({"hello", "availability", "status", "sightings"}),
    "kit": frozenset(
        {"hello", "availability", "status", "sightings", "api/kits/issue"}
    ),
}
_REOPEN_INITIAL_S = 0.5
_REOPEN_MAX_S = 10.0
_CORR = re.compile(r"^[0-9a-f]{1,64}\Z")
_LOG_INTERVAL_S = 5.0
# How long a publish for a frame may wait for the broker, in seconds.
_PUBLISH_TIMEOUT_S = 5.0


class SerialBridge:
    """Serves one reader on its serial port for as long as the box runs.

    ``silence_s`` is how long the port may stay quiet before the reader is
    marked ``offline``. The port is reopened with back-off after it fails.
    """

    def __init__(
        self,
        bus: Bus,
        reader: ReaderConfig,
        clock_beacon: ClockBeacon,
        *,
        silence_s: float,
        reopen_max_s: float = _REOPEN_MAX_S,
    ) -> None:
        if reader.serial_port is None:
            raise ValueError(f"reader {reader.id} has no serial_port")
        self.reader = reader
        self.port = reader.serial_port
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self._bus = bus
        self._topics = bus.topics
        self._clock_beacon = clock_beacon
        self._silence_s = silence_s
        self._reopen_max_s = reopen_max_s
        self._allowed = _ROLE_CHANNELS[reader.role]
        self._link: SerialLink | None = None
        self._task: asyncio.Task[None] | None = None
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._identified = True
        self._online = False
        self._last_frame = time.monotonic()
        self._last_log: dict[str, float] = {}
        self._decoder_counts: Counter[str] = Counter()

    def status(self) -> dict[str, Any]:
        """Return the port, whether it is open, and the bridge's counters."""
        counts = Counter(self._decoder_counts)
        if self._link is not None:
            counts.update(self._link.counts)
        counts.update(self.counts)
        return {
            "port": self.port,
            "open": self._link is not None,
            "online": self._online,
            "last_error": self.last_error,
            **dict(sorted(counts.items())),
        }

    async def start(self) -> None:
        """Start serving the port; opening it is retried in the background."""
        self._bus.subscribe(
            self._topics.reply("reader", self.reader.id), self._on_reply
        )
        self._clock_beacon.add_listener(self._on_clock)
        self._task = asyncio.create_task(
            self._serve_forever(), name=f"serial-bridge-{self.reader.id}"
        )

    async def stop(self) -> None:
        """Stop serving, close the port and mark the reader offline."""
        self._clock_beacon.remove_listener(self._on_clock)
        await cancel_and_wait(self._task)
        self._task = None
        await self._close_link()
        await self._publish_offline()

    async def _serve_forever(self) -> None:
        backoff_s = _REOPEN_INITIAL_S
        while True:
            link = SerialLink(self.port, self._frames.put_nowait, self._on_closed)
            try:
                await link.open()
            except SerialPortError as err:
                self.counts["open_failures"] += 1
                self.last_error = str(err)
                self._log_limited("open", "%s; retrying in %.1f s", err, backoff_s)
                await self._publish_offline()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._reopen_max_s)
                continue
            self.counts["opens"] += 1
            self._link = link
            self._closed.clear()
            self._identified = True
            opened_at = self._last_frame = time.monotonic()
            try:
                await self._serve_link()
            finally:
                await self._close_link()
            await self._publish_offline()
            # A port can open and then fail at once, for example on a server
            # that drops each connection. It is reopened with the same
            # back-off as a port that does not open, so the bridge never spins.
            if time.monotonic() - opened_at >= self._reopen_max_s:
                backoff_s = _REOPEN_INITIAL_S
            self._log_limited(
                "reopen",
                "Serial port %s of reader %s closed (%s); reopening in %.1f s",
                self.port,
                self.reader.id,
                self.last_error,
                backoff_s,
            )
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._reopen_max_s)

    async def _serve_link(self) -> None:
        """Handle frames until the port closes."""
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while not self._closed.is_set():
                remaining_s = self._silence_s - (time.monotonic() - self._last_frame)
                if remaining_s <= 0:
                    if self._online:
                        self.counts["silences"] += 1
                        _LOGGER.warning(
                            "Reader %s on serial port %s sent nothing for %.1f s",
                            self.reader.id,
                            self.port,
                            self._silence_s,
                        )
                        await self._publish_offline()
                    remaining_s = self._silence_s
                get = asyncio.ensure_future(self._frames.get())
                done, _pending = await asyncio.wait(
                    {get, closed},
                    timeout=remaining_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if get not in done:
                    get.cancel()
                    continue
                self._last_frame = time.monotonic()
                await self._handle(get.result())
        finally:
            closed.cancel()

    def _on_closed(self, error: SerialPortError) -> None:
        self.counts["port_errors"] += 1
        self.last_error = str(error)
        self._closed.set()

    async def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            self._decoder_counts.update(link.counts)
            await link.close()
        # Frames still queued belong to the closed port.
        while not self._frames.empty():
            self._frames.get_nowait()

    async def _handle(self, frame: Frame) -> None:
        channel = frame.channel
        if channel == "hello":
            self._hello(frame.payload)
            return
        if not self._identified:
            self.counts["ignored"] += 1
            return
        if channel not in self._allowed:
            self.counts["forbidden"] += 1
            self._log_limited(
                "forbidden",
                "Reader %s on serial port %s sent a %s frame, which a %s reader "
                "may not send; dropped",
                self.reader.id,
                self.port,
                channel,
                self.reader.role,
            )
            return
        if channel == "status" and not self._status_valid(frame.payload):
            return
        try:
            await self._publish(frame)
        except (aiomqtt.MqttError, TimeoutError) as err:
            # The reader keeps its batches and retries requests, so a frame
            # lost here is sent again.
            self.counts["publish_failures"] += 1
            self._log_limited(
                "publish",
                "Could not publish a %s frame of reader %s: %s",
                channel,
                self.reader.id,
                err,
            )

    def _status_valid(self, payload: bytes) -> bool:
        """Return whether a status payload is a valid envelope.

        An invalid one is counted as ``corrupt`` and logged. The status is
        published retained, so a malformed one would stay on the reader's
        status topic until the next good one replaced it.
        """
        try:
            envelope.decode(payload)
        except PayloadError as err:
            self.counts["corrupt"] += 1
            self._log_limited(
                "status",
                "Reader %s on serial port %s sent an invalid status envelope "
                "(%s); dropped",
                self.reader.id,
                self.port,
                err,
            )
            return False
        return True

    def _hello(self, payload: bytes) -> None:
        data = _envelope_data(payload)
        reader = data.get("reader")
        role = data.get("role")
        if reader == self.reader.id and role == self.reader.role:
            self.counts["hello"] += 1
            if not self._identified:
                _LOGGER.info(
                    "Reader %s identified itself on serial port %s again",
                    self.reader.id,
                    self.port,
                )
            self._identified = True
            return
        self.counts["wrong-reader"] += 1
        self._identified = False
        self._log_limited(
            "wrong-reader",
            "Serial port %s belongs to %s reader %s, but the board says it is "
            "%r reader %r; its frames are ignored until it says hello as %s",
            self.port,
            self.reader.role,
            self.reader.id,
            role,
            reader,
            self.reader.id,
        )

    async def _publish(self, frame: Frame) -> None:
        reader_id = self.reader.id
        if frame.channel == "availability":
            await self._bus.publish(
                self._topics.availability("reader", reader_id),
                frame.payload,
                retain=True,
                timeout_s=_PUBLISH_TIMEOUT_S,
            )
            self._online = frame.payload == b"online"
            self.counts["published"] += 1
            return
        if not self._online:
            # Frames flow again after a silence, so the reader is back.
            await self._publish_availability(b"online")
        if frame.channel == "status":
            topic = self._topics.status("reader", reader_id)
            await self._bus.publish(
                topic, frame.payload, retain=True, timeout_s=_PUBLISH_TIMEOUT_S
            )
        elif frame.channel == "sightings":
            await self._bus.publish(
                self._topics.sightings(reader_id),
                frame.payload,
                timeout_s=_PUBLISH_TIMEOUT_S,
            )
        else:
            await self._publish_request(frame.payload)
        self.counts["published"] += 1

    async def _publish_request(self, payload: bytes) -> None:
        # The box's request server replies on the reader's reply topic,
        # which this bridge forwards down the line. The reply payload
        # repeats the envelope's corr, so the board can match it.
        corr = _envelope_corr(payload)
        correlation = corr.encode() if corr else uuid.uuid4().hex.encode()
        await self._bus.publish(
            self._topics.device_api("reader", self.reader.id, "kits", "issue"),
            payload,
            response_topic=self._topics.reply("reader", self.reader.id),
            correlation=correlation,
            timeout_s=_PUBLISH_TIMEOUT_S,
        )

    async def _publish_availability(self, value: bytes) -> None:
        await self._bus.publish(
            self._topics.availability("reader", self.reader.id),
            value,
            retain=True,
            timeout_s=_PUBLISH_TIMEOUT_S,
        )
        self._online = value == b"online"

    async def _publish_offline(self) -> None:
        if not self._online and self.counts["offline_published"]:
            return
        try:
            await self._publish_availability(b"offline")
        except (aiomqtt.MqttError, TimeoutError) as err:
            self._online = False
            _LOGGER.warning("Could not mark reader %s offline: %s", self.reader.id, err)
            return
        self.counts["offline_published"] += 1

    async def _on_reply(self, incoming: Incoming) -> None:
        self._send("reply", incoming.payload)

    def _on_clock(self, payload: bytes) -> None:
        if self._identified:
            self._send("clock", payload)

    def _send(self, channel: str, payload: bytes) -> None:
        link = self._link
        if link is None:
            self.counts[f"{channel}_dropped"] += 1
            return
        try:
            sent = link.send(channel, payload)
        except FrameError as err:
            self.counts[f"{channel}_dropped"] += 1
            self._log_limited(
                "frame",
                "Could not frame a %s for reader %s: %s",
                channel,
                self.reader.id,
                err,
            )
            return
        self.counts[f"{channel}_sent" if sent else f"{channel}_dropped"] += 1

    def _log_limited(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, 0.0) >= _LOG_INTERVAL_S:
            self._last_log[key] = now
            _LOGGER.warning(message, *args)


def _envelope_data(payload: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else {}


def _envelope_corr(payload: bytes) -> str | None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    corr = body.get("corr") if isinstance(body, dict) else None
    return corr if isinstance(corr, str) and _CORR.match(corr) else None
