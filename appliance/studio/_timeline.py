"""One output timeline across camera runs, and the stream's live rates.

Every run of a camera or of the slate counts its timestamps from its own
start. The studio's outputs (HLS, push, clips) need one timeline that never
goes back, so each run is shifted to begin where the previous one ended.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from fractions import Fraction

from hardware.camera import EncodedPacket

# The span over which fps, bitrate and encoder latency are averaged.
RATE_WINDOW_S = 2.0


class Timeline:
    """Shifts the packets of successive runs onto one continuous timeline."""

    def __init__(self) -> None:
        self._end = Fraction(0)
        self._offset: Fraction | None = None
        self._base = Fraction(0)
        self.runs = 0

    def begin_run(self) -> None:
        """Start a new run whose first packet is placed where the last run ended."""
        self._base = self._end
        self._offset = None
        self.runs += 1

    def place(self, packet: EncodedPacket) -> EncodedPacket:
        """Return ``packet`` with its timestamps moved onto the output timeline."""
        if self._offset is None:
            self._offset = self._base - Fraction(packet.pts) * packet.time_base
        ticks = round(self._offset / packet.time_base)
        placed = dataclasses.replace(
            packet, pts=packet.pts + ticks, dts=packet.dts + ticks
        )
        end = Fraction(placed.pts + placed.duration) * placed.time_base
        self._end = max(self._end, end)
        return placed

    @property
    def end_s(self) -> float:
        """The end of the latest packet placed, in seconds of output time."""
        return float(self._end)


class RateWindow:
    """Frame rate, bitrate and encoder latency over the last two seconds."""

    def __init__(self) -> None:
        # (arrival, bytes, is video, encoder latency in seconds)
        self._packets: deque[tuple[float, int, bool, float]] = deque()

    def record(self, packet: EncodedPacket) -> None:
        """Count a packet that was just fed to the outputs."""
        now = time.monotonic()
        latency = max(0.0, packet.encoded_at - packet.captured_at)
        self._packets.append((now, len(packet.data), packet.kind == "video", latency))
        self._trim(now)

    def clear(self) -> None:
        """Forget every packet, as when the stream stops."""
        self._packets.clear()

    def figures(self) -> dict[str, float]:
        """Return ``fps``, ``bitrate_kbps`` and ``encoder_latency_ms``."""
        self._trim(time.monotonic())
        video = [entry for entry in self._packets if entry[2]]
        total_bytes = sum(entry[1] for entry in self._packets)
        latency = sum(entry[3] for entry in video) / len(video) if video else 0.0
        return {
            "fps": round(len(video) / RATE_WINDOW_S, 1),
            "bitrate_kbps": round(total_bytes * 8 / 1000 / RATE_WINDOW_S, 1),
            "encoder_latency_ms": round(latency * 1000, 1),
        }

    def _trim(self, now: float) -> None:
        while self._packets and self._packets[0][0] < now - RATE_WINDOW_S:
            self._packets.popleft()
