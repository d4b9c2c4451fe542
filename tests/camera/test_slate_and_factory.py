"""SlateCamera keeps the stream's shape; create_camera picks backends by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from camera_packets import SMALL, collect, decode_audio, decode_video

from hardware.camera import (
    BACKENDS,
    CameraError,
    Picamera2Camera,
    SimulatedCamera,
    SlateCamera,
    create_camera,
)


async def test_slate_matches_camera_settings():
    slate = SlateCamera(SMALL, "Back in a moment", realtime=False)
    packets, info = await collect(slate, 16)
    assert (info.video.width, info.video.height, info.video.fps) == (160, 96, 15)
    assert info.audio is not None
    video = [packet for packet in packets if packet.kind == "video"]
    assert video[0].keyframe
    assert video[15].keyframe
    frames = decode_video(packets, info)
    luma = frames[-1][: SMALL.height]
    # A dark card with light text in the middle.
    assert np.median(luma) < 60
    assert luma[SMALL.height // 3 : SMALL.height * 2 // 3].max() > 180


async def test_slate_silent_for_microphone():
    settings = dataclasses.replace(SMALL, audio="alsa:hw:1,0")
    packets, info = await collect(SlateCamera(settings, realtime=False), 30)
    signal = decode_audio(packets, info)
    assert len(signal) > 0
    assert float(np.abs(signal).max()) < 0.01


async def test_slate_tone_for_simulator():
    packets, info = await collect(SlateCamera(SMALL, realtime=False), 30)
    signal = decode_audio(packets, info)
    assert float(np.abs(signal[2048:]).max()) > 0.1


async def test_slate_without_audio():
    settings = dataclasses.replace(SMALL, audio="none")
    packets, info = await collect(SlateCamera(settings, realtime=False), 5)
    assert info.audio is None
    assert {packet.kind for packet in packets} == {"video"}


def test_create_camera_by_name():
    assert isinstance(create_camera("simulator", SMALL), SimulatedCamera)
    settings = dataclasses.replace(SMALL, audio="none")
    assert isinstance(create_camera("picamera2", settings), Picamera2Camera)
    assert BACKENDS == ("simulator", "picamera2")


def test_create_camera_unknown_name():
    with pytest.raises(ValueError, match=r"'webcam'.*simulator, picamera2"):
        create_camera("webcam", SMALL)


def test_picamera2_rejects_tone():
    with pytest.raises(ValueError, match="'tone'"):
        create_camera("picamera2", SMALL)


async def test_picamera2_without_library_raises():
    # picamera2 cannot be installed off Raspberry Pi OS, so start() reports
    # the missing library as a CameraError with what to do.
    camera = create_camera("picamera2", dataclasses.replace(SMALL, audio="none"))
    with pytest.raises(CameraError, match="picamera2 cannot be imported") as raised:
        await camera.start()
    message = str(raised.value)
    assert "sudo apt install python3-picamera2" in message
    assert "--system-site-packages" in message
    assert "until the box restarts" in message


async def test_picamera2_without_library_is_a_permanent_failure():
    camera = create_camera("picamera2", dataclasses.replace(SMALL, audio="none"))
    for _ in range(2):
        with pytest.raises(CameraError, match="picamera2 cannot be imported") as err:
            await camera.start()
        # No retry can import it before a restart, so the studio stops trying.
        assert err.value.permanent


async def test_simulated_camera_failure_is_not_permanent():
    camera = create_camera("simulator", dataclasses.replace(SMALL, audio="none"))
    camera.fail("lens cap on")
    with pytest.raises(CameraError) as err:
        await camera.start()
        async for _ in camera.packets():
            pass
    await camera.stop()

    assert not err.value.permanent
