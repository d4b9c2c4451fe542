"""Run Debian's ffprobe and ffmpeg on media files the studio writes.

``probe(path)`` returns the streams, the packets (in file order) and the
format that ``ffprobe -of json`` reports; ``decode_errors(path)`` decodes a
file to nowhere and returns what ffmpeg printed at the error level, which is
empty for a file that plays. Both need /usr/bin/ffprobe and /usr/bin/ffmpeg
(tests/ensure-ffmpeg installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Probe:
    """What ffprobe reports about one media file.

    ``packets`` are in file order. ``pts_time``, ``dts_time`` and
    ``duration_time`` are converted to float seconds (None where ffprobe
    reports none), and ``keyframe`` to a bool.
    """

    streams: list[dict[str, Any]]
    packets: list[dict[str, Any]]
    format: dict[str, Any]

    def stream(self, codec_type: str) -> dict[str, Any]:
        """Return the first stream of ``codec_type`` (``video`` or ``audio``)."""
        for stream in self.streams:
            if stream.get("codec_type") == codec_type:
                return stream
        raise KeyError(f"no {codec_type} stream in {self.streams!r}")

    def has_stream(self, codec_type: str) -> bool:
        """Whether the file has a stream of ``codec_type``."""
        return any(s.get("codec_type") == codec_type for s in self.streams)

    def packets_of(self, codec_type: str) -> list[dict[str, Any]]:
        """Return the packets of the first stream of ``codec_type``, in file order."""
        index = self.stream(codec_type)["index"]
        return [p for p in self.packets if p["stream_index"] == index]

    @property
    def duration_s(self) -> float:
        """The container's duration in seconds."""
        return float(self.format["duration"])

    def video_span_s(self) -> float:
        """Return the time from the first video frame's start to the last one's end."""
        video = self.packets_of("video")
        starts = [p["pts_time"] for p in video]
        last = video[-1]
        return last["pts_time"] + (last["duration_time"] or 0.0) - min(starts)


def _float_or_none(value: Any) -> float | None:
    return None if value in (None, "N/A") else float(value)


def _normalise_packet(packet: dict[str, Any]) -> dict[str, Any]:
    packet = dict(packet)
    for key in ("pts_time", "dts_time", "duration_time"):
        packet[key] = _float_or_none(packet.get(key))
    packet["keyframe"] = "K" in packet.get("flags", "")
    packet["size"] = int(packet.get("size", 0))
    return packet


def probe(path: Path, *, input_format: str | None = None) -> Probe:
    """Run ffprobe on ``path`` and return its streams, packets and format.

    ``input_format`` forces a demuxer (``mpegts``, ``mp4``). Raises
    AssertionError with ffprobe's message when it cannot read the file.
    """
    command = [FFPROBE, "-v", "error", "-of", "json"]
    if input_format is not None:
        command += ["-f", input_format]
    command += ["-show_streams", "-show_packets", "-show_format", str(path)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"ffprobe cannot read {path}: {result.stderr.strip()}")
    report = json.loads(result.stdout)
    return Probe(
        streams=report.get("streams", []),
        packets=[_normalise_packet(p) for p in report.get("packets", [])],
        format=report.get("format", {}),
    )


def probe_bytes(data: bytes, suffix: str, *, input_format: str | None = None) -> Probe:
    """Write ``data`` to a temporary file named ``*suffix`` and probe it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"media{suffix}"
        path.write_bytes(data)
        return probe(path, input_format=input_format)


def decode_errors(path: Path) -> str:
    """Decode every stream of ``path`` and return ffmpeg's error output.

    Runs ``ffmpeg -v error -i path -f null -``; an empty string means the
    file decodes without an error. A non-zero exit adds its code to the text.
    """
    result = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    errors = result.stderr.strip()
    if result.returncode != 0:
        errors = f"{errors}\nffmpeg exited with {result.returncode}".strip()
    return errors
