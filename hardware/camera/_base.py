"""The interface of every camera backend: encoded packets with their timestamps.

A backend captures raw frames, lets an overlay draw on each one, encodes
them as H.264 and yields the packets, together with the AAC packets of its
sound, in capture order. The studio treats every backend alike, so the
simulator and picamera2 are interchangeable.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

PacketKind = Literal["video", "audio"]

# Video timestamps count in MPEG's 90 kHz clock, the clock that MPEG-TS and
# HLS use, so a packet keeps its timestamp from encoder to segment.
VIDEO_TIME_BASE = Fraction(1, 90_000)

# An overlay draws on one raw frame in place before it is encoded. The frame
# is I420: an array of shape (height * 3 // 2, width), the luma plane in its
# first ``height`` rows, then the two chroma planes. The second argument is
# the frame's capture time in seconds since the camera started.
Overlay = Callable[[npt.NDArray[np.uint8], float], None]


class CameraError(RuntimeError):
    """A camera that cannot start, or that stopped delivering frames.

    ``permanent`` is True when trying again cannot help before the process
    restarts, such as a camera library that is not installed. ``hardware``
    imports nothing from ``appliance``; the box turns this error into its
    own HardwareError where a camera is required.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class CameraSettings:
    """The size, rate and encoder settings of a camera's stream.

    ``keyframe_interval_s`` is the time between key frames, which bounds
    how precisely a clip or an HLS segment can start. ``preset`` is the
    libx264 speed preset of the software encoders. ``audio`` is ``none``,
    ``tone`` (a test tone, simulator only) or ``alsa:<device>`` such as
    ``alsa:hw:1,0`` for a USB microphone.
    """

    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 2500
    keyframe_interval_s: float = 1.0
    preset: str = "veryfast"
    audio: str = "tone"
    audio_rate: int = 48_000
    audio_bitrate_kbps: int = 96

    @property
    def gop_frames(self) -> int:
        """The number of frames from one key frame to the next."""
        return max(1, round(self.fps * self.keyframe_interval_s))


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded access unit of video (H.264, Annex B) or audio (raw AAC).

    ``pts`` and ``dts`` count ``time_base`` units from the camera's start,
    and ``duration`` is in the same units. Video packets carry their SPS
    and PPS before every key frame, so a stream can be cut at any key
    frame. ``captured_at`` and ``encoded_at`` are ``time.monotonic()``
    readings, the encoder latency being their difference.
    """

    kind: PacketKind
    data: bytes
    pts: int
    dts: int
    duration: int
    time_base: Fraction
    keyframe: bool
    captured_at: float
    encoded_at: float

    @property
    def seconds(self) -> float:
        """The presentation time in seconds from the camera's start."""
        return float(self.pts * self.time_base)

    @property
    def end_seconds(self) -> float:
        """The presentation time at which this packet ends, in seconds."""
        return float((self.pts + self.duration) * self.time_base)


@dataclass(frozen=True)
class VideoInfo:
    """The codec parameters that a muxer needs for the video stream."""

    width: int
    height: int
    fps: int
    # The SPS and PPS as Annex B NAL units (start codes included).
    extradata: bytes
    codec: str = "h264"
    time_base: Fraction = VIDEO_TIME_BASE


@dataclass(frozen=True)
class AudioInfo:
    """The codec parameters that a muxer needs for the audio stream."""

    sample_rate: int
    channels: int
    # The AAC AudioSpecificConfig.
    extradata: bytes
    codec: str = "aac"

    @property
    def time_base(self) -> Fraction:
        """Audio timestamps count samples."""
        return Fraction(1, self.sample_rate)


@dataclass(frozen=True)
class StreamInfo:
    """The streams a camera delivers, with ``audio`` None without sound."""

    video: VideoInfo
    audio: AudioInfo | None = None


@dataclass
class CameraStats:
    """Counters of a running camera, read by the studio's telemetry.

    ``fps`` is the frame rate measured over the last second and
    ``encoder_latency_ms`` the mean capture-to-packet time over the same
    second.
    """

    frames: int = 0
    dropped_frames: int = 0
    fps: float = 0.0
    encoder_latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Camera(abc.ABC):
    """A source of encoded video and audio packets.

    ``start`` raises CameraError when the camera cannot start. After it
    returns, ``info`` describes the streams. ``packets`` yields video and
    audio packets in capture order until ``stop``; it raises CameraError
    when the camera fails while running.
    """

    name: str = "camera"

    def __init__(self, settings: CameraSettings, overlay: Overlay | None = None):
        self.settings = settings
        self.overlay = overlay
        self.stats = CameraStats()

    @property
    @abc.abstractmethod
    def info(self) -> StreamInfo:
        """The stream parameters, which raise CameraError before ``start``."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the camera and its encoder."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop capturing and release the camera. Safe to call twice."""

    @abc.abstractmethod
    def packets(self) -> AsyncIterator[EncodedPacket]:
        """Yield encoded packets in capture order until stopped."""
