"""Key frames follow presentation time when the camera skips frames or stalls."""

from __future__ import annotations

import dataclasses
import itertools
import math
from fractions import Fraction

import pytest
from camera_packets import SMALL, decode_video

from hardware.camera import CameraSettings, EncodedPacket, SimulatedCamera
from hardware.camera._encoder import annexb_nal_units, has_parameter_sets

_NAL_IDR = 5
# Frames to leave out after the n-th video frame: a few skipped frames
# across a key frame's time, then a stall of over two seconds at 15 fps.
SKIPS = {5: 12, 20: 40}
STREAM_S = 6


async def skipping_stream(settings: CameraSettings) -> list[EncodedPacket]:
    """Video packets of a camera that skips the frames in SKIPS."""
    camera = SimulatedCamera(settings, realtime=False)
    await camera.start()
    video: list[EncodedPacket] = []
    try:
        async for packet in camera.packets():
            if packet.kind != "video":
                continue
            video.append(packet)
            camera.skip_frames(SKIPS.get(len(video), 0))
            if packet.seconds >= STREAM_S:
                break
    finally:
        await camera.stop()
    assert camera.stats.dropped_frames == sum(SKIPS.values())
    return video


def slot(packet: EncodedPacket, interval_s: float) -> int:
    """The number of the key frame interval the packet's time falls in."""
    return math.floor(Fraction(packet.pts) * packet.time_base / Fraction(interval_s))


@pytest.mark.parametrize("interval_s", [1.0, 0.5])
async def test_key_frames_follow_time_across_skips(interval_s: float):
    settings = dataclasses.replace(SMALL, audio="none", keyframe_interval_s=interval_s)
    video = await skipping_stream(settings)

    step = video[1].pts - video[0].pts
    gaps = [b.pts - a.pts for a, b in itertools.pairwise(video)]
    assert sorted({gap // step for gap in gaps}) == [1, 13, 41]
    # A key frame is the first frame at or after each multiple of the interval.
    expected = [True] + [
        slot(b, interval_s) > slot(a, interval_s) for a, b in itertools.pairwise(video)
    ]
    assert [packet.keyframe for packet in video] == expected
    for packet in video:
        if packet.keyframe:
            nal_types = [unit[0] & 0x1F for unit in annexb_nal_units(packet.data)]
            assert _NAL_IDR in nal_types, packet.pts
            assert has_parameter_sets(packet.data), packet.pts


async def test_stream_with_skips_decodes_from_each_key_frame():
    settings = dataclasses.replace(SMALL, audio="none")
    video = await skipping_stream(settings)
    camera = SimulatedCamera(settings, realtime=False)
    await camera.start()
    info = camera.info
    await camera.stop()
    keys = [index for index, packet in enumerate(video) if packet.keyframe]

    assert len(decode_video(video, info)) == len(video)
    for index in keys:
        assert len(decode_video(video[index:], info)) == len(video) - index


def test_skip_frames_rejects_negative_count():
    camera = SimulatedCamera(SMALL, realtime=False)
    with pytest.raises(ValueError, match="cannot skip -1 frames"):
        camera.skip_frames(-1)
