"""FFmpeg's ffprobe and ffmpeg run on a media file, for the media checks."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TIMEOUT_S = 30.0


class MediaToolError(OSError):
    """ffprobe or ffmpeg is missing, timed out or could not read the file."""


@dataclass(frozen=True, slots=True)
class Probe:
    """The streams, video packets and format that ffprobe read from a file."""

    streams: list[dict[str, Any]]
    video_packets: list[dict[str, Any]]
    format: dict[str, Any]

    @property
    def video(self) -> dict[str, Any] | None:
        """The first video stream, or None."""
        return next((s for s in self.streams if s.get("codec_type") == "video"), None)

    @property
    def duration_s(self) -> float:
        """The file's duration in seconds, 0.0 when ffprobe gives none."""
        try:
            return float(self.format.get("duration", 0.0))
        except (TypeError, ValueError):
            return 0.0

    def timestamp_problem(self) -> str | None:
        """Return why the video packets are unplayable, or None.

        The first packet must be a key frame and decode timestamps must
        rise, as a player needs them to.
        """
        packets = self.video_packets
        if not packets:
            return "it holds no video packets"
        if "K" not in str(packets[0].get("flags", "")):
            return "its first video packet is not a key frame"
        times = [int(p["dts"]) for p in packets if isinstance(p.get("dts"), int)]
        if any(later <= earlier for earlier, later in itertools.pairwise(times)):
            return "its video decode timestamps do not rise"
        return None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaToolError(
            f"{name} was not found on PATH; install FFmpeg (apt-get install ffmpeg)"
        )
    return path


async def _run(arguments: list[str]) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError as err:
        process.kill()
        await process.wait()
        raise MediaToolError(
            f"{arguments[0]} did not finish within {_TIMEOUT_S:.0f} s"
        ) from err
    return process.returncode or 0, stdout, stderr


async def probe(path: Path) -> Probe:
    """Run ffprobe on ``path``, or raise MediaToolError when it cannot read it."""
    code, stdout, stderr = await _run(
        [
            _tool("ffprobe"),
            "-v",
            "error",
            "-of",
            "json",
            "-show_streams",
            "-show_format",
            "-show_packets",
            "-select_streams",
            "v",
            str(path),
        ]
    )
    if code != 0:
        message = stderr.decode("utf-8", "replace").strip()[:300]
        raise MediaToolError(f"ffprobe could not read {path.name}: {message}")
    try:
        document = json.loads(stdout)
    except ValueError as err:
        raise MediaToolError(f"ffprobe printed invalid JSON for {path.name}") from err
    return Probe(
        streams=list(document.get("streams", [])),
        video_packets=list(document.get("packets", [])),
        format=dict(document.get("format", {})),
    )


async def decode_errors(path: Path) -> str:
    """Decode ``path`` with ffmpeg and return what it reported as errors."""
    code, _stdout, stderr = await _run(
        [_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"]
    )
    text = stderr.decode("utf-8", "replace").strip()
    if code != 0 and not text:
        text = f"ffmpeg exited with code {code}"
    return text[:300]
