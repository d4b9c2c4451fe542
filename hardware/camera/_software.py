"""Cameras that draw their frames in software: the simulator and the slate.

Both run the same loop: draw a frame, let the overlay draw on it, encode it
with libx264 in a worker thread, encode the matching stretch of sound with
AAC, and yield the packets in timestamp order. In real time the loop keeps
the camera's frame rate and skips frames it is too late for, as a real
camera drops them. Otherwise it runs as fast as the encoder allows, with
timestamps as if at the configured rate.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from hardware.camera._base import (
    Camera,
    CameraError,
    CameraSettings,
    EncodedPacket,
    Overlay,
    StreamInfo,
)
from hardware.camera._encoder import AacEncoder, H264Encoder
from hardware.camera._frames import FileSource, Frame, SlateCard, TestCard
from hardware.camera._interleave import Interleaver
from hardware.camera._stats import StatsWindow

_log = logging.getLogger(__name__)

TONE_HZ = 440.0
# A sine at a quarter of full scale, about -12 dBFS: audible, never clipping.
TONE_AMPLITUDE = 0.25
AUDIO_CHANNELS = 1
SLATE_MESSAGE = "Stream will be back"


class FrameSource(Protocol):
    """Something that draws raw frames for a software camera."""

    def frame(self, index: int, seconds: float) -> Frame:
        """Return frame number ``index``, captured ``seconds`` after start."""
        ...


class _Encoders:
    """The open encoders of one run of a software camera."""

    def __init__(self, settings: CameraSettings):
        self.video = H264Encoder(settings)
        self.audio = (
            AacEncoder(settings.audio_rate, AUDIO_CHANNELS, settings.audio_bitrate_kbps)
            if settings.audio != "none"
            else None
        )
        self.info = StreamInfo(
            video=self.video.info,
            audio=self.audio.info if self.audio is not None else None,
        )


class SoftwareCamera(Camera):
    """A camera whose frames come from a FrameSource, encoded with PyAV.

    ``packets`` may run in one task at a time. ``fail`` makes it raise
    CameraError at the next frame, and ``start`` keeps raising it until
    ``recover`` is called. ``stall`` makes it deliver nothing while it keeps
    running, until ``resume`` is called. ``skip_frames`` leaves frames out
    of the stream, as a camera that was late for them does, also when not
    in real time.
    """

    def __init__(
        self,
        settings: CameraSettings,
        overlay: Overlay | None = None,
        *,
        realtime: bool = True,
    ):
        super().__init__(settings, overlay)
        self.realtime = realtime
        self._window = StatsWindow(self.stats)
        self._encoders: _Encoders | None = None
        self._source: FrameSource | None = None
        # Held while a worker thread encodes, so stop() never closes an
        # encoder under it.
        self._encode_lock = threading.Lock()
        self._failure: str | None = None
        self._stalled = False
        self._frames_to_skip = 0
        self._started_at = 0.0
        self._next_frame = 0
        self._interleaver = Interleaver(audio=settings.audio != "none")
        self.stats.extra["overlay_errors"] = 0

    @property
    def info(self) -> StreamInfo:
        if self._encoders is None:
            raise CameraError(f"the {self.name} camera is not started; call start()")
        return self._encoders.info

    @property
    def running(self) -> bool:
        """True between a successful ``start`` and ``stop``."""
        return self._encoders is not None

    @abc.abstractmethod
    def _open_source(self) -> FrameSource:
        """Open the frame source of one run, or raise CameraError when it cannot."""

    @abc.abstractmethod
    def _audio_samples(self, first: int, count: int) -> npt.NDArray[np.float32]:
        """Return ``count`` samples of sound from capture sample ``first``."""

    async def start(self) -> None:
        if self._failure is not None:
            raise CameraError(
                f"the {self.name} camera has failed: {self._failure};"
                " the failure was injected for a test or rehearsal and lasts"
                " until it is cleared"
            )
        if self._encoders is not None:
            return
        source = self._open_source()
        try:
            self._encoders = await asyncio.to_thread(_Encoders, self.settings)
        except CameraError:
            _close_source(source)
            raise
        self._source = source
        self._window.reset()
        self._started_at = time.monotonic()
        self._next_frame = 0
        self._interleaver = Interleaver(audio=self.settings.audio != "none")
        _log.info(
            "%s camera started: %dx%d at %d fps, audio %s",
            self.name,
            self.settings.width,
            self.settings.height,
            self.settings.fps,
            self.settings.audio,
        )

    async def stop(self) -> None:
        if self._encoders is None:
            return
        await asyncio.to_thread(self._close)
        _log.info("%s camera stopped after %d frames", self.name, self.stats.frames)

    def _close(self) -> None:
        with self._encode_lock:
            self._encoders = None
            source = self._source
            self._source = None
        _close_source(source)

    def fail(self, message: str) -> None:
        """Make ``packets`` raise CameraError(message) soon, as a broken camera."""
        _log.warning("%s camera failure injected: %s", self.name, message)
        self._failure = message

    def recover(self) -> None:
        """Clear an injected failure, so the next ``start`` works."""
        self._failure = None

    def stall(self) -> None:
        """Stop delivering frames without an error, as a hung capture pipeline does.

        ``start`` and ``stop`` keep working, and ``packets`` waits without
        yielding until ``resume``. In real time the frames due meanwhile are
        skipped and counted as dropped; otherwise the next frame follows on.
        """
        _log.warning("%s camera stall injected", self.name)
        self._stalled = True

    def resume(self) -> None:
        """End an injected stall, so ``packets`` delivers frames again."""
        if self._stalled:
            _log.info("%s camera stall ended", self.name)
        self._stalled = False

    def skip_frames(self, count: int) -> None:
        """Leave the next ``count`` frames out, counted as dropped.

        The stream goes on from the frame after them, with a gap in its
        timestamps and its sound covering the gap, as after a short stall.
        """
        if count < 0:
            raise ValueError(f"cannot skip {count} frames: give 0 or more")
        self._frames_to_skip += count

    @property
    def stalled(self) -> bool:
        """True between ``stall`` and ``resume``."""
        return self._stalled

    async def packets(self) -> AsyncIterator[EncodedPacket]:
        while self._encoders is not None:
            if self._failure is not None:
                raise CameraError(f"the {self.name} camera failed: {self._failure}")
            if self._stalled:
                # A hung pipeline: the camera runs, but no frame arrives.
                await asyncio.sleep(1 / self.settings.fps)
                continue
            index = await self._wait_for_frame()
            if self._failure is not None or self._stalled:
                continue
            for packet in await asyncio.to_thread(self._produce, index):
                yield packet

    async def _wait_for_frame(self) -> int:
        """Return the next frame number to capture, in real time if set."""
        index = self._next_frame + self._frames_to_skip
        self.stats.dropped_frames += self._frames_to_skip
        self._frames_to_skip = 0
        if self.realtime:
            due = self._started_at + index / self.settings.fps
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                # Too late for this frame: capture the current one instead.
                current = math.floor(
                    (time.monotonic() - self._started_at) * self.settings.fps
                )
                if current > index:
                    self.stats.dropped_frames += current - index
                    index = current
        self._next_frame = index + 1
        return index

    def _produce(self, index: int) -> list[EncodedPacket]:
        """Draw, overlay and encode frame ``index`` with its sound (worker thread)."""
        with self._encode_lock:
            encoders, source = self._encoders, self._source
            if encoders is None or source is None:
                return []
            seconds = index / self.settings.fps
            captured_at = time.monotonic()
            frame = source.frame(index, seconds)
            self._draw_overlay(frame, seconds)
            video = encoders.video.encode(frame, index, captured_at)
            audio = (
                self._encode_audio(encoders.audio, index, captured_at)
                if encoders.audio is not None
                else []
            )
        for packet in video:
            self._window.record(packet)
        return self._interleaver.push(video + audio)

    def _draw_overlay(self, frame: Frame, seconds: float) -> None:
        if self.overlay is None:
            return
        try:
            self.overlay(frame, seconds)
        except Exception:
            # A broken overlay must not take the stream down: the frame goes
            # out without it, and the error is logged and counted.
            errors = self.stats.extra["overlay_errors"] + 1
            self.stats.extra["overlay_errors"] = errors
            if errors == 1 or errors % 1000 == 0:
                _log.exception(
                    "%s camera overlay failed (%d times so far); frames go out"
                    " without it",
                    self.name,
                    errors,
                )

    def _encode_audio(
        self, encoder: AacEncoder, index: int, captured_at: float
    ) -> list[EncodedPacket]:
        # Sound is captured up to the end of this frame's display time.
        until = (index + 1) * self.settings.audio_rate // self.settings.fps
        count = until - encoder.next_sample
        if count <= 0:
            return []
        samples = self._audio_samples(encoder.next_sample, count)
        return encoder.encode(samples, captured_at)


def _close_source(source: FrameSource | None) -> None:
    # Only a file source holds something to release.
    if isinstance(source, FileSource):
        source.close()


def tone_samples(first: int, count: int, sample_rate: int) -> npt.NDArray[np.float32]:
    """Return ``count`` samples of the test tone from sample ``first`` on."""
    positions = np.arange(first, first + count, dtype=np.float64)
    wave = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * positions / sample_rate)
    return wave.astype(np.float32).reshape(AUDIO_CHANNELS, count)


class SimulatedCamera(SoftwareCamera):
    """A camera for laptops, tests and rehearsals: a test card or a video file.

    ``source`` is a video file to play in a loop instead of the test card.
    ``audio`` in the settings is ``none`` or ``tone``; ``realtime=False``
    encodes as fast as it can, with timestamps as if at ``fps``.
    """

    name = "simulator"

    def __init__(
        self,
        settings: CameraSettings,
        overlay: Overlay | None = None,
        *,
        realtime: bool = True,
        source: Path | None = None,
    ):
        if settings.audio not in ("none", "tone"):
            raise ValueError(
                f"the simulator camera cannot record audio {settings.audio!r};"
                " use audio 'tone' or 'none'"
            )
        super().__init__(settings, overlay, realtime=realtime)
        self.source = source

    def _open_source(self) -> FrameSource:
        if self.source is not None:
            return FileSource(self.source, self.settings.width, self.settings.height)
        return TestCard(self.settings.width, self.settings.height)

    def _audio_samples(self, first: int, count: int) -> npt.NDArray[np.float32]:
        return tone_samples(first, count, self.settings.audio_rate)


class SlateCamera(SoftwareCamera):
    """A still card with a message, keeping the stream valid while a camera is down.

    It encodes with the same settings as the camera it replaces, so
    the stream keeps its size and rate. Its sound is the test tone for a
    simulated camera's ``tone`` and silence for a microphone, and it has no
    sound when the camera has none.
    """

    name = "slate"

    def __init__(
        self,
        settings: CameraSettings,
        message: str = SLATE_MESSAGE,
        *,
        realtime: bool = True,
    ):
        super().__init__(settings, None, realtime=realtime)
        self.message = message

    def _open_source(self) -> FrameSource:
        return SlateCard(self.settings.width, self.settings.height, self.message)

    def _audio_samples(self, first: int, count: int) -> npt.NDArray[np.float32]:
        if self.settings.audio == "tone":
            return tone_samples(first, count, self.settings.audio_rate)
        return np.zeros((AUDIO_CHANNELS, count), np.float32)
