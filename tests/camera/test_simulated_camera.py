"""SimulatedCamera: the H.264 and AAC it yields decode, in order, with key frames."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import av
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
    EncodedPacket,
    SimulatedCamera,
    StreamInfo,
)
from hardware.camera._encoder import annexb_nal_units, has_parameter_sets
from hardware.camera._software import TONE_HZ

FRAMES = 45


@pytest.fixture(scope="module")
def run() -> tuple[list[EncodedPacket], StreamInfo, SimulatedCamera]:
    """Three seconds of stream from the test card with the tone."""
    camera = SimulatedCamera(SMALL, realtime=False)
    packets, info = asyncio.run(collect(camera, FRAMES))
    return packets, info, camera


def video_of(packets: list[EncodedPacket]) -> list[EncodedPacket]:
    return [packet for packet in packets if packet.kind == "video"]


def test_video_timestamps_follow_frame_rate(run):
    packets, _info, _camera = run
    video = video_of(packets)
    step = VIDEO_TIME_BASE.denominator // SMALL.fps
    assert [packet.pts for packet in video] == [i * step for i in range(FRAMES)]
    assert all(packet.dts == packet.pts for packet in video)
    assert all(packet.duration == step for packet in video)
    assert all(packet.time_base == VIDEO_TIME_BASE for packet in video)


def test_key_frames_every_gop_with_headers(run):
    packets, _info, _camera = run
    video = video_of(packets)
    keyframes = [index for index, packet in enumerate(video) if packet.keyframe]
    assert keyframes == list(range(0, FRAMES, SMALL.gop_frames))
    for index in keyframes:
        assert has_parameter_sets(video[index].data), index


def test_extradata_is_sps_and_pps(run):
    _packets, info, _camera = run
    types = [unit[0] & 0x1F for unit in annexb_nal_units(info.video.extradata)]
    assert types == [7, 8]
    assert (info.video.width, info.video.height) == (SMALL.width, SMALL.height)
    assert info.video.fps == SMALL.fps


def test_video_decodes_every_frame(run):
    packets, info, _camera = run
    frames = decode_video(packets, info)
    assert len(frames) == FRAMES
    assert frames[0].shape == (SMALL.height * 3 // 2, SMALL.width)


def test_stream_cut_at_key_frame_decodes(run):
    packets, info, _camera = run
    video = video_of(packets)
    cut = video[SMALL.gop_frames :]
    bare = dataclasses.replace(info.video, extradata=b"")
    frames = decode_video(cut, dataclasses.replace(info, video=bare))
    assert len(frames) == len(cut)


def test_packets_in_timestamp_order(run):
    packets, _info, _camera = run
    seconds = [packet.seconds for packet in packets]
    assert seconds == sorted(seconds)
    assert {packet.kind for packet in packets} == {"video", "audio"}


def test_audio_is_tone_from_zero(run):
    packets, info, _camera = run
    audio = [packet for packet in packets if packet.kind == "audio"]
    assert info.audio is not None
    assert audio[0].pts == 0
    assert [packet.pts for packet in audio] == [i * 1024 for i in range(len(audio))]
    # Audio keeps up with video to within the AAC encoder's delay.
    assert audio[-1].end_seconds > video_of(packets)[-1].seconds - 0.1
    signal = decode_audio(packets, info)
    assert dominant_frequency_hz(signal[4096:], info.audio.sample_rate) == (
        pytest.approx(TONE_HZ, abs=5)
    )


def test_stats_count_frames(run):
    _packets, _info, camera = run
    assert camera.stats.frames >= FRAMES
    assert camera.stats.fps > 0
    assert camera.stats.dropped_frames == 0


async def test_info_before_start_raises():
    camera = SimulatedCamera(SMALL, realtime=False)
    with pytest.raises(CameraError, match="not started"):
        _ = camera.info


async def test_overlay_is_encoded():
    def white_corner(frame: np.ndarray, seconds: float) -> None:
        frame[:16, :16] = 235

    camera = SimulatedCamera(SMALL, white_corner, realtime=False)
    packets, info = await collect(camera, 3)
    frames = decode_video(packets, info)
    assert frames[0][:16, :16].mean() > 200
    # The test card's top-left bar is 75 % white (luma 180).
    assert frames[0][:16, 20:36].mean() < 200


async def test_failing_overlay_counted_stream_continues():
    def broken(frame: np.ndarray, seconds: float) -> None:
        raise KeyError("no such drop")

    camera = SimulatedCamera(SMALL, broken, realtime=False)
    packets, _info = await collect(camera, 5)
    assert len(video_of(packets)) == 5
    assert camera.stats.extra["overlay_errors"] >= 5


async def test_fail_raises_until_recover():
    camera = SimulatedCamera(SMALL, realtime=False)
    await camera.start()
    seen = 0
    with pytest.raises(CameraError, match="lens cap on"):
        async for packet in camera.packets():
            seen += packet.kind == "video"
            if seen == 3:
                camera.fail("lens cap on")
    await camera.stop()
    with pytest.raises(CameraError, match="lens cap on") as refused:
        await camera.start()
    assert "injected for a test or rehearsal" in str(refused.value)
    assert "()" not in str(refused.value)
    camera.recover()
    packets, _info = await collect(camera, 2)
    assert video_of(packets)[0].pts == 0
    assert video_of(packets)[0].keyframe


async def resume_later(camera: SimulatedCamera, delay_s: float) -> int:
    """Resume ``camera`` after ``delay_s``; return the frames encoded meanwhile."""
    frames = camera.stats.frames
    await asyncio.sleep(delay_s)
    encoded = camera.stats.frames - frames
    camera.resume()
    return encoded


async def test_stall_delivers_nothing_until_resume():
    camera = SimulatedCamera(SMALL, realtime=False)
    await camera.start()
    video: list[EncodedPacket] = []
    resumer: asyncio.Task[int] | None = None
    running_while_stalled = False
    try:
        async for packet in camera.packets():
            if packet.kind == "video":
                video.append(packet)
            if len(video) == 3 and resumer is None:
                camera.stall()
                running_while_stalled = camera.running and camera.stalled
                resumer = asyncio.create_task(resume_later(camera, 0.3))
            if len(video) == 8:
                break
    finally:
        await camera.stop()
    assert resumer is not None
    encoded_while_stalled = await resumer

    assert running_while_stalled
    assert encoded_while_stalled == 0
    assert not camera.stalled
    step = VIDEO_TIME_BASE.denominator // SMALL.fps
    assert [packet.pts for packet in video] == [i * step for i in range(8)]


async def test_stall_outlasts_restart():
    camera = SimulatedCamera(SMALL, realtime=False)
    camera.stall()
    await camera.start()
    started_while_stalled = camera.running
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(camera.packets()), 0.3)
    encoded_while_stalled = camera.stats.frames
    await camera.stop()
    camera.resume()
    packets, _info = await collect(camera, 2)

    assert started_while_stalled
    assert encoded_while_stalled == 0
    assert video_of(packets)[0].pts == 0
    assert video_of(packets)[0].keyframe


async def test_realtime_stall_drops_frames():
    settings = dataclasses.replace(SMALL, fps=30, audio="none")
    camera = SimulatedCamera(settings)
    await camera.start()
    video: list[EncodedPacket] = []
    try:
        async for packet in camera.packets():
            video.append(packet)
            if len(video) == 2:
                camera.stall()
                asyncio.get_running_loop().call_later(0.3, camera.resume)
            if len(video) == 4:
                break
    finally:
        await camera.stop()

    step = VIDEO_TIME_BASE.denominator // settings.fps
    gap_frames = (video[2].pts - video[1].pts) // step - 1
    assert gap_frames > 0
    assert camera.stats.dropped_frames >= gap_frames


async def test_stop_ends_packets():
    camera = SimulatedCamera(SMALL, realtime=False)
    await camera.start()
    count = 0
    async for _packet in camera.packets():
        count += 1
        if count == 4:
            await camera.stop()
    assert count >= 4
    assert not camera.running


async def test_realtime_camera_yields_frames():
    settings = dataclasses.replace(SMALL, fps=30, audio="none")
    camera = SimulatedCamera(settings)
    packets, _info = await collect(camera, 4)
    assert [packet.kind for packet in packets] == ["video"] * 4
    assert packets[0].keyframe


async def test_video_file_source(tmp_path: Path):
    source = tmp_path / "grey.mp4"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(6):
            plane = np.full((72, 64), 128, np.uint8)
            plane[:48] = 60 + index * 20
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    settings = dataclasses.replace(SMALL, audio="none")
    camera = SimulatedCamera(settings, realtime=False, source=source)
    packets, info = await collect(camera, 8)
    frames = decode_video(packets, info)
    lumas = [round(float(frame[: settings.height].mean())) for frame in frames]
    # Six frames of rising grey, then the file starts again.
    assert lumas[1] > lumas[0]
    assert lumas[6] == pytest.approx(lumas[0], abs=3)
    assert lumas[7] == pytest.approx(lumas[1], abs=3)


async def test_missing_video_file_raises(tmp_path: Path):
    camera = SimulatedCamera(SMALL, realtime=False, source=tmp_path / "none.mp4")
    with pytest.raises(CameraError, match=r"none\.mp4"):
        await camera.start()


def test_microphone_rejected_by_simulator():
    settings = dataclasses.replace(SMALL, audio="alsa:hw:1,0")
    with pytest.raises(ValueError, match="alsa:hw:1,0"):
        SimulatedCamera(settings)


async def test_odd_frame_size_rejected():
    settings = dataclasses.replace(SMALL, width=161)
    camera = SimulatedCamera(settings, realtime=False)
    with pytest.raises(CameraError, match="161x96"):
        await camera.start()
    assert not camera.running
