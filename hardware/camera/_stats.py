"""The one-second window behind CameraStats' frame rate and encoder latency."""

from __future__ import annotations

import time
from collections import deque

from hardware.camera._base import CameraStats, EncodedPacket

WINDOW_S = 1.0


class StatsWindow:
    """Update a CameraStats from the video packets of the last second."""

    def __init__(self, stats: CameraStats):
        self.stats = stats
        self._recent: deque[tuple[float, float]] = deque()

    def record(self, packet: EncodedPacket) -> None:
        """Count one encoded video frame."""
        now = time.monotonic()
        self.stats.frames += 1
        self._recent.append((now, packet.encoded_at - packet.captured_at))
        while self._recent and self._recent[0][0] < now - WINDOW_S:
            self._recent.popleft()
        self.stats.fps = len(self._recent) / WINDOW_S
        latency_s = sum(latency for _at, latency in self._recent) / len(self._recent)
        self.stats.encoder_latency_ms = latency_s * 1000.0

    def reset(self) -> None:
        """Forget the window, so a restarted camera measures afresh."""
        self._recent.clear()
        self.stats.fps = 0.0
        self.stats.encoder_latency_ms = 0.0
