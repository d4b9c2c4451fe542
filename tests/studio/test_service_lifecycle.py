"""The studio's state while its HTTP server starts and stops, and stream stops.

The box publishes its status, with the studio's state in it, while the
studio serves HTTP or shuts down; every stage must return a state, with
``http_port`` None while no port is bound. A stream stopped while packets
flow stops at once, without the warning of a cancellation that was lost,
and its playlist ends.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from studio_site import SMALL_STUDIO, running_studio_box, wait_until

from appliance.clock import SystemClock, TimeSource
from appliance.runtime import Box
from appliance.studio._stream import StudioStream
from hardware.camera import CameraSettings, SimulatedCamera

pytestmark = pytest.mark.asyncio


class StatusPoller:
    """Reads the box's status at every turn of the event loop until stopped."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.states: list[dict[str, Any]] = []
        self._stop = False
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while not self._stop:
            self.states.append(self.box.status()["stream"])
            await asyncio.sleep(0)

    async def finish(self) -> list[dict[str, Any]]:
        """Stop polling; return the states read (raises what status() raised)."""
        self._stop = True
        await self._task
        states, self.states = self.states, []
        return states


async def test_state_while_http_starts_and_stops(tmp_path: Path) -> None:
    async with running_studio_box(tmp_path / "box") as sb:
        studio = sb.studio
        before = studio.state()

        poller = StatusPoller(sb.box)
        http = await studio.serve_http()
        while_starting = await poller.finish()
        port = http.port
        serving = studio.state()

        poller = StatusPoller(sb.box)
        await studio.stop()
        while_stopping = await poller.finish()
        stopped = studio.state()

    assert before["http_port"] is None
    assert while_starting
    assert {state["http_port"] for state in while_starting} == {None}
    assert serving["http_port"] == port
    assert while_stopping
    assert {state["http_port"] for state in while_stopping} <= {port, None}
    assert stopped["http_port"] is None
    assert stopped["running"] is False


async def test_stream_stops_while_packets_flow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = SMALL_STUDIO
    settings = CameraSettings(
        width=config.width,
        height=config.height,
        fps=config.fps,
        bitrate_kbps=config.bitrate_kbps,
        keyframe_interval_s=config.keyframe_interval_s,
        preset=config.preset,
        audio=config.audio,
    )
    # Not in real time: a packet is always ready, so a stop arrives as one does.
    camera = SimulatedCamera(settings, realtime=False)
    stream = StudioStream(
        config, settings, camera, tmp_path / "hls", SystemClock(TimeSource.NTP)
    )
    ended: list[bool] = []
    with caplog.at_level(logging.WARNING):
        for _ in range(8):
            stream.start()
            await wait_until(lambda: stream.source == "camera", "the camera")
            await wait_until(
                lambda: stream.hls is not None and not stream.hls.ended,
                "a live playlist",
            )
            await stream.stop()
            assert stream.hls is not None
            ended.append(stream.hls.playlist().endswith("#EXT-X-ENDLIST\n"))
        await stream.close()

    assert ended == [True] * 8
    assert not stream.running
    assert [record.getMessage() for record in caplog.records] == []
