"""Local HLS: MPEG-TS segments, low-latency parts and the live playlist.

The writer takes the camera's packets one by one. It cuts a new segment at
the first video key frame at least ``segment_s`` after the segment's start.
It cuts a new partial segment (part) before a frame that would make the
part longer than ``part_s``. Parts are byte ranges of the segment being
written (RFC 8216bis, section 4.4.4.9), served from memory, and finished
segments are also written as files. The playlist follows Apple's Low-Latency HLS
profile: EXT-X-PART, EXT-X-PART-INF, EXT-X-SERVER-CONTROL with blocking
reload, and EXT-X-PRELOAD-HINT for the part being written.

When the stream stops, :meth:`HlsWriter.end` finishes the segment being
written and ends the playlist with EXT-X-ENDLIST, so players stop waiting
for more. When it starts again, the next segment follows after
EXT-X-DISCONTINUITY and the tag goes away: media sequence numbers go on
rising and earlier segments leave the window as usual (RFC 8216, section
6.2.2), so a player that reloads gets a valid live playlist and a new one
joins at its live end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

from appliance.errors import NightboxError
from appliance.studio._mpegts import TsMuxer
from hardware.camera import EncodedPacket, StreamInfo

_log = logging.getLogger(__name__)

PLAYLIST_NAME = "live.m3u8"
SEGMENT_SUFFIX = ".ts"
# A client may request a segment at most two beyond the playlist's last
# finished one (RFC 8216bis, section 6.2.5.2). A request further ahead is a
# bad request.
_MAX_MSN_AHEAD = 2
# Parts are listed for the segments in the last three target durations,
# as RFC 8216bis, section 6.2.2 lets a server drop older ones.
_PART_LISTING_TARGETS = 3
_MIN_WINDOW = 3
_LOG_EVERY_WRITE_ERRORS = 100
# EXT-X-TARGETDURATION allows a second beyond the longest segment the key
# frame grid gives, for key frames that come a few frames late.
_TARGET_HEADROOM_S = 1
# A gap in the video this long is a stall rather than a few skipped frames.
_STALL_GAP_S = Fraction(1, 2)
_LONG_SEGMENT_LOG_INTERVAL_S = 60.0


class HlsError(NightboxError, RuntimeError):
    """A failed HLS writer operation, with the reason in the message."""


class HlsRequestError(HlsError, ValueError):
    """A blocking playlist request that can never be served (HTTP 400)."""


@dataclass(frozen=True)
class _Part:
    offset: int
    size: int
    duration: Fraction
    independent: bool


@dataclass
class _Segment:
    msn: int
    name: str
    start: Fraction
    program_date_time: float
    discontinuity: bool
    data: bytearray = field(default_factory=bytearray)
    parts: list[_Part] = field(default_factory=list)
    duration: Fraction = Fraction(0)
    video_end: Fraction = Fraction(0)
    # What delayed the segment's end, for the warning about a long segment:
    # the longest gap between two video frames, the frame time missing in
    # all, and the start of the newest key frame.
    longest_gap: Fraction = Fraction(0)
    missing: Fraction = Fraction(0)
    last_key: Fraction = Fraction(0)
    # The part being written: where it starts and whether it has video yet.
    part_offset: int = 0
    part_start: Fraction = Fraction(0)
    part_has_video: bool = False
    part_independent: bool = False

    @property
    def end(self) -> Fraction:
        return self.start + self.duration


class HlsWriter:
    """Writes the live HLS stream of one camera into ``folder``.

    ``feed`` takes packets in capture order. The first segment starts at
    the first video key frame; earlier packets are dropped and counted in
    ``packets_dropped``. ``discontinuity`` ends the segment being written,
    and the next one starts at the next key frame with EXT-X-DISCONTINUITY
    (a switch between camera and slate). The newest ``window`` segments are
    kept; older files are deleted. A failed file write is logged and
    counted in ``write_errors`` and the stream goes on from memory.
    ``end`` ends the playlist while the stream is stopped; the next key
    frame fed starts a new segment after a discontinuity.

    A segment ends at the first video key frame at least ``segment_s``
    after its start. ``keyframe_interval_s`` is the camera's key frame
    interval when known; with one that does not divide ``segment_s``,
    segments run to the next multiple of it. EXT-X-TARGETDURATION is set
    here, once, from the longest such segment rounded up plus a second of
    headroom, because a live playlist must never change it (RFC 8216,
    section 4.3.3.1). A segment that still runs longer, because the camera
    stalled or skipped frames and its next key frame came late, is cut at
    that key frame, counted in ``long_segments`` and logged with the cause.
    ``wall_clock`` gives the time (Unix seconds) written in
    EXT-X-PROGRAM-DATE-TIME.
    """

    def __init__(
        self,
        folder: Path,
        info: StreamInfo,
        *,
        segment_s: float = 2.0,
        part_s: float = 0.5,
        window: int = 6,
        keyframe_interval_s: float | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not segment_s > 0:
            raise ValueError(
                f"invalid HLS segment length {segment_s!r} s: give seconds above 0"
            )
        if not 0 < part_s <= segment_s:
            raise ValueError(
                f"invalid HLS part length {part_s!r} s: give seconds above 0 and "
                f"at most the segment length {segment_s} s"
            )
        if keyframe_interval_s is not None and not keyframe_interval_s > 0:
            raise ValueError(
                f"invalid key frame interval {keyframe_interval_s!r} s: give seconds "
                "above 0, or None when it is not known"
            )
        if window < _MIN_WINDOW:
            raise ValueError(
                f"invalid HLS window {window!r}: keep at least {_MIN_WINDOW} segments"
            )
        self.folder = folder
        self.info = info
        self.segment_s = segment_s
        self.part_s = part_s
        self.window = window
        self._wall_clock = wall_clock
        self._segment_length = Fraction(segment_s)
        self._part_length = Fraction(part_s)
        self._target_s = _target_duration_s(segment_s, keyframe_interval_s)
        # Segment names carry a per-writer prefix, so a player holding an
        # old playlist never fetches another run's segment under its name.
        self._name_prefix = f"segment-{secrets.token_hex(3)}-"
        self._muxer = TsMuxer(info)
        self._segments: deque[_Segment] = deque()
        self._current: _Segment | None = None
        self._next_msn = 0
        self._completed_msn = -1
        self._discontinuity_sequence = 0
        self._pending_discontinuity = False
        self._time_anchor: tuple[float, Fraction] | None = None
        self._changed = asyncio.Event()
        self._ended = False
        self._closed = False
        self.segments_written = 0
        self.packets_dropped = 0
        self.write_errors = 0
        self.long_segments = 0
        self._long_segment_logged_at = -math.inf
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_files()

    def _remove_stale_files(self) -> None:
        stale = [
            *self.folder.glob(f"segment-*{SEGMENT_SUFFIX}"),
            *self.folder.glob(".*.partial"),
        ]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            _log.info("removed %d old HLS files from %s", len(stale), self.folder)

    @property
    def media_sequence(self) -> int:
        """The media sequence number of the first segment in the playlist."""
        if self._segments:
            return self._segments[0].msn
        if self._current is not None:
            return self._current.msn
        return self._next_msn

    @property
    def live_msn(self) -> int:
        """The media sequence number of the segment being written (or next)."""
        return self._current.msn if self._current is not None else self._next_msn

    @property
    def target_duration_s(self) -> int:
        """The playlist's EXT-X-TARGETDURATION in seconds."""
        return self._target_s

    @property
    def closed(self) -> bool:
        """Whether ``close`` ended the stream."""
        return self._closed

    @property
    def ended(self) -> bool:
        """Whether the playlist ends (EXT-X-ENDLIST): stopped or closed."""
        return self._ended or self._closed

    def feed(self, packet: EncodedPacket) -> None:
        """Add the next packet of the stream."""
        if self._closed:
            raise HlsError(
                f"the HLS writer of {self.folder} is closed: make a new one to "
                "stream again"
            )
        if packet.kind == "video":
            self._feed_video(packet)
            return
        if self._current is None:
            self.packets_dropped += 1
            return
        self._current.data += self._muxer.mux(packet)

    def _feed_video(self, packet: EncodedPacket) -> None:
        start = Fraction(packet.pts) * packet.time_base
        frame = Fraction(packet.duration) * packet.time_base
        end = start + frame
        segment = self._current
        if segment is not None and start - segment.video_end > frame / 2:
            # Frames are missing before this one: skipped, or a stall.
            gap = start - segment.video_end
            segment.longest_gap = max(segment.longest_gap, gap)
            segment.missing += gap
        if (
            segment is not None
            and packet.keyframe
            and start - segment.start >= self._segment_length
        ):
            self._finish_segment(segment, start)
            segment = None
        if segment is None:
            if not packet.keyframe:
                self.packets_dropped += 1
                return
            segment = self._open_segment(start)
        elif segment.part_has_video and end - segment.part_start > self._part_length:
            self._finish_part(segment, start)
        if not segment.part_has_video:
            segment.part_has_video = True
            segment.part_independent = packet.keyframe
        if packet.keyframe:
            segment.last_key = start
        segment.data += self._muxer.mux(packet)
        segment.video_end = end

    def _open_segment(self, start: Fraction) -> _Segment:
        if self._time_anchor is None:
            self._time_anchor = (self._wall_clock(), start)
        anchor_wall, anchor_media = self._time_anchor
        segment = _Segment(
            msn=self._next_msn,
            name=f"{self._name_prefix}{self._next_msn:06d}{SEGMENT_SUFFIX}",
            start=start,
            program_date_time=anchor_wall + float(start - anchor_media),
            discontinuity=self._pending_discontinuity,
            video_end=start,
            part_start=start,
            last_key=start,
        )
        self._next_msn += 1
        self._pending_discontinuity = False
        # New video after a stop: the playlist is live again.
        self._ended = False
        self._current = segment
        return segment

    def _close_part(self, segment: _Segment, end: Fraction) -> None:
        size = len(segment.data) - segment.part_offset
        if size == 0 or not segment.part_has_video:
            return
        segment.parts.append(
            _Part(
                offset=segment.part_offset,
                size=size,
                duration=end - segment.part_start,
                independent=segment.part_independent,
            )
        )
        segment.part_offset = len(segment.data)
        segment.part_start = end
        segment.part_has_video = False
        segment.part_independent = False

    def _finish_part(self, segment: _Segment, end: Fraction) -> None:
        self._close_part(segment, end)
        self._publish()

    def _finish_segment(self, segment: _Segment, end: Fraction) -> None:
        self._close_part(segment, end)
        segment.duration = end - segment.start
        if math.floor(segment.duration + Fraction(1, 2)) > self._target_s:
            self._report_long_segment(segment, end)
        self._current = None
        self._completed_msn = segment.msn
        self._segments.append(segment)
        self.segments_written += 1
        self._write_file(self.folder / segment.name, bytes(segment.data))
        while len(self._segments) > self.window:
            removed = self._segments.popleft()
            if removed.discontinuity:
                self._discontinuity_sequence += 1
            try:
                (self.folder / removed.name).unlink(missing_ok=True)
            except OSError as err:
                self._count_write_error(f"deleting {removed.name}", err)
        self._publish()

    def _report_long_segment(self, segment: _Segment, end: Fraction) -> None:
        # The target duration stays as it is: a live playlist must not change
        # it, and the settings are not at fault when the camera fell behind.
        self.long_segments += 1
        now = time.monotonic()
        if now - self._long_segment_logged_at < _LONG_SEGMENT_LOG_INTERVAL_S:
            return
        self._long_segment_logged_at = now
        if segment.longest_gap >= _STALL_GAP_S:
            cause = (
                f"the camera stalled: no video for {float(segment.longest_gap):.3f} s"
            )
        elif segment.missing > 0:
            cause = (
                "the camera skipped frames it was late for "
                f"({float(segment.missing):.3f} s of video missing), so its next "
                "key frame came late; the box may be overloaded"
            )
        else:
            without_key = float(end - segment.last_key)
            cause = f"the camera sent no key frame for {without_key:.3f} s"
        _log.warning(
            "HLS segment %s lasts %.3f s, beyond the target duration of %d s, "
            "because %s; it ends at the next key frame and the stream goes on "
            "(%d long segments so far)",
            segment.name,
            float(segment.duration),
            self._target_s,
            cause,
            self.long_segments,
        )

    def discontinuity(self) -> None:
        """End the segment being written, so that the next one starts a new timeline."""
        segment = self._current
        if segment is not None:
            self._finish_segment(segment, segment.video_end)
        self._pending_discontinuity = True
        self._time_anchor = None

    def end(self) -> None:
        """End the playlist for a stop of the stream (EXT-X-ENDLIST).

        The segment being written is finished, so the playlist's last entry
        is a whole segment and its preload hint goes away. The next key
        frame fed starts a new segment after EXT-X-DISCONTINUITY.
        """
        if self.ended:
            return
        self.discontinuity()
        self._ended = True
        self._publish()

    def close(self) -> None:
        """Finish the last segment and end the playlist (EXT-X-ENDLIST)."""
        if self._closed:
            return
        segment = self._current
        if segment is not None:
            self._finish_segment(segment, segment.video_end)
        self._closed = True
        self._publish()

    def _publish(self) -> None:
        self._write_file(self.folder / PLAYLIST_NAME, self.playlist().encode())
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _write_file(self, path: Path, data: bytes) -> None:
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError as err:
            self._count_write_error(f"writing {path.name}", err)

    def _count_write_error(self, action: str, err: OSError) -> None:
        self.write_errors += 1
        if self.write_errors % _LOG_EVERY_WRITE_ERRORS == 1:
            _log.warning(
                "HLS %s in %s failed (%d failures so far); serving from memory: %s",
                action,
                self.folder,
                self.write_errors,
                err,
            )

    def playlist(self) -> str:
        """Return the live media playlist as it is now."""
        part_target = f"{self.part_s:.5g}"
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:6",
            f"#EXT-X-TARGETDURATION:{self._target_s}",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={3 * self.part_s:.5g}",
            f"#EXT-X-PART-INF:PART-TARGET={part_target}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self._discontinuity_sequence}",
        ]
        segments = list(self._segments)
        current = self._current
        if current is not None:
            segments.append(current)
        live_end = max((s.end for s in self._segments), default=Fraction(0))
        if current is not None:
            live_end = current.part_start
        parts_from = live_end - _PART_LISTING_TARGETS * self._target_s
        for segment in segments:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(
                f"#EXT-X-PROGRAM-DATE-TIME:{_iso_time(segment.program_date_time)}"
            )
            if segment is current or segment.end > parts_from:
                lines.extend(_part_line(segment.name, part) for part in segment.parts)
            if segment is not current:
                lines.append(f"#EXTINF:{float(segment.duration):.5f},")
                lines.append(segment.name)
        if current is not None:
            lines.append(
                f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{current.name}",'
                f"BYTERANGE-START={current.part_offset}"
            )
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def segment_bytes(self, name: str) -> bytes | None:
        """Return the bytes of a segment in the window, None for an unknown name.

        For the segment being written, the bytes written so far: its
        finished parts and part of the next one.
        """
        segment = self._find(name)
        return bytes(segment.data) if segment is not None else None

    def _find(self, name: str) -> _Segment | None:
        current = self._current
        if current is not None and current.name == name:
            return current
        for segment in self._segments:
            if segment.name == name:
                return segment
        return None

    def part_end(self, name: str, offset: int) -> int | None:
        """Return where the finished part containing byte ``offset`` of ``name`` ends.

        The end is a byte offset into the segment, one past the part's last
        byte. None while that part is still being written, and for a byte
        the segment does not contain: an unknown segment, or an offset past
        the end of a finished one.
        """
        segment = self._find(name)
        if segment is None or offset < 0:
            return None
        for part in segment.parts:
            if part.offset <= offset < part.offset + part.size:
                return part.offset + part.size
        if segment is not self._current and offset < len(segment.data):
            return len(segment.data)
        return None

    async def wait_for_part(
        self, name: str, offset: int, timeout_s: float
    ) -> int | None:
        """Wait until the part containing byte ``offset`` of ``name`` is finished.

        Returns the part's end as ``part_end`` gives it, so a request for
        a preload hint (``offset`` is its BYTERANGE-START) or for a byte
        range not written yet can be served as whole parts. Returns
        None when ``timeout_s`` seconds pass first, when ``name`` is not a
        segment in the window or the one being written, when the segment
        ended before ``offset``, or when the playlist ends. Raises
        HlsRequestError for a negative offset.
        """
        if offset < 0:
            raise HlsRequestError(
                f"invalid byte offset {offset} in segment {name!r}: give 0 or more"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            end = self.part_end(name, offset)
            if end is not None:
                return end
            segment = self._find(name)
            remaining = deadline - loop.time()
            if (
                segment is None
                or segment is not self._current
                or self.ended
                or remaining <= 0
            ):
                return None
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return self.part_end(name, offset)

    def has(self, msn: int, part: int | None = None) -> bool:
        """Return whether the playlist contains segment ``msn`` or its part ``part``.

        A finished segment counts as containing every part index, because a
        client that requests a part past the segment's last one expects the
        playlist that follows the segment's end.
        """
        if msn <= self._completed_msn:
            return True
        current = self._current
        if part is None or current is None or current.msn != msn:
            return False
        return len(current.parts) > part

    async def wait_for(self, msn: int, part: int | None, timeout_s: float) -> bool:
        """Wait until the playlist contains segment ``msn`` (part ``part``).

        Returns True once it does, False when ``timeout_s`` seconds pass
        first or the playlist ends without it. Raises HlsRequestError for a
        request that can never be served: a negative number, or a segment
        more than two beyond the last finished one.
        """
        if msn < 0 or (part is not None and part < 0):
            raise HlsRequestError(
                f"invalid blocking request _HLS_msn={msn} _HLS_part={part}: "
                "give numbers of 0 or more"
            )
        if msn > self._completed_msn + _MAX_MSN_AHEAD:
            raise HlsRequestError(
                f"_HLS_msn={msn} is more than {_MAX_MSN_AHEAD} segments beyond the "
                f"last finished segment {self._completed_msn}: reload the playlist "
                "without it"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.has(msn, part):
            remaining = deadline - loop.time()
            if self.ended or remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return self.has(msn, part)
        return True


def _target_duration_s(segment_s: float, keyframe_interval_s: float | None) -> int:
    # Decimal text keeps a setting such as 0.1 s exact.
    longest = Fraction(repr(segment_s))
    if keyframe_interval_s is not None:
        # The cut waits for the first key frame at or after segment_s.
        interval = Fraction(repr(keyframe_interval_s))
        longest = math.ceil(longest / interval) * interval
    return math.ceil(longest) + _TARGET_HEADROOM_S


def _part_line(name: str, part: _Part) -> str:
    line = (
        f'#EXT-X-PART:DURATION={float(part.duration):.5f},URI="{name}",'
        f'BYTERANGE="{part.size}@{part.offset}"'
    )
    return line + ",INDEPENDENT=YES" if part.independent else line


def _iso_time(unix_s: float) -> str:
    moment = datetime.fromtimestamp(unix_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
