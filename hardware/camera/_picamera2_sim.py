"""A stand-in for the parts of picamera2 that Picamera2Camera uses.

picamera2 imports libcamera's Python bindings as its package loads, and
only Raspberry Pi OS ships them, so off the Pi nothing of picamera2 can be
imported. This module copies the behaviour of picamera2 0.3 that the
camera relies on, so that ``Picamera2Camera`` runs unchanged on any host:

- ``Picamera2.create_video_configuration(main=..., controls=...)``,
  ``configure``, ``camera_configuration()["main"]`` with ``size``,
  ``format`` and ``stride``, and ``pre_callback`` called with each request
  before any encoder receives it.
- ``MappedArray(request, "main")`` as a context manager whose ``array`` is
  the writable YUV420 buffer of shape (height * 3 // 2, stride).
- ``start_encoder(encoder, output)`` sets the encoder's size, format and
  stride and starts it. ``LibavH264Encoder`` encodes with libx264 in
  PyAV, with microsecond timestamps from the first frame, SPS and PPS in
  band when ``repeat`` is set, and calls
  ``output.outputframe(bytes, keyframe, timestamp, packet, audio)``.

Frames are the simulator's test card, delivered at the configured rate by
a capture thread. ``stride`` pads rows as the Pi's ISP does, to a multiple
of 64 bytes for the luma plane.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from hardware.camera._frames import TestCard
from hardware.camera._picamera2 import (
    Picamera2Backend,
    i420_view,
    store_i420,
)

STRIDE_ALIGN = 64


class Request:
    """One captured frame, as picamera2's CompletedRequest carries it."""

    def __init__(self, buffer: npt.NDArray[np.uint8], sensor_timestamp_ns: int):
        self.buffer = buffer
        self.sensor_timestamp_ns = sensor_timestamp_ns


class MappedArray:
    """The writable array of a request's stream, as in picamera2.request."""

    def __init__(self, request: Request, stream: str):
        if stream != "main":
            raise RuntimeError(f"stream {stream!r} is not configured")
        self._request = request
        self.array: npt.NDArray[np.uint8] | None = None

    def __enter__(self) -> MappedArray:
        self.array = self._request.buffer
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.array = None


class Output:
    """picamera2.outputs.Output: receives what an encoder produces."""

    def __init__(self, pts: Any = None):
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """Receive one encoded frame; a subclass does something with it."""


class LibavH264Encoder:
    """picamera2.encoders.LibavH264Encoder: libx264, zero-latency tune."""

    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int = 30,
        framerate: float = 30,
        qp: int | None = None,
        profile: str | None = None,
    ):
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.preset: str | None = None
        self.output: Any = None
        self.width = 0
        self.height = 0
        self.stride = 0
        self.format = ""
        self._context: Any = None
        self._first_timestamp_ns: int | None = None
        self._lock = threading.Lock()

    def start(self, quality: Any = None) -> None:
        context = av.CodecContext.create("libx264", "w")
        context.width = self.width
        context.height = self.height
        context.pix_fmt = "yuv420p"
        context.time_base = Fraction(1, 1_000_000)
        context.framerate = Fraction(self.framerate).limit_denominator(1000)
        if self.bitrate is not None:
            context.bit_rate = self.bitrate
        context.gop_size = self.iperiod
        if not self.repeat:
            context.flags |= av.codec.context.Flags.global_header
        context.options = {
            "preset": self.preset or "ultrafast",
            "tune": "zerolatency",
            "deblock": "1",
        }
        context.open()
        self._context = context
        self._first_timestamp_ns = None
        if self.output is not None:
            self.output.start()

    def encode(self, stream: str, request: Request) -> None:
        with self._lock:
            if self._context is None:
                return
            if self._first_timestamp_ns is None:
                self._first_timestamp_ns = request.sensor_timestamp_ns
            timestamp_us = (
                request.sensor_timestamp_ns - self._first_timestamp_ns
            ) // 1000
            with MappedArray(request, stream) as mapped:
                if mapped.array is None:
                    raise RuntimeError("the request has no mapped buffer")
                i420, _padded = i420_view(mapped.array, self.width, self.height)
                frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = timestamp_us
            for packet in self._context.encode(frame):
                self.output.outputframe(
                    bytes(packet), packet.is_keyframe, packet.pts, packet, False
                )

    def stop(self) -> None:
        with self._lock:
            self._context = None
        if self.output is not None:
            self.output.stop()


class Picamera2:
    """picamera2.Picamera2, capturing the test card in a thread."""

    def __init__(self, camera_num: int = 0):
        self.pre_callback: Any = None
        self._configuration: dict[str, Any] | None = None
        self._encoders: list[Any] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.frames_captured = 0
        self.closed = False

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        main = {"format": "XBGR8888", "size": (1280, 720), **(main or {})}
        width, _height = main["size"]
        main["stride"] = -(-width // STRIDE_ALIGN) * STRIDE_ALIGN
        return {"main": main, "controls": {"FrameRate": 30, **(controls or {})}}

    def configure(self, configuration: dict[str, Any]) -> None:
        if configuration["main"]["format"] != "YUV420":
            raise RuntimeError(
                f"format {configuration['main']['format']} is not simulated"
            )
        self._configuration = configuration

    def camera_configuration(self) -> dict[str, Any]:
        if self._configuration is None:
            raise RuntimeError("Camera has not been configured")
        return self._configuration

    def start_encoder(self, encoder: Any, output: Any) -> None:
        main = self.camera_configuration()["main"]
        encoder.output = output
        encoder.width, encoder.height = main["size"]
        encoder.format = main["format"]
        encoder.stride = main["stride"]
        encoder.start()
        self._encoders.append(encoder)

    def stop_encoder(self) -> None:
        for encoder in self._encoders:
            encoder.stop()
        self._encoders = []

    def start(self) -> None:
        configuration = self.camera_configuration()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._capture, args=(configuration,), daemon=True
        )
        self._thread.start()

    def _capture(self, configuration: dict[str, Any]) -> None:
        width, height = configuration["main"]["size"]
        stride = configuration["main"]["stride"]
        fps = float(configuration["controls"]["FrameRate"])
        card = TestCard(width, height)
        started = time.monotonic()
        index = 0
        while not self._stopping.is_set():
            due = started + index / fps
            delay = due - time.monotonic()
            if delay > 0 and self._stopping.wait(delay):
                break
            buffer = _padded_buffer(card.frame(index, index / fps), stride)
            request = Request(buffer, time.monotonic_ns())
            if self.pre_callback is not None:
                self.pre_callback(request)
            for encoder in list(self._encoders):
                encoder.encode("main", request)
            self.frames_captured += 1
            index += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.closed = True


def _padded_buffer(frame: npt.NDArray[np.uint8], stride: int) -> npt.NDArray[np.uint8]:
    """Lay an I420 frame out with rows padded to ``stride``, as picamera2 maps it."""
    width = frame.shape[1]
    height = frame.shape[0] * 2 // 3
    buffer = np.zeros((height * 3 // 2, stride), np.uint8)
    store_i420(frame, buffer, width, height)
    return buffer


def simulated_picamera2(audio_input_format: str = "lavfi") -> Picamera2Backend:
    """Return a backend of these classes for Picamera2Camera.

    Sound opens through ``audio_input_format``: with ``lavfi`` a setting
    such as ``alsa:sine=frequency=440:sample_rate=48000`` gives a test tone
    through the same PyAV input path that an ALSA device takes.
    """
    return Picamera2Backend(
        picamera2=Picamera2,
        mapped_array=MappedArray,
        output=Output,
        libav_encoder=LibavH264Encoder,
        hardware_encoder=None,
        audio_input_format=audio_input_format,
    )
