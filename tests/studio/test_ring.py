"""PacketRing: whole GOPs kept, key frame first, wraps counted, timeline resets."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from appliance.studio import PacketRing
from hardware.camera import EncodedPacket, StreamInfo
from tests.studio.packets import stream_packets

SECONDS = 30.0
GOP_S = 1.0


@pytest.fixture(scope="module")
def stream() -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    return stream_packets(SECONDS)


def video_span_s(packets: list[EncodedPacket]) -> float:
    video = [p for p in packets if p.kind == "video"]
    return video[-1].end_seconds - video[0].seconds


def test_ring_keeps_length_in_whole_gops(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    for packet in packets[: len(packets) // 3]:
        ring.append(packet)
    held = ring.snapshot()
    assert held[0].kind == "video"
    assert held[0].keyframe
    assert ring.duration_s >= 3.0
    assert ring.duration_s < 3.0 + GOP_S
    assert ring.duration_s == pytest.approx(video_span_s(held))
    assert ring.bytes == sum(len(p.data) for p in held)


def test_snapshot_starts_at_keyframe_within_seconds(stream):
    _, packets = stream
    ring = PacketRing(5.0)
    for packet in packets[: len(packets) // 2]:
        ring.append(packet)
    snapshot = ring.snapshot(2.5)
    first = snapshot[0]
    assert first.kind == "video"
    assert first.keyframe
    assert video_span_s(snapshot) <= 2.5
    assert video_span_s(snapshot) > 2.5 - GOP_S
    assert all(p.seconds >= first.seconds for p in snapshot)
    newest_video = max(p.end_seconds for p in ring.snapshot() if p.kind == "video")
    assert max(p.end_seconds for p in snapshot if p.kind == "video") == newest_video


def test_snapshot_without_keyframe_in_range_is_empty(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    # Stop half a GOP after a key frame, so the last 0.2 s hold none.
    cut = next(p for p in packets if p.kind == "video" and p.seconds >= 10.5)
    for packet in packets[: packets.index(cut)]:
        ring.append(packet)
    assert ring.snapshot(0.2) == []
    assert ring.snapshot(1.0)[0].keyframe


def test_ring_counts_wraps(stream):
    _, packets = stream
    ring = PacketRing(2.0)
    wraps_seen = []
    for packet in packets:
        ring.append(packet)
        wraps_seen.append(ring.wraps)
    # Two seconds of a 30 s stream are replaced at least ten times over.
    assert ring.wraps >= 10
    assert ring.wraps <= SECONDS / 2.0
    assert wraps_seen == sorted(wraps_seen)


def test_ring_drops_packets_before_first_keyframe(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    first_inter = next(p for p in packets if p.kind == "video" and not p.keyframe)
    start = packets.index(first_inter)
    for packet in packets[start : start + 100]:
        ring.append(packet)
    held = ring.snapshot()
    assert ring.dropped_before_keyframe > 0
    assert held[0].kind == "video"
    assert held[0].keyframe
    assert held[0].seconds == pytest.approx(GOP_S)


def test_ring_starts_over_when_time_goes_back(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    first_part = [p for p in packets if p.seconds < 4.0]
    for packet in first_part:
        ring.append(packet)
    # A camera restarted without rebased timestamps begins at 0 again.
    for packet in first_part[:40]:
        ring.append(packet)
    held = ring.snapshot()
    assert ring.timeline_resets == 1
    assert held[0].seconds == 0.0
    assert held == [p for p in first_part[:40] if p.kind == "video" or p.seconds >= 0]
    video_times = [p.pts for p in held if p.kind == "video"]
    assert video_times == sorted(set(video_times))


def test_ring_drops_duplicate_video_packet(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    head = [p for p in packets if p.seconds < 1.5]
    for packet in head:
        ring.append(packet)
    last_video = [p for p in head if p.kind == "video"][-1]
    ring.append(dataclasses.replace(last_video))
    assert ring.duplicates_dropped == 1
    assert ring.timeline_resets == 0
    assert ring.snapshot() == head


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_ring_rejects_invalid_length(seconds):
    with pytest.raises(ValueError, match="invalid ring length"):
        PacketRing(seconds)


def test_snapshot_rejects_invalid_length(stream):
    ring = PacketRing(3.0)
    with pytest.raises(ValueError, match="invalid snapshot length -2"):
        ring.snapshot(-2)


def test_empty_ring_snapshot_is_empty():
    ring = PacketRing(3.0)
    assert ring.snapshot() == []
    assert ring.duration_s == 0.0
    assert ring.bytes == 0
    assert ring.wraps == 0


def test_ring_time_uses_packet_time_base(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    for packet in packets[:200]:
        ring.append(packet)
    held = ring.snapshot()
    expected = sum(
        Fraction(p.duration) * p.time_base for p in held if p.kind == "video"
    )
    assert ring.duration_s == pytest.approx(float(expected))


def test_end_follows_newest_video(stream):
    _, packets = stream
    ring = PacketRing(3.0)
    assert ring.end_s is None
    for packet in packets[:40]:
        ring.append(packet)
    newest = max(p.end_seconds for p in packets[:40] if p.kind == "video")
    assert ring.end_s == pytest.approx(newest)
