"""HlsWriter timing: a fixed target duration through stalls, and waiting for parts."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from appliance.studio import HlsRequestError, HlsWriter
from hardware.camera import CameraSettings, EncodedPacket, SimulatedCamera, StreamInfo
from tests.studio.ffprobe import probe
from tests.studio.packets import stream_packets

SETTINGS = CameraSettings(
    width=160,
    height=96,
    fps=15,
    bitrate_kbps=300,
    keyframe_interval_s=1.0,
    preset="ultrafast",
    audio="tone",
)
# Frames the camera leaves out after its n-th video frame: a 1.9 s stall,
# then one of 5 s. Both end with a key frame, as key frames follow time.
STALLS = {20: 28, 60: 75}
STREAM_S = 16.0


async def _stalling_stream() -> tuple[StreamInfo, list[EncodedPacket]]:
    camera = SimulatedCamera(SETTINGS, realtime=False)
    await camera.start()
    packets: list[EncodedPacket] = []
    frames = 0
    try:
        async for packet in camera.packets():
            packets.append(packet)
            if packet.kind == "video":
                frames += 1
                camera.skip_frames(STALLS.get(frames, 0))
                if packet.seconds >= STREAM_S:
                    break
        info = camera.info
    finally:
        await camera.stop()
    return info, packets


@pytest.fixture(scope="module")
def stalling_stream() -> tuple[StreamInfo, list[EncodedPacket]]:
    return asyncio.run(_stalling_stream())


def target_duration(playlist: str) -> str:
    found = re.search(r"^#EXT-X-TARGETDURATION:(\d+)$", playlist, re.MULTILINE)
    assert found is not None, playlist
    return found.group(1)


def segment_durations(playlist: str) -> list[float]:
    return [float(value) for value in re.findall(r"^#EXTINF:([\d.]+),", playlist, re.M)]


def test_target_duration_stays_fixed_through_stalls(
    stalling_stream, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    info, packets = stalling_stream
    writer = HlsWriter(tmp_path, info, segment_s=2.0, part_s=0.5, window=20)
    targets = {target_duration(writer.playlist())}
    with caplog.at_level(logging.WARNING, logger="appliance.studio.hls"):
        for packet in packets:
            written = writer.segments_written
            writer.feed(packet)
            if writer.segments_written != written:
                targets.add(target_duration(writer.playlist()))
    playlist = writer.playlist()
    durations = segment_durations(playlist)

    assert targets == {"3"}
    # The 1.9 s stall fits in the headroom; the 5 s one makes one long segment.
    assert [round(d) > 3 for d in durations].count(True) == 1
    assert writer.long_segments == 1
    assert max(durations) > 5.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "the camera stalled: no video for 5.0" in warnings[0]
    assert "key frame interval" not in warnings[0]
    # Every segment still starts with a key frame and plays on its own.
    for name in re.findall(r"^segment-\S+\.ts$", playlist, re.MULTILINE):
        assert probe(tmp_path / name).packets_of("video")[0]["keyframe"], name


def test_target_duration_covers_key_frame_interval(tmp_path: Path):
    info, _ = stream_packets(14.0)
    # Key frames 1.5 s apart: segments are cut at 3 s, plus the headroom.
    writer = HlsWriter(tmp_path, info, segment_s=2.0, keyframe_interval_s=1.5)
    assert writer.target_duration_s == 4
    assert target_duration(writer.playlist()) == "4"


@pytest.fixture(scope="module")
def stream() -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    return stream_packets(14.0)


def open_writer(folder: Path, info: StreamInfo) -> HlsWriter:
    return HlsWriter(folder, info, segment_s=2.0, part_s=0.5, window=4)


def preload_hint(playlist: str) -> tuple[str, int]:
    found = re.search(
        r'^#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]+)",BYTERANGE-START=(\d+)$',
        playlist,
        re.MULTILINE,
    )
    assert found is not None, playlist
    return found.group(1), int(found.group(2))


def listed_part(playlist: str, name: str, offset: int) -> int:
    """Return the length of the part listed at ``offset`` of ``name``."""
    found = re.search(rf'URI="{re.escape(name)}",BYTERANGE="(\d+)@{offset}"', playlist)
    assert found is not None, playlist
    return int(found.group(1))


async def test_wait_for_part_holds_preload_hint(stream, tmp_path: Path):
    info, packets = stream
    writer = open_writer(tmp_path, info)
    head = [p for p in packets if p.seconds < 2.1]
    tail = [p for p in packets if 2.1 <= p.seconds < 4.5]
    for packet in head:
        writer.feed(packet)
    name, offset = preload_hint(writer.playlist())
    assert writer.part_end(name, offset) is None
    waiter = asyncio.create_task(writer.wait_for_part(name, offset, 30.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    fed = 0
    for packet in tail:
        writer.feed(packet)
        fed += 1
        await asyncio.sleep(0)
        if waiter.done():
            break
    end = await waiter

    assert end is not None
    length = listed_part(writer.playlist(), name, offset)
    assert end == offset + length
    assert writer.part_end(name, offset) == end
    # A byte in the middle of the part belongs to the same part.
    assert await writer.wait_for_part(name, offset + length // 2, 30.0) == end
    # The wait ended as soon as the part was listed, not at the segment's end.
    assert fed < len(tail)
    data = writer.segment_bytes(name)
    assert data is not None and len(data) >= end


async def test_wait_for_part_finished_segment(stream, tmp_path: Path):
    info, packets = stream
    writer = open_writer(tmp_path, info)
    for packet in packets:
        if packet.seconds < 4.5:
            writer.feed(packet)
    name = re.findall(r"^segment-\S+\.ts$", writer.playlist(), re.MULTILINE)[0]
    data = writer.segment_bytes(name)
    assert data is not None
    last = len(data) - 1
    end = await writer.wait_for_part(name, last, 0.01)

    assert end == len(data)
    assert await writer.wait_for_part(name, len(data), 30.0) is None
    assert await writer.wait_for_part("segment-unknown.ts", 0, 30.0) is None
    with pytest.raises(HlsRequestError, match="invalid byte offset -1"):
        await writer.wait_for_part(name, -1, 30.0)


async def test_wait_for_part_timeout_and_close(stream, tmp_path: Path):
    info, packets = stream
    writer = open_writer(tmp_path, info)
    for packet in packets:
        if packet.seconds < 1.1:
            writer.feed(packet)
    name, offset = preload_hint(writer.playlist())
    assert await writer.wait_for_part(name, offset, 0.05) is None
    # Far past anything written: held until the stream ends, then refused.
    waiter = asyncio.create_task(writer.wait_for_part(name, offset + 10**7, 30.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    writer.close()
    assert await waiter is None
    # Closing finished the hinted part with the segment.
    assert writer.part_end(name, offset) == len(writer.segment_bytes(name) or b"")
