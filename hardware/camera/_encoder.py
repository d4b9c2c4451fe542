"""Software encoders: raw I420 frames to H.264 and PCM samples to AAC, with PyAV.

The simulator, the slate and the benchmark encode through these classes,
and Picamera2Camera uses the AAC encoder for its microphone. PyAV bundles
FFmpeg's libx264 and native AAC encoder.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from av.video.frame import PictureType

from hardware.camera._base import (
    VIDEO_TIME_BASE,
    AudioInfo,
    CameraError,
    CameraSettings,
    EncodedPacket,
    VideoInfo,
)

# FFmpeg's native AAC encoder delays its output by 1024 samples of priming.
AAC_PRIMING_SAMPLES = 1024
AAC_FRAME_SAMPLES = 1024

_NAL_SPS = 7
_NAL_PPS = 8


def annexb_nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream into NAL units, start codes removed."""
    units: list[bytes] = []
    start = -1
    index = 0
    while True:
        found = data.find(b"\x00\x00\x01", index)
        if found < 0:
            break
        if start >= 0:
            # A four-byte start code leaves a zero byte on the previous unit.
            units.append(data[start:found].rstrip(b"\x00"))
        start = found + 3
        index = start
    if start >= 0:
        units.append(data[start:])
    return [unit for unit in units if unit]


def parameter_sets(data: bytes) -> bytes:
    """Return the SPS and PPS NAL units of an Annex B packet, with start codes."""
    sets = [
        unit
        for unit in annexb_nal_units(data)
        if unit[0] & 0x1F in (_NAL_SPS, _NAL_PPS)
    ]
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in sets)


def has_parameter_sets(data: bytes) -> bool:
    """Tell whether an Annex B packet carries both an SPS and a PPS."""
    types = {unit[0] & 0x1F for unit in annexb_nal_units(data)}
    return {_NAL_SPS, _NAL_PPS} <= types


class H264Encoder:
    """libx264 through PyAV, set up for live streaming.

    ``tune=zerolatency`` and no B-frames give one packet per frame straight
    away, with ``dts == pts``. Key frames follow presentation time, not the
    count of encoded frames. The first frame at or after each multiple of
    ``keyframe_interval_s`` is an IDR frame, so a camera that stalls or skips
    frames it is late for still starts a new group of pictures every
    interval. Scene-cut detection is off and x264's ``keyint`` only bounds
    the group length, so no key frame comes anywhere else. Each key frame
    is preceded by its SPS and PPS, so any key frame can start a segment or
    a clip. Timestamps of the packets count the 90 kHz clock from frame 0.
    """

    def __init__(self, settings: CameraSettings):
        self.settings = settings
        self._frame_ticks = Fraction(VIDEO_TIME_BASE.denominator, settings.fps)
        self._captured_at: dict[int, float] = {}
        # Key frames fall on a grid of the interval in frame time. A Fraction
        # of the decimal text keeps 0.1 s exact, so the grid never drifts.
        self._key_interval = Fraction(repr(settings.keyframe_interval_s))
        self._next_key_slot = 0
        context = av.CodecContext.create("libx264", "w")
        context.width = settings.width
        context.height = settings.height
        context.pix_fmt = "yuv420p"
        context.time_base = Fraction(1, settings.fps)
        context.framerate = Fraction(settings.fps)
        context.bit_rate = settings.bitrate_kbps * 1000
        # The maximum group length the grid can give. x264 counts encoded
        # frames, which never run ahead of frame time, so this bound never
        # puts a key frame between two grid points.
        gop = max(1, math.ceil(settings.fps * self._key_interval))
        context.gop_size = gop
        context.max_b_frames = 0
        # The global header fills ``extradata`` at open time, and
        # repeat-headers still puts the SPS and PPS in band before every key
        # frame.
        context.flags |= av.codec.context.Flags.global_header
        context.options = {
            "preset": settings.preset,
            "tune": "zerolatency",
            # A frame marked as I becomes an IDR frame, not an open-GOP
            # I frame, so a segment or clip can start on it.
            "forced-idr": "1",
            "x264-params": (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1"
            ),
        }
        try:
            context.open()
        except (av.FFmpegError, ValueError) as error:
            raise CameraError(
                f"cannot open the H.264 encoder at {settings.width}x{settings.height}"
                f" {settings.fps} fps preset {settings.preset!r}: {error}; check the"
                " studio settings"
            ) from error
        self._context = context
        extradata = parameter_sets(bytes(context.extradata or b""))
        if not extradata:
            raise CameraError("the H.264 encoder gave no SPS and PPS at open time")
        self.info = VideoInfo(
            width=settings.width,
            height=settings.height,
            fps=settings.fps,
            extradata=extradata,
        )

    def encode(
        self, frame: npt.NDArray[np.uint8], index: int, captured_at: float
    ) -> list[EncodedPacket]:
        """Encode one I420 frame, frame number ``index`` of the stream.

        ``index`` counts frame periods from the start, so frames that were
        skipped leave a gap in it. The frame is a key frame when a multiple
        of the key frame interval falls in that gap or on the frame itself.
        """
        video_frame = av.VideoFrame.from_ndarray(frame, format="yuv420p")
        video_frame.pts = index
        slot = math.floor(Fraction(index, self.settings.fps) / self._key_interval)
        if slot >= self._next_key_slot:
            video_frame.pict_type = PictureType.I
            self._next_key_slot = slot + 1
        self._captured_at[index] = captured_at
        return self._packets(self._context.encode(video_frame))

    def flush(self) -> list[EncodedPacket]:
        """Drain the frames still inside the encoder."""
        return self._packets(self._context.encode(None))

    def _packets(self, encoded: list[av.Packet]) -> list[EncodedPacket]:
        packets = []
        encoded_at = time.monotonic()
        for packet in encoded:
            if packet.pts is None:
                continue
            index = packet.pts
            data = bytes(packet)
            if packet.is_keyframe and not has_parameter_sets(data):
                # x264 repeats the headers on every IDR frame. A key frame
                # without them gets them here, or a segment or clip cut at it
                # would not decode.
                data = self.info.extradata + data
            ticks = round(index * self._frame_ticks)
            packets.append(
                EncodedPacket(
                    kind="video",
                    data=data,
                    pts=ticks,
                    dts=ticks,
                    duration=round(self._frame_ticks),
                    time_base=VIDEO_TIME_BASE,
                    keyframe=packet.is_keyframe,
                    captured_at=self._captured_at.pop(index, encoded_at),
                    encoded_at=encoded_at,
                )
            )
        return packets


class AacEncoder:
    """FFmpeg's AAC encoder through PyAV, fed with float samples.

    ``encode`` takes any number of samples and buffers them into the
    encoder's 1024-sample frames. Sample ``n`` of the input is the sound
    captured ``n / sample_rate`` seconds after the camera started. The
    encoder's priming output takes the first 1024 sample slots, so packet
    timestamps start at 0 and the first 1024 captured samples are left out.
    """

    def __init__(self, sample_rate: int, channels: int, bitrate_kbps: int):
        self.sample_rate = sample_rate
        self.channels = channels
        context = av.CodecContext.create("aac", "w")
        context.sample_rate = sample_rate
        context.layout = "mono" if channels == 1 else "stereo"
        context.format = "fltp"
        context.bit_rate = bitrate_kbps * 1000
        context.time_base = Fraction(1, sample_rate)
        try:
            context.open()
        except (av.FFmpegError, ValueError) as error:
            raise CameraError(
                f"cannot open the AAC encoder at {sample_rate} Hz, {channels}"
                f" channel(s): {error}; use a sample rate such as 48000 or 44100"
            ) from error
        self._context = context
        self.info = AudioInfo(
            sample_rate=sample_rate,
            channels=channels,
            extradata=bytes(context.extradata or b""),
        )
        self._pending = np.zeros((channels, 0), np.float32)
        # The next sample to encode. The first ones fill the priming slots.
        self._next_sample = AAC_PRIMING_SAMPLES
        self._time_base = Fraction(1, sample_rate)

    @property
    def next_sample(self) -> int:
        """The capture index of the next sample the encoder expects."""
        return self._next_sample + self._pending.shape[1]

    def encode(
        self, samples: npt.NDArray[np.float32], captured_at: float
    ) -> list[EncodedPacket]:
        """Encode planar float samples of shape (channels, count)."""
        self._pending = np.concatenate((self._pending, samples), axis=1)
        packets: list[EncodedPacket] = []
        while self._pending.shape[1] >= AAC_FRAME_SAMPLES:
            chunk = np.ascontiguousarray(self._pending[:, :AAC_FRAME_SAMPLES])
            self._pending = self._pending[:, AAC_FRAME_SAMPLES:]
            frame = av.AudioFrame.from_ndarray(
                chunk, format="fltp", layout=self._context.layout.name
            )
            frame.sample_rate = self.sample_rate
            frame.pts = self._next_sample
            self._next_sample += AAC_FRAME_SAMPLES
            packets.extend(self._packets(self._context.encode(frame), captured_at))
        return packets

    def _packets(
        self, encoded: list[av.Packet], captured_at: float
    ) -> list[EncodedPacket]:
        encoded_at = time.monotonic()
        packets = []
        for packet in encoded:
            if packet.pts is None:
                continue
            packets.append(
                EncodedPacket(
                    kind="audio",
                    data=bytes(packet),
                    pts=packet.pts,
                    dts=packet.dts if packet.dts is not None else packet.pts,
                    duration=packet.duration or AAC_FRAME_SAMPLES,
                    time_base=self._time_base,
                    keyframe=True,
                    captured_at=captured_at,
                    encoded_at=encoded_at,
                )
            )
        return packets
