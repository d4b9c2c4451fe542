"""The Raspberry Pi camera through picamera2, with sound from ALSA.

picamera2 captures YUV420 frames, and its ``pre_callback`` lets the overlay
draw on each one through ``MappedArray`` before the encoder reads it. The
encoder is the VideoCore hardware ``H264Encoder`` where the board has one
(Pi 4 and older) and ``LibavH264Encoder`` (libx264) otherwise, as on the
Pi 5. A ``picamera2.outputs.Output`` subclass turns what the encoder
returns into EncodedPackets and hands them to the event loop.

picamera2 needs libcamera's Python bindings, which only Raspberry Pi OS
ships, so it is imported inside ``start``. ``backend`` swaps in another
implementation of the same interfaces, such as the one in
``hardware.camera._picamera2_sim``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from hardware.camera._audio import AlsaCapture
from hardware.camera._base import (
    VIDEO_TIME_BASE,
    Camera,
    CameraError,
    CameraSettings,
    EncodedPacket,
    Overlay,
    StreamInfo,
    VideoInfo,
)
from hardware.camera._encoder import has_parameter_sets, parameter_sets
from hardware.camera._interleave import Interleaver
from hardware.camera._stats import StatsWindow

_log = logging.getLogger(__name__)

FIRST_KEYFRAME_TIMEOUT_S = 5.0
# Packets waiting for the studio, at most. Beyond this the camera drops frames.
QUEUE_PACKETS = 256
_MICROSECONDS = 1_000_000


@dataclass(frozen=True)
class Picamera2Backend:
    """The picamera2 classes a Picamera2Camera uses.

    ``hardware_encoder`` is None where the board has no H.264 block.
    """

    picamera2: Any
    mapped_array: Any
    output: type
    libav_encoder: Any
    hardware_encoder: Any | None
    # The PyAV input format that ``alsa:<device>`` opens.
    audio_input_format: str = "alsa"


def load_picamera2() -> Picamera2Backend:
    """Import picamera2, or raise CameraError when it cannot be imported."""
    try:
        import picamera2
        import picamera2.encoders
        import picamera2.outputs
        from picamera2.platform import (
            Platform,
            get_platform,
        )
    except ImportError as error:
        raise CameraError(_missing_picamera2_message(error), permanent=True) from error
    hardware_encoder = None
    if get_platform() == Platform.VC4:
        from picamera2.encoders.h264_encoder import (
            H264Encoder,
        )

        hardware_encoder = H264Encoder
    return Picamera2Backend(
        picamera2=picamera2.Picamera2,
        mapped_array=picamera2.MappedArray,
        output=picamera2.outputs.Output,
        libav_encoder=picamera2.encoders.LibavH264Encoder,
        hardware_encoder=hardware_encoder,
    )


def _missing_picamera2_message(error: ImportError) -> str:
    # pip installs picamera2 itself but not libcamera's Python bindings,
    # which only Raspberry Pi OS's python3-libcamera provides (a dependency
    # of python3-picamera2), built for the system's python3.
    missing = "picamera2" if error.name is None else error.name.split(".")[0]
    if missing == "picamera2":
        cause = f"picamera2 cannot be imported ({error})"
    else:
        cause = f"picamera2 cannot import {missing} ({error})"
    return (
        f"{cause}; on Raspberry Pi OS run `sudo apt install python3-picamera2`"
        " and create the box's venv with `python3 -m venv"
        " --system-site-packages .venv` so that it sees the package (pip cannot"
        " install libcamera's Python bindings), or set studio.camera to"
        " 'simulator'. The camera stays off until the box restarts"
    )


def i420_view(
    array: npt.NDArray[np.uint8], width: int, height: int
) -> tuple[npt.NDArray[np.uint8], bool]:
    """Return an I420 frame of ``width`` columns for a mapped YUV420 buffer.

    picamera2 pads rows to its ``stride``. An unpadded buffer is returned
    as it is, so an overlay draws in place. A padded one is copied, and the
    second value is True so that the caller copies it back with
    ``store_i420``.
    """
    stride = array.shape[1]
    if stride == width:
        return array, False
    frame = np.empty((height * 3 // 2, width), np.uint8)
    frame[:height] = array[:height, :width]
    chroma = array[height : height * 3 // 2].reshape(-1)
    plane = (height // 2) * (stride // 2)
    for index in range(2):
        padded = chroma[index * plane : (index + 1) * plane].reshape(-1, stride // 2)
        target = frame[height:].reshape(-1)[
            index * (height // 2) * (width // 2) : (index + 1)
            * (height // 2)
            * (width // 2)
        ]
        target[:] = padded[:, : width // 2].reshape(-1)
    return frame, True


def store_i420(
    frame: npt.NDArray[np.uint8], array: npt.NDArray[np.uint8], width: int, height: int
) -> None:
    """Copy an I420 frame back into a padded YUV420 buffer."""
    stride = array.shape[1]
    array[:height, :width] = frame[:height]
    chroma = array[height : height * 3 // 2].reshape(-1)
    source = frame[height:].reshape(-1)
    plane = (height // 2) * (stride // 2)
    size = (height // 2) * (width // 2)
    for index in range(2):
        padded = chroma[index * plane : (index + 1) * plane].reshape(-1, stride // 2)
        padded[:, : width // 2] = source[index * size : (index + 1) * size].reshape(
            -1, width // 2
        )


class Picamera2Camera(Camera):
    """The Raspberry Pi camera module, encoded on the board.

    A camera that fails to start raises CameraError from each ``start``,
    so a caller that retries keeps trying. A picamera2 that cannot be
    imported cannot appear before the process restarts, so its
    CameraError is ``permanent`` and a caller stops retrying.
    """

    name = "picamera2"

    def __init__(
        self,
        settings: CameraSettings,
        overlay: Overlay | None = None,
        *,
        backend: Picamera2Backend | None = None,
    ):
        if settings.audio not in ("none",) and not settings.audio.startswith("alsa:"):
            raise ValueError(
                f"picamera2 cannot record audio {settings.audio!r}; use 'none' or"
                " 'alsa:<device>' such as 'alsa:hw:1,0'"
            )
        super().__init__(settings, overlay)
        self.backend = backend
        self._window = StatsWindow(self.stats)
        self._camera: Any = None
        self._info: StreamInfo | None = None
        self._queue: asyncio.Queue[EncodedPacket | CameraError | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interleaver = Interleaver(audio=False)
        self._interleave_lock = threading.Lock()
        self._extradata = b""
        self._first_keyframe = threading.Event()
        self._audio: AlsaCapture | None = None
        self._started_at = 0.0
        self._import_error: CameraError | None = None
        self.stats.extra["overlay_errors"] = 0

    @property
    def info(self) -> StreamInfo:
        if self._info is None:
            raise CameraError("the picamera2 camera is not started; call start()")
        return self._info

    async def start(self) -> None:
        if self._camera is not None:
            return
        backend = self.backend or await self._load_backend()
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(QUEUE_PACKETS)
        self._first_keyframe.clear()
        self._extradata = b""
        self._window.reset()
        audio = self._open_audio(backend.audio_input_format)
        self._interleaver = Interleaver(audio=audio is not None)
        try:
            self._camera = await asyncio.to_thread(self._open_camera, backend)
        except (RuntimeError, OSError, ValueError) as error:
            if audio is not None:
                audio.close()
            raise CameraError(
                f"cannot start the picamera2 camera at {self.settings.width}x"
                f"{self.settings.height} {self.settings.fps} fps: {error}; check the"
                " camera cable and `rpicam-hello --list-cameras`"
            ) from error
        if not await asyncio.to_thread(
            self._first_keyframe.wait, FIRST_KEYFRAME_TIMEOUT_S
        ):
            await self.stop()
            raise CameraError(
                f"the picamera2 camera delivered no key frame within"
                f" {FIRST_KEYFRAME_TIMEOUT_S:.0f} s; check the camera cable"
            )
        self._info = StreamInfo(
            video=VideoInfo(
                width=self.settings.width,
                height=self.settings.height,
                fps=self.settings.fps,
                extradata=self._extradata,
            ),
            audio=audio.info if audio is not None else None,
        )
        if audio is not None:
            self._audio = audio
            audio.start(self._started_at, self._on_packets)
        _log.info(
            "picamera2 camera started: %dx%d at %d fps, %s encoder, audio %s",
            self.settings.width,
            self.settings.height,
            self.settings.fps,
            "hardware" if backend.hardware_encoder is not None else "libx264",
            self.settings.audio,
        )

    async def _load_backend(self) -> Picamera2Backend:
        if self._import_error is None:
            try:
                return load_picamera2()
            except CameraError as error:
                self._import_error = error
        raise self._import_error

    def _open_audio(self, input_format: str) -> AlsaCapture | None:
        if self.settings.audio == "none":
            return None
        return AlsaCapture(
            self.settings.audio.removeprefix("alsa:"),
            self.settings.audio_rate,
            self.settings.audio_bitrate_kbps,
            input_format=input_format,
        )

    def _open_camera(self, backend: Picamera2Backend) -> Any:
        """Configure picamera2 and start it with the encoder (worker thread)."""
        # NOTE: tests run this against hardware.camera._picamera2_sim. Only a
        # real camera proves the hardware H264Encoder path, the stride the ISP
        # chooses and how well ALSA sound lines up with the sensor timestamps.
        settings = self.settings
        camera = backend.picamera2()
        try:
            configuration = camera.create_video_configuration(
                main={"size": (settings.width, settings.height), "format": "YUV420"},
                controls={"FrameRate": settings.fps},
            )
            camera.configure(configuration)
            camera.pre_callback = self._pre_callback(backend)
            encoder = self._make_encoder(backend)
            self._started_at = time.monotonic()
            camera.start_encoder(encoder, _packet_output(backend.output, self))
            camera.start()
        except BaseException:
            camera.close()
            raise
        return camera

    def _make_encoder(self, backend: Picamera2Backend) -> Any:
        settings = self.settings
        bitrate = settings.bitrate_kbps * 1000
        if backend.hardware_encoder is not None:
            return backend.hardware_encoder(
                bitrate=bitrate, repeat=True, iperiod=settings.gop_frames
            )
        encoder = backend.libav_encoder(
            bitrate=bitrate,
            repeat=True,
            iperiod=settings.gop_frames,
            framerate=settings.fps,
        )
        encoder.preset = settings.preset
        return encoder

    def _pre_callback(self, backend: Picamera2Backend) -> Any:
        width, height = self.settings.width, self.settings.height

        def draw_overlay(request: Any) -> None:
            if self.overlay is None:
                return
            seconds = time.monotonic() - self._started_at
            with backend.mapped_array(request, "main") as mapped:
                frame, padded = i420_view(mapped.array, width, height)
                try:
                    self.overlay(frame, seconds)
                except Exception:
                    # The frame goes out without the overlay. Failures are
                    # counted, and the first and every 1000th are logged.
                    errors = self.stats.extra["overlay_errors"] + 1
                    self.stats.extra["overlay_errors"] = errors
                    if errors == 1 or errors % 1000 == 0:
                        _log.exception("picamera2 overlay failed (%d times)", errors)
                    return
                if padded:
                    store_i420(frame, mapped.array, width, height)

        return draw_overlay

    def on_video(self, data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
        """Turn one encoded frame into a packet (picamera2's encoder thread)."""
        now = time.monotonic()
        if timestamp_us is None:
            timestamp_us = round((now - self._started_at) * _MICROSECONDS)
        if keyframe:
            if not self._extradata:
                self._extradata = parameter_sets(data)
            if not has_parameter_sets(data):
                data = self._extradata + data
        if not self._extradata:
            # Frames before the first key frame cannot be decoded on their own.
            return
        ticks = round(Fraction(timestamp_us, _MICROSECONDS) / VIDEO_TIME_BASE)
        packet = EncodedPacket(
            kind="video",
            data=data,
            pts=ticks,
            dts=ticks,
            duration=round(VIDEO_TIME_BASE.denominator / self.settings.fps),
            time_base=VIDEO_TIME_BASE,
            keyframe=keyframe,
            # The sensor timestamp's clock is not time.monotonic(), so the
            # capture time is estimated from the frame's offset since start.
            captured_at=self._started_at + timestamp_us / _MICROSECONDS,
            encoded_at=now,
        )
        self._window.record(packet)
        self._first_keyframe.set()
        self._on_packets([packet])

    def _on_packets(self, packets: list[EncodedPacket]) -> None:
        with self._interleave_lock:
            ready = self._interleaver.push(packets)
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or not ready:
            return
        loop.call_soon_threadsafe(self._enqueue, queue, ready)

    def _enqueue(
        self,
        queue: asyncio.Queue[EncodedPacket | CameraError | None],
        packets: list[EncodedPacket],
    ) -> None:
        for packet in packets:
            try:
                queue.put_nowait(packet)
            except asyncio.QueueFull:
                # The studio is not keeping up: drop rather than grow memory.
                if packet.kind == "video":
                    self.stats.dropped_frames += 1

    def on_error(self, error: CameraError) -> None:
        """Make ``packets`` raise ``error`` (any thread)."""
        loop, queue = self._loop, self._queue
        if loop is not None and queue is not None:
            loop.call_soon_threadsafe(queue.put_nowait, error)

    async def packets(self) -> AsyncIterator[EncodedPacket]:
        queue = self._queue
        if queue is None or self._camera is None:
            raise CameraError("the picamera2 camera is not started; call start()")
        while self._camera is not None:
            item = await queue.get()
            if isinstance(item, CameraError):
                raise item
            if item is None:
                return
            yield item

    async def stop(self) -> None:
        camera, self._camera = self._camera, None
        audio, self._audio = self._audio, None
        if self._queue is not None:
            # Wake a waiting ``packets`` so that it returns. A full queue
            # gives up its oldest packet for the wake-up.
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
        if audio is not None:
            await asyncio.to_thread(audio.close)
        if camera is None:
            return
        await asyncio.to_thread(_close_camera, camera)
        self._info = None
        _log.info("picamera2 camera stopped after %d frames", self.stats.frames)


def _close_camera(camera: Any) -> None:
    try:
        camera.stop_encoder()
        camera.stop()
    finally:
        camera.close()


def _packet_output(output_base: type, camera: Picamera2Camera) -> Any:
    """Return a picamera2 Output that forwards encoded frames to ``camera``."""

    class PacketOutput(output_base):
        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            # Audio comes from AlsaCapture, never from the video encoder.
            if audio or frame is None:
                return
            camera.on_video(bytes(frame), keyframe, timestamp)

    return PacketOutput()
