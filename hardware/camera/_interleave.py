"""Merge video and audio packets into one stream in timestamp order.

The AAC encoder returns a packet about two frames (43 ms at 48 kHz) after
its samples went in, so a video packet is held until the audio has caught
up with it. A stalled audio source must not stall the picture, so video is
let through once more than ``max_hold_s`` of it is waiting.
"""

from __future__ import annotations

from hardware.camera._base import EncodedPacket

DEFAULT_MAX_HOLD_S = 0.5


class Interleaver:
    """Release packets once no earlier packet of the other stream can follow."""

    def __init__(self, *, audio: bool, max_hold_s: float = DEFAULT_MAX_HOLD_S):
        self.audio = audio
        self.max_hold_s = max_hold_s
        self._waiting: list[EncodedPacket] = []
        self._latest = {"video": float("-inf"), "audio": float("-inf")}
        # Packets released out of order because the audio stalled.
        self.forced = 0

    def push(self, packets: list[EncodedPacket]) -> list[EncodedPacket]:
        """Add packets and return those whose turn has come, oldest first."""
        if not self.audio:
            return packets
        for packet in packets:
            self._latest[packet.kind] = max(self._latest[packet.kind], packet.seconds)
        self._waiting.extend(packets)
        self._waiting.sort(key=lambda packet: packet.seconds)
        released: list[EncodedPacket] = []
        while self._waiting:
            first = self._waiting[0]
            other = "audio" if first.kind == "video" else "video"
            if self._latest[other] >= first.seconds:
                released.append(self._waiting.pop(0))
            elif self._latest["video"] - first.seconds > self.max_hold_s:
                self.forced += 1
                released.append(self._waiting.pop(0))
            else:
                break
        return released
