"""Camera encode speed against the ffmpeg command line, and clip write time.

Run ``python -m bench.encode`` for a table or ``--json`` for one JSON line.
The simulator's test card is drawn once for ``--frames`` frames at the
default camera settings (1280x720, 30 fps, preset veryfast, 2500 kbit/s,
one key frame a second). The same frames then go through:

- ours: ``H264Encoder``, the encoder that SimulatedCamera and SlateCamera
  use, frame by frame from memory, as the camera feeds it;
- ffmpeg: ``/usr/bin/ffmpeg -f rawvideo ... -c:v libx264`` with the same
  preset, tune, GOP and bitrate and no B-frames, reading the frames from a
  file and writing to ``-f null``. Its process start-up is timed too.

Passes alternate, and the best pass of each is reported. ``ratio`` is ours
over ffmpeg's frame rate. The clip figure fills a PacketRing with the
default clip length (30 s, or 4 s with ``--quick``) of packets and times a
clip trigger: the snapshot and ``write_clip`` to a finished MP4, the worst
of the passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from appliance.studio.clips import write_clip
from appliance.studio.ring import PacketRing
from hardware.camera import CameraSettings, EncodedPacket, StreamInfo
from hardware.camera._encoder import AacEncoder, H264Encoder
from hardware.camera._frames import TestCard
from hardware.camera._software import tone_samples

FFMPEG = "/usr/bin/ffmpeg"
TARGET_RATIO = 0.8
CLIP_LIMIT_S = 0.5
CLIP_SECONDS = 30.0
DEFAULT_FRAMES = 300
PASSES = 3
QUICK = {"frames": 30, "width": 320, "height": 180, "clip_seconds": 4.0, "passes": 1}


def draw_frames(settings: CameraSettings, count: int) -> npt.NDArray[np.uint8]:
    """Draw ``count`` frames of the test card into one array."""
    card = TestCard(settings.width, settings.height)
    frames = np.empty((count, settings.height * 3 // 2, settings.width), np.uint8)
    for index in range(count):
        frames[index] = card.frame(index, index / settings.fps)
    return frames


def encode_ours(
    settings: CameraSettings, frames: npt.NDArray[np.uint8]
) -> tuple[float, list[EncodedPacket], StreamInfo]:
    """Encode every frame with the camera's encoder; return the frames per second."""
    started = time.perf_counter()
    encoder = H264Encoder(settings)
    packets: list[EncodedPacket] = []
    for index, frame in enumerate(frames):
        packets.extend(encoder.encode(frame, index, time.monotonic()))
    packets.extend(encoder.flush())
    elapsed = time.perf_counter() - started
    return len(frames) / elapsed, packets, StreamInfo(video=encoder.info)


def encode_ffmpeg(settings: CameraSettings, raw: Path, count: int) -> float:
    """Encode the raw frames with the ffmpeg command; return the frames per second."""
    command = [
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
        "-s",
        f"{settings.width}x{settings.height}",
        "-r",
        str(settings.fps),
        "-i",
        str(raw),
        "-c:v",
        "libx264",
        "-preset",
        settings.preset,
        "-tune",
        "zerolatency",
        "-g",
        str(settings.gop_frames),
        "-bf",
        "0",
        "-b:v",
        f"{settings.bitrate_kbps}k",
        "-f",
        "null",
        "-",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return count / (time.perf_counter() - started)


def fill_ring(
    settings: CameraSettings,
    video: list[EncodedPacket],
    info: StreamInfo,
    clip_seconds: float,
) -> tuple[PacketRing, StreamInfo]:
    """Fill a ring with ``clip_seconds`` of packets: the video looped, with a tone.

    Every GOP starts with a key frame and its SPS and PPS, so the encoded
    frames repeat as whole GOPs with shifted timestamps.
    """
    gop = settings.gop_frames
    whole = video[: len(video) // gop * gop] or video
    step = whole[0].duration
    audio_encoder = AacEncoder(settings.audio_rate, 1, settings.audio_bitrate_kbps)
    ring = PacketRing(clip_seconds)
    frame_count = round((clip_seconds + 1.0) * settings.fps)
    for index in range(frame_count):
        source = whole[index % len(whole)]
        packet = dataclasses.replace(source, pts=index * step, dts=index * step)
        until = (index + 1) * settings.audio_rate // settings.fps
        count = until - audio_encoder.next_sample
        audio = (
            audio_encoder.encode(
                tone_samples(audio_encoder.next_sample, count, settings.audio_rate),
                0.0,
            )
            if count > 0
            else []
        )
        for item in sorted([packet, *audio], key=lambda p: p.seconds):
            ring.append(item)
    return ring, dataclasses.replace(info, audio=audio_encoder.info)


def time_clip(ring: PacketRing, info: StreamInfo, folder: Path) -> dict[str, Any]:
    """Time one clip trigger: snapshot the ring and write the MP4."""
    path = folder / "clip.mp4"
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    clip = write_clip(ring.snapshot(), info, path)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "duration_s": clip.duration_s, "bytes": clip.size}


def ffmpeg_version() -> str:
    """Return the first line of ``ffmpeg -version``."""
    completed = subprocess.run(
        [FFMPEG, "-version"], check=True, capture_output=True, text=True
    )
    return completed.stdout.splitlines()[0]


def run_benchmark(
    frames: int, width: int, height: int, clip_seconds: float, passes: int
) -> dict[str, Any]:
    """Run every pass and return the figures."""
    settings = dataclasses.replace(CameraSettings(), width=width, height=height)
    raw_frames = draw_frames(settings, frames)
    ours: list[float] = []
    theirs: list[float] = []
    clips: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as folder:
        raw = Path(folder) / "frames.yuv"
        raw.write_bytes(raw_frames.tobytes())
        for _pass in range(passes):
            rate, packets, info = encode_ours(settings, raw_frames)
            ours.append(rate)
            theirs.append(encode_ffmpeg(settings, raw, frames))
        ring, clip_info = fill_ring(settings, packets, info, clip_seconds)
        for _pass in range(passes):
            clips.append(time_clip(ring, clip_info, Path(folder)))
    ratio = max(ours) / max(theirs)
    clip_ready_s = max(clip["seconds"] for clip in clips)
    return {
        "benchmark": "encode",
        "python": platform.python_version(),
        "pyav": av.__version__,
        "ffmpeg": ffmpeg_version(),
        "frames": frames,
        "width": width,
        "height": height,
        "fps": settings.fps,
        "preset": settings.preset,
        "bitrate_kbps": settings.bitrate_kbps,
        "gop_frames": settings.gop_frames,
        "ours_fps": round(max(ours), 1),
        "ffmpeg_fps": round(max(theirs), 1),
        "ours_fps_passes": [round(rate, 1) for rate in ours],
        "ffmpeg_fps_passes": [round(rate, 1) for rate in theirs],
        "ratio": round(ratio, 3),
        "limit": TARGET_RATIO,
        "clip_seconds": clip_seconds,
        "ring_duration_s": round(ring.duration_s, 3),
        "clip_duration_s": round(clips[-1]["duration_s"], 3),
        "clip_bytes": clips[-1]["bytes"],
        "clip_ready_s": round(clip_ready_s, 4),
        "clip_ready_s_passes": [round(clip["seconds"], 4) for clip in clips],
        "clip_limit_s": CLIP_LIMIT_S,
        "targets_met": ratio >= TARGET_RATIO and clip_ready_s <= CLIP_LIMIT_S,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['frames']} frames {result['width']}x{result['height']}"
        f" at {result['fps']} fps, preset {result['preset']}"
    )
    print(f"ours (PyAV {result['pyav']})     {result['ours_fps']:>8.1f} frames/s")
    print(f"ffmpeg command             {result['ffmpeg_fps']:>8.1f} frames/s")
    print(f"ratio                      {result['ratio']:>8.3f} (limit {TARGET_RATIO})")
    print(
        f"clip of {result['clip_duration_s']:.1f} s ready in"
        f" {result['clip_ready_s']:.3f} s (limit {CLIP_LIMIT_S} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encode", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        help=f"frames to encode per pass (default {DEFAULT_FRAMES})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a run of about a second at 320x180 with a 4 s clip, for smoke tests",
    )
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"invalid --frames {args.frames}; give 1 or more")
    if args.quick:
        result = run_benchmark(
            QUICK["frames"],
            int(QUICK["width"]),
            int(QUICK["height"]),
            QUICK["clip_seconds"],
            int(QUICK["passes"]),
        )
    else:
        result = run_benchmark(args.frames, 1280, 720, CLIP_SECONDS, PASSES)
    result["quick"] = args.quick
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
