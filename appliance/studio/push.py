"""An optional push of the stream to an RTMP, SRT or MPEG-TS ingest.

The push runs FFmpeg's muxer (through PyAV) in a thread of its own with a
bounded queue in front, so a slow or broken link never holds up the
camera: ``feed`` only queues, packets that do not fit are dropped (and
counted) until the next key frame, and the thread reconnects with an
exponential backoff. URLs carry stream keys and SRT passphrases, so the
push logs and reports only ``scheme://host:port`` and never the URL itself.

The FFmpeg libraries that PyAV bundles may lack a protocol (PyAV 18's
build has no ``srt``). For ``srt://`` the push then muxes MPEG-TS in this
process and pipes it to an ``ffmpeg`` child process, which sends it on
(Debian's ffmpeg links libsrt): see ``_ffmpeg_relay``.
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
from appliance.studio._ffmpeg_relay import (
    RELAY_EXIT_GRACE_S,
    FfmpegRelay,
    describe_error,
    ffmpeg_protocol_problem,
    redact_url,
)
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
# Schemes an ffmpeg child process sends when PyAV's FFmpeg lacks the protocol.
FFMPEG_RELAY_SCHEMES = ("srt",)
FFMPEG = "/usr/bin/ffmpeg"
_STOP = None


@dataclass
class _Counters:
    connected: bool = False
    sent: int = 0
    dropped: int = 0
    reconnects: int = 0
    last_error: str | None = None
    # Packets written to an ffmpeg child that has not yet reported its
    # connection: they count as sent once it does, as dropped if it fails.
    unconfirmed: int = 0


class _PushUnsupportedError(Exception):
    """A push URL that neither PyAV's FFmpeg nor the ffmpeg program can send to."""


class _RelayFailedError(Exception):
    """The ffmpeg child of a push stopped sending, for the reason in the message."""


class StreamPush:
    """A push of the packets fed to it to ``url``, from a thread started at once.

    ``url`` is ``rtmp://``, ``rtmps://`` (FLV), ``srt://``, ``tcp://`` or
    ``udp://`` (MPEG-TS). Each connection starts at a video key frame.
    ``queue_packets`` bounds the packets waiting to be sent. ``io_timeout_s``
    bounds a connect or a blocked write, after which the push reconnects. It
    waits ``retry_s`` and then twice as long each time up to ``max_retry_s``,
    and starts again from ``retry_s`` after a connection that sent packets.
    When PyAV's FFmpeg lacks the ``srt`` protocol, the ``ffmpeg`` program at
    ``ffmpeg`` sends the stream instead, and libsrt bounds its connect (3 s
    unless the URL sets ``connect_timeout`` in milliseconds). A URL that
    neither can send to is not retried. A connection is opened when the
    first packet is there to send. ``close`` stops the thread.
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
        ffmpeg: str = FFMPEG,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in PUSH_FORMATS or not parts.hostname:
            raise ValueError(
                f"invalid push URL {redact_url(url)!r}: give "
                f"{', '.join(f'{s}://host:port/...' for s in PUSH_FORMATS)}"
            )
        self.format = PUSH_FORMATS[scheme]
        self.target = redact_url(url)
        self.info = info
        self._url = url
        self._scheme = scheme
        self._ffmpeg = ffmpeg
        # Set once PyAV's FFmpeg has reported that it lacks the protocol.
        self._through_ffmpeg = False
        # The packet whose mux found the protocol missing, to send it first
        # through ffmpeg. Only the push thread uses it.
        self._packet_to_resend: EncodedPacket | None = None
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
        """Queue ``packet`` for sending without blocking.

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
        """Stop sending and wait for the thread (blocks; call it off the loop).

        An ffmpeg child gets its input closed, so it can end the connection
        cleanly, and is killed when it has not exited within a second.
        """
        self._stopping.set()
        # When the queue is full, the thread checks the stop flag between packets.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        if timeout_s is None:
            timeout_s = self._io_timeout_s + 2 * RELAY_EXIT_GRACE_S + 1
        self._thread.join(timeout_s)
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
            except _PushUnsupportedError as err:
                self._fail(str(err), retry=False)
                self._discard_until(None)
                return
            except _RelayFailedError as err:
                self._fail(str(err), retry=True)
            except (av.FFmpegError, OSError, AacConfigError) as err:
                self._fail(describe_error(err), retry=True)
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
        if not self._through_ffmpeg:
            container = av.open(
                self._url, "w", format=self.format, timeout=self._io_timeout_s
            )
            try:
                # The muxer opens the URL when it writes the first packet.
                self._send_and_close(container, None)
                return
            except av.ProtocolNotFoundError as err:
                self._switch_to_ffmpeg(err)
        self._send_through_ffmpeg()

    def _switch_to_ffmpeg(self, err: av.ProtocolNotFoundError) -> None:
        """Send through the ffmpeg program from now on, or raise why it cannot."""
        if self._scheme not in FFMPEG_RELAY_SCHEMES:
            raise _PushUnsupportedError(
                f"this FFmpeg build cannot send to {self.target} "
                f"({err.strerror}): use one of {', '.join(PUSH_FORMATS)}"
            ) from err
        problem = ffmpeg_protocol_problem(self._ffmpeg, self._scheme)
        if problem is not None:
            raise _PushUnsupportedError(
                f"cannot send to {self.target}: the FFmpeg {av.ffmpeg_version_info} "
                f"bundled with PyAV has no {self._scheme} protocol and {problem}. "
                f"Install FFmpeg with {self._scheme} support at {self._ffmpeg} "
                "(Debian and Raspberry Pi OS: sudo apt-get install ffmpeg), "
                "then restart the box"
            ) from err
        self._through_ffmpeg = True
        _log.info(
            "push to %s: PyAV's FFmpeg has no %s protocol, so %s sends the stream",
            self.target,
            self._scheme,
            self._ffmpeg,
        )

    def _send_through_ffmpeg(self) -> None:
        """Mux MPEG-TS into a pipe to an ffmpeg child that sends it to the URL."""
        relay = FfmpegRelay(
            self._ffmpeg,
            self._url,
            self.format,
            target=self.target,
            on_connected=self._relay_connected,
            stopping=self._stopping,
            io_timeout_s=self._io_timeout_s,
        )
        error: Exception | None = None
        try:
            container = av.open(relay.writer, "w", format="mpegts")
            self._send_and_close(container, relay)
        except (av.FFmpegError, OSError) as err:
            error = err
        finally:
            relay.stop()
            with self._lock:
                # The progress reader may have reported the connection late.
                self._counters.connected = False
                self._counters.dropped += self._counters.unconfirmed
                self._counters.unconfirmed = 0
        if not self._stopping.is_set():
            raise _RelayFailedError(relay.failure_reason(error))

    def _relay_connected(self) -> None:
        with self._lock:
            self._counters.connected = True
            self._counters.sent += self._counters.unconfirmed
            self._counters.unconfirmed = 0
        _log.info("push to %s: connected through %s", self.target, self._ffmpeg)

    def _send_and_close(
        self, container: av.container.OutputContainer, relay: FfmpegRelay | None
    ) -> None:
        try:
            self._send(container, relay)
        finally:
            with self._lock:
                self._counters.connected = False
            try:
                container.close()
            except (av.FFmpegError, OSError) as err:
                # After the ffmpeg child exits, the close cannot flush to it,
                # and the reason for the exit is reported instead.
                if relay is None or not relay.exited():
                    _log.info(
                        "push to %s: closing failed: %s",
                        self.target,
                        describe_error(err),
                    )

    def _send(
        self, container: av.container.OutputContainer, relay: FfmpegRelay | None
    ) -> None:
        """Mux queued packets into ``container`` until the push closes.

        With a ``relay``, the connection is up only once the ffmpeg child
        reports it, and the loop ends when the child exits.
        """
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
                packet = self._next_packet()
            except queue.Empty:
                if relay is not None and relay.exited():
                    return
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
            try:
                container.mux(av_packet)
            except av.ProtocolNotFoundError:
                self._packet_to_resend = packet
                raise
            self._count_sent(linked=relay is None)

    def _next_packet(self) -> EncodedPacket | None:
        """Return the held packet or else the next queued one (queue.Empty: none)."""
        if self._packet_to_resend is not None:
            packet, self._packet_to_resend = self._packet_to_resend, None
            return packet
        return self._queue.get(timeout=0.5)

    def _count_sent(self, *, linked: bool) -> None:
        """Count one muxed packet; ``linked``: the mux itself proves the link."""
        with self._lock:
            counters = self._counters
            if linked and not counters.connected:
                _log.info("push to %s: connected", self.target)
                counters.connected = True
            if counters.connected:
                counters.sent += 1
            else:
                counters.unconfirmed += 1
