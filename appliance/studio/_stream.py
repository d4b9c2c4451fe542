"""The studio's media path: camera or slate, one timeline, HLS, push, clip buffer.

:class:`StudioStream` runs the camera and feeds every packet, placed on one
continuous timeline, to the HLS writer, to the optional push and (camera
packets only) to the buffer that clips are cut from. When the camera fails
or sends nothing for ``slate_after_s``, a slate takes its place and the
camera is retried with back-off until it delivers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from appliance._tasks import cancel_and_wait
from appliance.clock import Clock
from appliance.studio._timeline import RateWindow, Timeline
from appliance.studio.config import StudioConfig
from appliance.studio.hls import HlsWriter
from appliance.studio.push import StreamPush
from appliance.studio.ring import PacketRing
from hardware.camera import (
    Camera,
    CameraError,
    CameraSettings,
    EncodedPacket,
    SlateCamera,
    StreamInfo,
)

_LOGGER = logging.getLogger(__name__)

# The camera is retried after this wait, doubled after each failed try up to
# RETRY_MAX_S. A permanent CameraError is not retried.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
# A stop waits this long for the camera to close (an encoder thread finishes
# its frame, the encoder is flushed) before cancelling again.
STOP_WAIT_S = 5.0
SLATE_MESSAGE = "Stream will be back"


class StudioStream:
    """The running stream of one camera, with its slate, outputs and buffer.

    ``down_since`` is the box time at which the camera failed, None while it
    delivers. ``ring_info`` describes the packets in ``ring``.
    """

    def __init__(
        self,
        config: StudioConfig,
        settings: CameraSettings,
        camera: Camera,
        hls_folder: Path,
        clock: Clock,
    ) -> None:
        self.config = config
        self.settings = settings
        self.camera = camera
        self.hls_folder = hls_folder
        self._clock = clock
        self.ring = PacketRing(config.clip_seconds)
        self.ring_info: StreamInfo | None = None
        self.hls: HlsWriter | None = None
        self.push: StreamPush | None = None
        self.source: str | None = None
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.counts: Counter[str] = Counter()
        self._timeline = Timeline()
        self._rates = RateWindow()
        self._slate_camera: SlateCamera | None = None
        self._task: asyncio.Task[None] | None = None
        self._slate_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the stream runs (on the camera or on the slate)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start streaming, leaving a stream that already runs as it is."""
        if self.running:
            return
        # Video from before a stop is not clipped as if it were live.
        self.ring = PacketRing(self.config.clip_seconds)
        self.ring_info = None
        self._task = asyncio.create_task(self._run(), name="studio-stream")
        _LOGGER.info("Stream started")

    async def stop(self) -> None:
        """Stop the camera or slate and end the HLS playlist.

        The playlist keeps its last segments and ends with EXT-X-ENDLIST,
        so players stop waiting for more; a new start goes on after a
        discontinuity.
        """
        task = self._task
        if task is None:
            return
        await _stop_task(task)
        self._task = None
        await self._stop_slate()
        if self.hls is not None:
            self.hls.end()
        self._rates.clear()
        self.source = None
        self.down_since = None
        _LOGGER.info("Stream stopped")

    async def close(self) -> None:
        """Stop the stream, the push and the HLS writer for good."""
        await self.stop()
        if self.push is not None:
            await asyncio.to_thread(self.push.close)
        if self.hls is not None:
            self.hls.close()

    def figures(self) -> dict[str, Any]:
        """Return the live rates and the frames the cameras dropped."""
        cameras = [self.camera, *([self._slate_camera] if self._slate_camera else [])]
        return {
            **self._rates.figures(),
            "dropped_frames": sum(camera.stats.dropped_frames for camera in cameras),
        }

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while True:
                try:
                    await self._run_camera()
                except CameraError as err:
                    self._camera_down(str(err))
                    if err.permanent:
                        # Nothing changes before a restart, so the slate
                        # stays on air until stop() cancels this task.
                        await asyncio.Event().wait()
                if self.down_since is None:
                    delay = RETRY_FIRST_S
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        finally:
            await self._stop_slate()
            await self.camera.stop()

    async def _run_camera(self) -> None:
        camera = self.camera
        await camera.start()
        packets = camera.packets()
        try:
            first = True
            while True:
                packet = await self._next_packet(packets)
                if first:
                    first = False
                    await self._stop_slate()
                    self._begin_run("camera", camera.info)
                self._feed(packet)
        finally:
            with contextlib.suppress(CameraError):
                await _close(packets)
            await camera.stop()

    async def _next_packet(
        self, packets: AsyncIterator[EncodedPacket]
    ) -> EncodedPacket:
        limit = self.config.slate_after_s
        try:
            # asyncio.timeout, not wait_for: with Python 3.11, wait_for drops
            # a cancellation that arrives as the packet does, so a stop of
            # the stream was ignored while packets kept coming.
            async with asyncio.timeout(limit):
                return await anext(packets)
        except StopAsyncIteration:
            raise CameraError("the camera stopped delivering frames") from None
        except TimeoutError:
            raise CameraError(f"no frame from the camera for {limit:g} s") from None

    def _camera_down(self, reason: str) -> None:
        self.counts["camera-failures"] += 1
        self.last_error = reason
        if self.down_since is None:
            self.down_since = self._clock.now()
            _LOGGER.warning("Camera down (%s); streaming the slate", reason)
        else:
            _LOGGER.info("Camera still down: %s", reason)
        if self._slate_task is None or self._slate_task.done():
            self._slate_task = asyncio.create_task(self._run_slate(), name="slate")

    async def _run_slate(self) -> None:
        slate = SlateCamera(self.settings, SLATE_MESSAGE)
        self._slate_camera = slate
        try:
            await slate.start()
            first = True
            async for packet in slate.packets():
                if first:
                    first = False
                    self._begin_run("slate", slate.info)
                self._feed(packet)
        except CameraError as err:
            self.counts["slate-failures"] += 1
            _LOGGER.error("The slate failed too, so the stream is down: %s", err)
        finally:
            await slate.stop()

    async def _stop_slate(self) -> None:
        await _stop_task(self._slate_task)
        self._slate_task = None

    def _begin_run(self, source: str, info: StreamInfo) -> None:
        if self.hls is None:
            self.hls = HlsWriter(
                self.hls_folder,
                info,
                segment_s=self.config.segment_s,
                part_s=self.config.part_s,
                window=self.config.hls_window,
                keyframe_interval_s=self.config.keyframe_interval_s,
            )
        else:
            self.hls.discontinuity()
        if self.push is None and self.config.push_url is not None:
            self.push = StreamPush(self.config.push_url, info)
        self._timeline.begin_run()
        if source == "camera":
            # A new encoder session may change its SPS and PPS, and a clip
            # must not span the slate, so the buffer starts over.
            self.ring = PacketRing(self.config.clip_seconds)
            self.ring_info = info
            if self.down_since is not None:
                _LOGGER.info("Camera back; the stream shows the camera again")
            self.down_since = None
        self.source = source

    def _feed(self, packet: EncodedPacket) -> None:
        placed = self._timeline.place(packet)
        if self.source == "camera":
            self.ring.append(placed)
        if self.hls is not None:
            self.hls.feed(placed)
        if self.push is not None:
            self.push.feed(placed)
        self._rates.record(placed)


async def _stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel the task of a camera or the slate and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    # Closing a camera takes a moment (an encoder thread finishes its frame,
    # the encoder is flushed), which is normal, so it is awaited first. The
    # repeated cancel, which warns, is for a cancellation that was lost.
    await asyncio.wait([task], timeout=STOP_WAIT_S)
    await cancel_and_wait(task)


async def _close(packets: AsyncIterator[EncodedPacket]) -> None:
    close = getattr(packets, "aclose", None)
    if close is not None:
        await close()
