"""Picamera2Camera against the shipped stand-in for picamera2's interfaces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from camera_packets import (
    SMALL,
    collect,
    decode_audio,
    decode_video,
    dominant_frequency_hz,
)

from hardware.camera import (
    VIDEO_TIME_BASE,
    CameraError,
    Picamera2Camera,
    simulated_picamera2,
)
from hardware.camera._encoder import has_parameter_sets
from hardware.camera._picamera2 import i420_view, store_i420

# 168 columns pad to a 192-byte stride, as picamera2 maps such a frame.
PADDED = dataclasses.replace(SMALL, width=168, audio="none")
TONE_INPUT = "alsa:sine=frequency=440:sample_rate=48000"


def test_padded_buffer_round_trip():
    width, height, stride = 6, 4, 8
    frame = np.arange(width * height * 3 // 2, dtype=np.uint8).reshape(-1, width)
    buffer = np.zeros((height * 3 // 2, stride), np.uint8)
    store_i420(frame, buffer, width, height)
    view, copied = i420_view(buffer, width, height)
    assert copied
    assert np.array_equal(view, frame)
    same, copied = i420_view(frame, width, height)
    assert not copied
    assert same is frame


async def test_padded_frames_overlay_and_encode():
    shapes = []

    def white_corner(frame: np.ndarray, seconds: float) -> None:
        shapes.append(frame.shape)
        frame[:16, :16] = 235

    camera = Picamera2Camera(PADDED, white_corner, backend=simulated_picamera2())
    packets, info = await collect(camera, 20)
    assert shapes[0] == (PADDED.height * 3 // 2, PADDED.width)
    video = [packet for packet in packets if packet.kind == "video"]
    assert video[0].keyframe
    assert has_parameter_sets(video[0].data)
    assert info.video.extradata
    assert all(packet.time_base == VIDEO_TIME_BASE for packet in video)
    pts = [packet.pts for packet in video]
    assert pts == sorted(set(pts))
    frames = decode_video(packets, info)
    assert len(frames) == 20
    assert frames[0][:16, :16].mean() > 200
    assert camera.stats.frames >= 20


async def test_sound_through_pyav_input():
    settings = dataclasses.replace(PADDED, audio=TONE_INPUT)
    camera = Picamera2Camera(settings, backend=simulated_picamera2())
    packets, info = await collect(camera, 30)
    assert info.audio is not None
    seconds = [packet.seconds for packet in packets]
    assert seconds == sorted(seconds)
    signal = decode_audio(packets, info)
    assert dominant_frequency_hz(signal[2048:], info.audio.sample_rate) == (
        pytest.approx(440, abs=5)
    )


async def test_missing_sound_device_raises():
    settings = dataclasses.replace(PADDED, audio="alsa:no-such-filter")
    camera = Picamera2Camera(settings, backend=simulated_picamera2())
    with pytest.raises(CameraError, match="no-such-filter"):
        await camera.start()
    # A failure that a retry may cure is raised again by every start, so
    # the studio keeps retrying (unlike a picamera2 that cannot be imported).
    with pytest.raises(CameraError, match="no-such-filter"):
        await camera.start()


async def test_stop_ends_packets_and_closes():
    camera = Picamera2Camera(PADDED, backend=simulated_picamera2())
    await camera.start()
    count = 0
    async for _packet in camera.packets():
        count += 1
        if count == 3:
            await camera.stop()
    assert count == 3
    with pytest.raises(CameraError, match="not started"):
        _ = camera.info
    await camera.stop()
