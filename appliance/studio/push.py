"""An optional push of the stream to an RTMP, SRT or MPEG-TS ingest.

The push runs FFmpeg's muxer (through PyAV) in a thread of its own with a
bounded queue in front, so a slow or broken link never holds up the
camera: ``feed`` only queues, packets that do not fit are dropped (and
counted) until the next key frame, and the thread reconnects with an
exponential backoff. URLs carry stream keys, so the push logs and reports
only ``scheme://host:port`` and never the URL itself.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import av
import av.container

from appliance.studio._aac import AacConfigError, AdtsFramer
from hardware.camera import EncodedPacket, StreamInfo

_log = logging.getLogger(__name__)

# The container each URL scheme carries.
PUSH_FORMATS = {
    "rtmp": "flv",
    "rtmps": "flv",
    "srt": "mpegts",
    "tcp": "mpegts",
    "udp": "mpegts",
}
_STOP = None


@dataclass
class _Counters:
    connected: bool = False
    sent: int = 0
    dropped: int = 0
    reconnects: int = 0
    last_error: str | None = None


class StreamPush:
    """Sends every packet fed to it to ``url``, from a thread it starts at once.

    ``url`` is ``rtmp://``, ``rtmps://`` (FLV), ``srt://``, ``tcp://`` or
    ``udp://`` (MPEG-TS). Each connection starts at a video key frame.
    ``queue_packets`` bounds the packets waiting to be sent; ``io_timeout_s``
    bounds a connect or a blocked write, after which the push reconnects,
    waiting ``retry_s`` and then twice as long each time up to
    ``max_retry_s``. A URL whose protocol the bundled FFmpeg lacks is not
    retried. A connection is opened when the first packet is there to
    send. ``close`` stops the thread.
    """

    def __init__(
        self,
        url: str,
        info: StreamInfo,
        *,
        queue_packets: int = 256,
        io_timeout_s: float = 5.0,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in PUSH_FORMATS or not parts.hostname:
            raise ValueError(
                f"invalid push URL {_redact(url)!r}: give "
                f"{', '.join(f'{s}://host:port/...' for s in PUSH_FORMATS)}"
            )
        self.format = PUSH_FORMATS[scheme]
        self.target = _redact(url)
        self.info = info
        self._url = url
        self._framer = (
            AdtsFramer.from_config(info.audio.extradata) if info.audio else None
        )
        self._io_timeout_s = io_timeout_s
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._queue: queue.Queue[EncodedPacket | None] = queue.Queue(queue_packets)
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Set after a drop: the stream can only resume at a key frame.
        self._skip_to_keyframe = True
        self._thread = threading.Thread(
            target=self._run, name=f"push {self.target}", daemon=True
        )
        self._thread.start()

    def feed(self, packet: EncodedPacket) -> None:
        """Queue ``packet`` for sending; never blocks.

        When the queue is full the packet is dropped, and so is every
        packet after it until the next video key frame.
        """
        if self._stopping.is_set():
            return
        is_keyframe = packet.kind == "video" and packet.keyframe
        if self._skip_to_keyframe and not is_keyframe:
            self._count_drop()
            return
        try:
            self._queue.put_nowait(packet)
            self._skip_to_keyframe = False
        except queue.Full:
            self._skip_to_keyframe = True
            self._count_drop()

    def state(self) -> dict[str, Any]:
        """Return connected, sent, dropped, reconnects, queued and last_error."""
        with self._lock:
            counters = self._counters
            return {
                "connected": counters.connected,
                "sent": counters.sent,
                "dropped": counters.dropped,
                "reconnects": counters.reconnects,
                "queued": self._queue.qsize(),
                "last_error": counters.last_error,
            }

    def close(self, timeout_s: float | None = None) -> None:
        """Stop sending and wait for the thread (blocks; call it off the loop)."""
        self._stopping.set()
        # When the queue is full, the thread checks the stop flag between packets.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        self._thread.join(self._io_timeout_s + 1 if timeout_s is None else timeout_s)
        if self._thread.is_alive():
            _log.warning("push to %s did not stop in time", self.target)

    def _count_drop(self) -> None:
        with self._lock:
            self._counters.dropped += 1

    def _run(self) -> None:
        delay_s = self._retry_s
        while not self._stopping.is_set():
            sent_before = self.state()["sent"]
            try:
                self._connect_and_send()
            except av.ProtocolNotFoundError as err:
                self._fail(
                    f"this FFmpeg build cannot send to {self.target} "
                    f"({err.strerror}): use one of {', '.join(PUSH_FORMATS)}",
                    retry=False,
                )
                self._discard_until(None)
                return
            except (av.FFmpegError, OSError, AacConfigError) as err:
                self._fail(_describe(err), retry=True)
            if self._stopping.is_set():
                return
            if self.state()["sent"] > sent_before:
                delay_s = self._retry_s
            with self._lock:
                self._counters.reconnects += 1
            _log.info("push to %s: reconnecting in %.1f s", self.target, delay_s)
            self._discard_until(time.monotonic() + delay_s)
            delay_s = min(delay_s * 2, self._max_retry_s)

    def _discard_until(self, deadline: float | None) -> None:
        """Drop queued packets until ``deadline`` (None: until closed).

        Packets that arrive while the link is down are stale by the time
        it is back, so the next connection starts with fresh ones.
        """
        while not self._stopping.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                packet = self._queue.get(timeout=remaining)
            except queue.Empty:
                return
            if packet is _STOP:
                return
            self._count_drop()

    def _fail(self, reason: str, *, retry: bool) -> None:
        with self._lock:
            self._counters.connected = False
            self._counters.last_error = reason
        if retry:
            _log.warning("push to %s failed: %s", self.target, reason)
        else:
            _log.error("push to %s stopped: %s", self.target, reason)

    def _connect_and_send(self) -> None:
        container = av.open(
            self._url, "w", format=self.format, timeout=self._io_timeout_s
        )
        try:
            self._send(container)
        finally:
            with self._lock:
                self._counters.connected = False
            try:
                container.close()
            except (av.FFmpegError, OSError) as err:
                _log.info("push to %s: closing failed: %s", self.target, _describe(err))

    def _send(self, container: av.container.OutputContainer) -> None:
        video = container.add_mux_stream(
            self.info.video.codec,
            rate=self.info.video.fps,
            width=self.info.video.width,
            height=self.info.video.height,
        )
        video.time_base = self.info.video.time_base
        audio = None
        if self.info.audio is not None:
            audio = container.add_mux_stream(
                self.info.audio.codec, rate=self.info.audio.sample_rate
            )
            audio.time_base = self.info.audio.time_base
        started = False
        while not self._stopping.is_set():
            try:
                packet = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if packet is _STOP:
                return
            if not started and not (packet.kind == "video" and packet.keyframe):
                self._count_drop()
                continue
            started = True
            stream = video
            data = packet.data
            if packet.kind == "audio":
                if audio is None or self._framer is None:
                    continue
                # FFmpeg's FLV and MPEG-TS muxers both take ADTS frames.
                data = self._framer.frame(packet.data)
                stream = audio
            av_packet = av.Packet(data)
            av_packet.pts = packet.pts
            av_packet.dts = packet.dts
            av_packet.duration = packet.duration
            av_packet.time_base = packet.time_base
            av_packet.is_keyframe = packet.keyframe
            av_packet.stream = stream
            container.mux(av_packet)
            with self._lock:
                if not self._counters.connected:
                    _log.info("push to %s: connected", self.target)
                self._counters.connected = True
                self._counters.sent += 1


def _redact(url: str) -> str:
    """Return ``scheme://host:port`` of ``url``, without path, query or login."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _describe(err: BaseException) -> str:
    # str() of an OSError appends its file name, which for a push would be
    # the URL with its stream key, so only the error's own text is kept.
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return f"{type(err).__name__}: {err}"
