"""Fallback clips: a ring snapshot remuxed into an MP4 file without re-encoding.

``write_clip`` runs in a worker thread (it blocks on the file system) and
writes the file under a temporary name first, so a clip either exists
whole or not at all. ``inspect_clip`` reads back a clip file found on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from appliance.errors import NightboxError
from appliance.studio._aac import AacConfigError, AdtsFramer
from hardware.camera import EncodedPacket, StreamInfo

_log = logging.getLogger(__name__)


class ClipError(NightboxError, RuntimeError):
    """A clip that cannot be written, with the reason and the fix in the message."""


@dataclass(frozen=True)
class ClipFile:
    """A finished clip on disk.

    ``duration_s`` is the span of its video, ``started_at_s`` the stream
    time (seconds from the camera's start) of its first frame, and
    ``sha256`` the hex digest of the whole file.
    """

    path: Path
    duration_s: float
    size: int
    sha256: str
    started_at_s: float


@dataclass(frozen=True)
class _RebasedPacket:
    kind: str
    data: bytes
    pts: int
    dts: int
    duration: int
    time_base: Fraction
    keyframe: bool


def write_clip(
    packets: Sequence[EncodedPacket], info: StreamInfo, path: Path
) -> ClipFile:
    """Write ``packets`` to ``path`` as an MP4 with its index at the front.

    The packets must start at a video key frame, as PacketRing.snapshot
    returns them. Timestamps are rebased so the first frame is at 0. A
    packet whose decoding time does not advance on its stream is skipped
    and logged. Raises ClipError when there is nothing to write or the
    file cannot be written. An existing file at ``path`` is replaced only
    by a finished clip.
    """
    rebased = _rebase(packets, info)
    video = [p for p in rebased if p.kind == "video"]
    partial = path.with_name(f".{path.name}.partial")
    try:
        _mux(rebased, info, partial)
        _fsync(partial)
        os.replace(partial, path)
    except (av.FFmpegError, OSError, AacConfigError) as err:
        partial.unlink(missing_ok=True)
        raise ClipError(f"writing the clip {path} failed: {err}") from err
    digest, size = _sha256(path)
    last = video[-1]
    duration = Fraction(last.pts + last.duration) * last.time_base
    first_video = next(p for p in packets if p.kind == "video")
    return ClipFile(
        path=path,
        duration_s=float(duration),
        size=size,
        sha256=digest,
        started_at_s=first_video.seconds,
    )


def inspect_clip(path: Path) -> ClipFile:
    """Check that ``path`` is a whole clip and return its figures.

    Reads the file's packets with PyAV without decoding them, so it is
    quick, and checks that every video frame its index lists is there.
    Raises ClipError when the file is empty, cannot be read, contains no
    video or ends early.
    """
    try:
        if path.stat().st_size == 0:
            raise ClipError(f"the clip {path} is empty")
        with av.open(str(path)) as container:
            video = next(iter(container.streams.video), None)
            if video is None or video.duration is None or video.time_base is None:
                raise ClipError(f"the clip {path} is invalid: it contains no video")
            listed = video.frames
            duration = float(video.duration * video.time_base)
            present = sum(1 for packet in container.demux(video) if packet.size)
        if present < listed:
            raise ClipError(
                f"the clip {path} is truncated: it contains {present} of its "
                f"{listed} video frames"
            )
        digest, size = _sha256(path)
    except (av.FFmpegError, OSError) as err:
        raise ClipError(f"the clip {path} cannot be read: {err}") from err
    return ClipFile(
        path=path, duration_s=duration, size=size, sha256=digest, started_at_s=0.0
    )


def _rebase(packets: Sequence[EncodedPacket], info: StreamInfo) -> list[_RebasedPacket]:
    """Shift every timestamp so the first key frame is at 0, keeping order."""
    first = next((p for p in packets if p.kind == "video"), None)
    if first is None:
        raise ClipError(
            f"the clip snapshot of {len(packets)} packets contains no video: "
            "wait until the camera has delivered a key frame"
        )
    if not first.keyframe:
        raise ClipError(
            f"the clip snapshot starts with a video frame at {first.seconds:.3f} s "
            "that is not a key frame: take snapshots with PacketRing.snapshot"
        )
    origin = Fraction(first.pts) * first.time_base
    last_dts: dict[str, int] = {}
    rebased: list[_RebasedPacket] = []
    skipped = 0
    for packet in packets:
        if packet.kind == "audio" and info.audio is None:
            skipped += 1
            continue
        shift = round(origin / packet.time_base)
        pts, dts = packet.pts - shift, packet.dts - shift
        if dts < 0 or pts < 0 or dts <= last_dts.get(packet.kind, -1):
            skipped += 1
            continue
        last_dts[packet.kind] = dts
        rebased.append(
            _RebasedPacket(
                packet.kind,
                packet.data,
                pts,
                dts,
                packet.duration,
                packet.time_base,
                packet.keyframe,
            )
        )
    if skipped:
        _log.warning(
            "clip from %.3f s: skipped %d packets before its start, out of order "
            "or of a stream the clip does not have",
            float(origin),
            skipped,
        )
    return rebased


def _mux(packets: list[_RebasedPacket], info: StreamInfo, path: Path) -> None:
    framer = AdtsFramer.from_config(info.audio.extradata) if info.audio else None
    with av.open(
        str(path), "w", format="mp4", options={"movflags": "+faststart"}
    ) as container:
        video_stream = container.add_mux_stream(
            info.video.codec,
            rate=info.video.fps,
            width=info.video.width,
            height=info.video.height,
        )
        video_stream.time_base = info.video.time_base
        audio_stream = None
        if info.audio is not None:
            audio_stream = container.add_mux_stream(
                info.audio.codec, rate=info.audio.sample_rate
            )
            audio_stream.time_base = info.audio.time_base
        for packet in packets:
            data = packet.data
            stream = video_stream
            if packet.kind == "audio":
                if audio_stream is None or framer is None:
                    continue
                # The MP4 muxer takes the AudioSpecificConfig from the
                # first ADTS header and strips the headers again.
                data = framer.frame(data)
                stream = audio_stream
            av_packet = av.Packet(data)
            av_packet.pts = packet.pts
            av_packet.dts = packet.dts
            av_packet.duration = packet.duration
            av_packet.time_base = packet.time_base
            av_packet.is_keyframe = packet.keyframe
            av_packet.stream = stream
            container.mux(av_packet)


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _sha256(path: Path) -> tuple[str, int]:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256")
        return digest.hexdigest(), file.tell()
