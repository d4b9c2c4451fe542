"""Set-end clips, the console overview's ``stream``, and a box without a studio."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ClientFactory
from studio_site import request, running_studio_box, wait_until

from appliance.commerce.config import SetSlot
from appliance.errors import RequestError
from appliance.runtime import Box

# Long enough for the camera to fill a few seconds of the clip buffer.
OPENER_LEFT_S = 4.0


async def test_set_end_writes_clip(tmp_path: Path) -> None:
    now = time.time()
    sets = (
        SetSlot("opener", "maya", now - 600, now + OPENER_LEFT_S),
        SetSlot("headliner", "leo", now + OPENER_LEFT_S, now + 3600),
    )
    async with running_studio_box(tmp_path / "box", sets=sets) as sb:
        clips = sb.studio.clips
        await wait_until(lambda: clips.latest() is not None, "the set-end clip")
        record = clips.latest()
        async with sb.client("terminal-console", "terminal", "console") as console:
            overview = await console.request(
                console.topics.api("console", "overview"), {}, timeout_s=10
            )
        playing = sb.studio.state()["set"]

    assert record is not None
    assert record.trigger == "set-end"
    assert record.set_id == "opener"
    assert record.note == "end of set opener"
    assert record.path.exists()
    assert overview["stream"]["camera"] == "simulator"
    assert overview["stream"]["last_clip"]["id"] == record.id
    assert playing == {"id": "headliner", "creator": "leo"}


async def test_no_studio_console_rejects(box: Box, make_client: ClientFactory) -> None:
    admin = box.tokens.issue("console", ["console:admin"], 600.0).token
    async with make_client("terminal-console", "terminal", "console") as console:
        overview = await console.request(
            console.topics.api("console", "overview"), {}, timeout_s=10
        )
        with pytest.raises(RequestError) as raised:
            await request(console, "console", "stream-start", {}, admin)

    assert overview["stream"] is None
    assert box.studio is None
    assert raised.value.code == "no-studio"
    assert "[studio]" in raised.value.message
    assert box.status()["stream"] is None
