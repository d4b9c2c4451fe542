"""write_clip: MP4 remuxes that ffprobe reads and ffmpeg decodes without errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.errors import NightboxError
from appliance.studio import ClipError, PacketRing, write_clip
from appliance.studio.clips import inspect_clip
from hardware.camera import EncodedPacket, StreamInfo
from tests.studio.ffprobe import Probe, decode_errors, probe
from tests.studio.packets import stream_packets

FRAME_S = 1 / 15


@pytest.fixture(scope="module")
def stream() -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    return stream_packets(30.0)


def assert_valid_clip(report: Probe, expected_s: float) -> None:
    video = report.packets_of("video")
    audio = report.packets_of("audio")
    assert video[0]["keyframe"]
    assert video[0]["pts_time"] == 0.0
    assert report.stream("video")["codec_name"] == "h264"
    assert report.stream("audio")["codec_name"] == "aac"
    for packets in (video, audio):
        dts = [p["dts_time"] for p in packets]
        assert dts == sorted(dts)
        assert len(set(dts)) == len(dts)
    assert report.video_span_s() == pytest.approx(expected_s, abs=FRAME_S / 2)
    assert audio[0]["pts_time"] >= 0.0


def test_clip_of_snapshot_is_valid_mp4(stream, tmp_path: Path):
    info, packets = stream
    ring = PacketRing(10.0)
    for packet in packets[: len(packets) // 2]:
        ring.append(packet)
    snapshot = ring.snapshot(6.0)
    clip = write_clip(snapshot, info, tmp_path / "clip.mp4")
    video = [p for p in snapshot if p.kind == "video"]
    span = video[-1].end_seconds - video[0].seconds
    report = probe(clip.path)
    assert_valid_clip(report, span)
    assert report.stream("video")["width"] == 320
    assert report.stream("video")["height"] == 180
    assert len(report.packets_of("video")) == len(video)
    assert clip.duration_s == pytest.approx(span)
    assert clip.started_at_s == video[0].seconds
    assert clip.size == clip.path.stat().st_size
    assert clip.sha256 == hashlib.sha256(clip.path.read_bytes()).hexdigest()
    assert decode_errors(clip.path) == ""


def test_clip_has_index_before_media(stream, tmp_path: Path):
    info, packets = stream
    clip = write_clip(list(packets[:200]), info, tmp_path / "fast.mp4")
    data = clip.path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_clip_after_ten_ring_wraps_plays(stream, tmp_path: Path):
    info, packets = stream
    ring = PacketRing(2.0)
    fed = 0
    while ring.wraps < 10:
        ring.append(packets[fed])
        fed += 1
    # Keep going to a point in the middle of a GOP.
    for packet in packets[fed : fed + 20]:
        ring.append(packet)
    snapshot = ring.snapshot()
    clip = write_clip(snapshot, info, tmp_path / "wrapped.mp4")
    assert clip.started_at_s > 15.0
    report = probe(clip.path)
    assert_valid_clip(report, ring.duration_s)
    assert decode_errors(clip.path) == ""


def test_clip_without_audio(tmp_path: Path):
    info, packets = stream_packets(4.0, audio=False)
    clip = write_clip(list(packets), info, tmp_path / "silent.mp4")
    report = probe(clip.path)
    assert not report.has_stream("audio")
    assert report.packets_of("video")[0]["keyframe"]
    assert report.video_span_s() == pytest.approx(4.0, abs=FRAME_S / 2)
    assert decode_errors(clip.path) == ""


def test_clip_skips_audio_the_info_lacks(stream, tmp_path: Path):
    info, packets = stream
    video_only = StreamInfo(info.video)
    clip = write_clip(list(packets[:150]), video_only, tmp_path / "video.mp4")
    report = probe(clip.path)
    assert not report.has_stream("audio")
    assert decode_errors(clip.path) == ""


def test_empty_snapshot_raises_clip_error(stream, tmp_path: Path):
    info, _ = stream
    target = tmp_path / "empty.mp4"
    with pytest.raises(ClipError, match="contains no video") as raised:
        write_clip([], info, target)
    assert isinstance(raised.value, NightboxError)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_snapshot_without_keyframe_raises_clip_error(stream, tmp_path: Path):
    info, packets = stream
    inter = [p for p in packets[:100] if not (p.kind == "video" and p.keyframe)]
    first_video = next(p for p in inter if p.kind == "video")
    with pytest.raises(ClipError, match=f"{first_video.seconds:.3f} s"):
        write_clip(inter, info, tmp_path / "nokey.mp4")
    assert list(tmp_path.iterdir()) == []


def test_clip_into_missing_folder_raises_clip_error(stream, tmp_path: Path):
    info, packets = stream
    target = tmp_path / "missing" / "clip.mp4"
    with pytest.raises(ClipError, match="writing the clip"):
        write_clip(list(packets[:100]), info, target)
    assert not target.parent.exists()


def test_clip_replaces_existing_file_whole(stream, tmp_path: Path):
    info, packets = stream
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old clip")
    clip = write_clip(list(packets[:300]), info, target)
    assert target.read_bytes()[:8] != b"old clip"
    assert clip.size == target.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    assert decode_errors(target) == ""


def test_inspect_reads_back_written_clip(stream, tmp_path: Path):
    info, packets = stream
    written = write_clip(packets[:60], info, tmp_path / "clip.mp4")
    inspected = inspect_clip(written.path)
    assert inspected.size == written.size
    assert inspected.sha256 == written.sha256
    assert inspected.duration_s == pytest.approx(written.duration_s, abs=FRAME_S)


@pytest.mark.parametrize("kept", [0.0, 0.5, 0.9])
def test_inspect_rejects_cut_short_file(stream, tmp_path: Path, kept: float):
    info, packets = stream
    written = write_clip(packets[:60], info, tmp_path / "clip.mp4")
    data = written.path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(ClipError, match=r"cut\.mp4"):
        inspect_clip(cut)


def test_inspect_rejects_file_without_video(tmp_path: Path):
    text = tmp_path / "notes.mp4"
    text.write_bytes(b"not a clip at all\n" * 100)
    with pytest.raises(ClipError, match=r"notes\.mp4"):
        inspect_clip(text)
