"""The rolling packet buffer that fallback clips are cut from.

The ring keeps the last few seconds of encoded packets as whole groups of
pictures (GOPs). Each group starts at a video key frame and contains the
packets that arrived until the next key frame. Trimming drops whole groups
from the front, so the oldest packet held is always a key frame and a
snapshot can be remuxed without re-encoding.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

from hardware.camera import EncodedPacket

_log = logging.getLogger(__name__)


@dataclass
class _Gop:
    """The packets from one video key frame up to the next one."""

    start: Fraction
    first_sequence: int
    packets: list[EncodedPacket] = field(default_factory=list)
    size: int = 0


class PacketRing:
    """A buffer of at least ``seconds`` of video back from the newest packet.

    ``append`` takes packets in capture order, as a camera yields them.
    Packets before the first video key frame are dropped because no clip
    can start there. When the video timeline jumps backwards (a camera
    restarted without rebased timestamps), the ring starts over, because a
    snapshot across the jump could not be muxed.

    ``wraps`` counts how many times the whole buffer has been replaced:
    it grows by one each time the oldest packet held arrived after every
    packet that the ring held at the previous count (or when it first
    dropped a group).
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(
                f"invalid ring length {seconds!r} s: give the clip length in "
                "seconds, greater than 0"
            )
        self.seconds = seconds
        self._length = Fraction(seconds)
        self._gops: deque[_Gop] = deque()
        self._sequence = 0
        self._video_start: Fraction | None = None
        self._video_end: Fraction | None = None
        self._wrap_marker: int | None = None
        self._bytes = 0
        self.wraps = 0
        self.dropped_before_keyframe = 0
        self.timeline_resets = 0
        self.duplicates_dropped = 0

    def append(self, packet: EncodedPacket) -> None:
        """Add the next packet, then drop groups older than the ring's length."""
        self._sequence += 1
        if packet.kind == "video":
            start = Fraction(packet.pts) * packet.time_base
            if self._video_start is not None and start == self._video_start:
                self.duplicates_dropped += 1
                return
            if self._video_start is not None and start < self._video_start:
                self._reset_timeline(start)
            if packet.keyframe:
                self._gops.append(_Gop(start, self._sequence))
            self._video_start = start
            self._video_end = start + Fraction(packet.duration) * packet.time_base
        if not self._gops:
            self.dropped_before_keyframe += 1
            return
        newest = self._gops[-1]
        newest.packets.append(packet)
        newest.size += len(packet.data)
        self._bytes += len(packet.data)
        if packet.kind == "video" and self._video_end is not None:
            self._trim(self._video_end)

    def _reset_timeline(self, start: Fraction) -> None:
        self.timeline_resets += 1
        _log.warning(
            "video time went back to %.3f s from %.3f s; the clip ring starts over",
            float(start),
            float(self._video_start or 0),
        )
        self._gops.clear()
        self._bytes = 0
        self._wrap_marker = None

    def _trim(self, video_end: Fraction) -> None:
        while len(self._gops) > 1 and video_end - self._gops[1].start >= self._length:
            dropped = self._gops.popleft()
            self._bytes -= dropped.size
            oldest = self._gops[0].first_sequence
            if self._wrap_marker is None:
                self._wrap_marker = self._sequence
            elif oldest > self._wrap_marker:
                self.wraps += 1
                self._wrap_marker = self._sequence

    @property
    def duration_s(self) -> float:
        """The seconds of video held, from the oldest key frame to the newest end."""
        if not self._gops or self._video_end is None:
            return 0.0
        return float(self._video_end - self._gops[0].start)

    @property
    def end_s(self) -> float | None:
        """The end of the newest video packet held, in seconds, or None when empty."""
        if not self._gops or self._video_end is None:
            return None
        return float(self._video_end)

    @property
    def bytes(self) -> int:
        """The encoded bytes held."""
        return self._bytes

    def snapshot(self, seconds: float | None = None) -> list[EncodedPacket]:
        """Return the packets of at most the last ``seconds`` (all when None).

        The list starts at the earliest video key frame that lies within
        ``seconds`` of the newest video packet's end. Audio packets before
        that key frame are left out. The list is empty when no key frame
        lies that close.
        """
        if seconds is not None and not seconds > 0:
            raise ValueError(
                f"invalid snapshot length {seconds!r} s: give seconds greater than 0"
            )
        if not self._gops or self._video_end is None:
            return []
        earliest = None if seconds is None else self._video_end - Fraction(seconds)
        chosen = [g for g in self._gops if earliest is None or g.start >= earliest]
        if not chosen:
            return []
        origin = chosen[0].start
        packets: list[EncodedPacket] = []
        for gop in chosen:
            packets.extend(
                p
                for p in gop.packets
                if p.kind == "video" or Fraction(p.pts) * p.time_base >= origin
            )
        return packets
