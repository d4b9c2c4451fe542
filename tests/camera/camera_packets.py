"""Shared helpers for the camera tests: small settings and a packet collector."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

from hardware.camera import Camera, CameraSettings, EncodedPacket, StreamInfo

# Small frames keep libx264 fast; one key frame a second at 15 fps.
SMALL = CameraSettings(
    width=160, height=96, fps=15, bitrate_kbps=300, preset="ultrafast", audio="tone"
)


async def collect(
    camera: Camera, video_frames: int
) -> tuple[list[EncodedPacket], StreamInfo]:
    """Start ``camera``, gather packets until ``video_frames`` video ones, stop."""
    await camera.start()
    info = camera.info
    packets: list[EncodedPacket] = []
    try:
        async for packet in camera.packets():
            packets.append(packet)
            if sum(1 for p in packets if p.kind == "video") >= video_frames:
                break
    finally:
        await camera.stop()
    return packets, info


def decode_video(
    packets: list[EncodedPacket], info: StreamInfo
) -> list[npt.NDArray[np.uint8]]:
    """Decode video packets with FFmpeg's H.264 decoder into I420 arrays."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = info.video.extradata
    frames = []
    for packet in packets:
        if packet.kind != "video":
            continue
        av_packet = av.Packet(packet.data)
        av_packet.pts = packet.pts
        av_packet.time_base = packet.time_base
        for frame in decoder.decode(av_packet):
            frames.append(frame.to_ndarray(format="yuv420p"))
    for frame in decoder.decode(None):
        frames.append(frame.to_ndarray(format="yuv420p"))
    return frames


def decode_audio(
    packets: list[EncodedPacket], info: StreamInfo
) -> npt.NDArray[np.float32]:
    """Decode the AAC packets into one mono float signal."""
    if info.audio is None:
        raise ValueError("the stream has no audio")
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = info.audio.extradata
    decoder.sample_rate = info.audio.sample_rate
    decoder.layout = "mono"
    chunks = []
    for packet in packets:
        if packet.kind != "audio":
            continue
        av_packet = av.Packet(packet.data)
        av_packet.pts = packet.pts
        av_packet.time_base = Fraction(1, info.audio.sample_rate)
        for frame in decoder.decode(av_packet):
            chunks.append(frame.to_ndarray()[0])
    return np.concatenate(chunks).astype(np.float32)


def dominant_frequency_hz(signal: npt.NDArray[np.float32], sample_rate: int) -> float:
    """Return the frequency of the strongest FFT bin of ``signal``."""
    spectrum = np.abs(np.fft.rfft(signal))
    return float(
        np.fft.rfftfreq(len(signal), 1 / sample_rate)[int(np.argmax(spectrum))]
    )
