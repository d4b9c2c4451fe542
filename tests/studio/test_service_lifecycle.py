"""The studio's state while its HTTP server starts and stops.

The box publishes its status, with the studio's state in it, while the
studio serves HTTP or shuts down; every stage must return a state, with
``http_port`` None while no port is bound.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from studio_site import running_studio_box

from appliance.runtime import Box

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
