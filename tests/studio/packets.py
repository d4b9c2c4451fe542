"""Encoded packets for the studio tests, made once per test session.

``stream_packets`` runs the product's SimulatedCamera without real-time
pacing and collects its packets (video and AAC audio in capture order),
so the studio tests see exactly what a camera delivers. Results are cached,
so every test module that requests the same stream shares one encode.
"""

from __future__ import annotations

import asyncio
import functools
import threading

from hardware.camera import CameraSettings, EncodedPacket, SimulatedCamera, StreamInfo


async def _collect(
    settings: CameraSettings, seconds: float
) -> tuple[StreamInfo, list[EncodedPacket]]:
    camera = SimulatedCamera(settings, realtime=False)
    await camera.start()
    packets: list[EncodedPacket] = []
    try:
        async for packet in camera.packets():
            if packet.kind == "video" and packet.seconds >= seconds:
                break
            packets.append(packet)
        info = camera.info
    finally:
        await camera.stop()
    # The camera may deliver audio a little past the last video frame kept.
    video_end = max(p.end_seconds for p in packets if p.kind == "video")
    return info, [p for p in packets if p.kind == "video" or p.seconds < video_end]


def _run_in_thread(
    settings: CameraSettings, seconds: float
) -> tuple[StreamInfo, list[EncodedPacket]]:
    # A thread of its own, because the caller may be inside a running loop.
    result: list[tuple[StreamInfo, list[EncodedPacket]]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_collect(settings, seconds)))
        except BaseException as err:  # handed back to the caller below
            errors.append(err)

    thread = threading.Thread(target=run, name="test-packets")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@functools.cache
def stream_packets(
    seconds: float,
    *,
    width: int = 320,
    height: int = 180,
    fps: int = 15,
    keyframe_interval_s: float = 1.0,
    audio: bool = True,
) -> tuple[StreamInfo, tuple[EncodedPacket, ...]]:
    """Return the first ``seconds`` of the simulator's stream and its info."""
    settings = CameraSettings(
        width=width,
        height=height,
        fps=fps,
        bitrate_kbps=400,
        keyframe_interval_s=keyframe_interval_s,
        preset="ultrafast",
        audio="tone" if audio else "none",
    )
    info, packets = _run_in_thread(settings, seconds)
    return info, tuple(packets)
