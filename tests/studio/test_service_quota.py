"""The creator stations' share of the clips that wait for their upload.

One box streams the simulator at 320x180 without a sync link, so no clip
is uploaded unless a test records it. A creator station requests clips over
the studio's HTTP server until its share is used. After that, the panel
button, the console and the fleet must still cut clips.
"""

from __future__ import annotations

import aiohttp
import pytest
from studio_site import (
    SMALL_STUDIO,
    STATION,
    StudioBox,
    studio_box_fixture,  # noqa: F401 - registers the studio_box fixture
    wait_until,
)

from appliance.studio._actions import StudioError
from appliance.studio._store import ClipRecord

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTERVAL_S = SMALL_STUDIO.keyframe_interval_s


def ring_end(sb: StudioBox) -> float:
    """The end of the newest video in the clip buffer, in output seconds."""
    end = sb.studio.stream.ring.end_s
    return 0.0 if end is None else end


async def buffer_moves_on(sb: StudioBox) -> None:
    """Wait until the buffer contains a key frame interval of newer video."""
    start = ring_end(sb)
    await wait_until(
        lambda: ring_end(sb) >= start + INTERVAL_S, "a key frame interval of video"
    )


async def camera_streaming(sb: StudioBox) -> None:
    """Wait until the studio streams a second of camera video."""
    await wait_until(lambda: sb.studio.source == "camera", "the camera's stream")
    await wait_until(
        lambda: sb.studio.stream.ring.duration_s >= 1.0, "a second of camera video"
    )


async def clip_soon(sb: StudioBox, trigger: str) -> ClipRecord:
    """Cut a clip by ``trigger``, waiting for newer video after a ``too-soon``."""
    for _ in range(5):
        try:
            return await sb.studio.clip(trigger, f"clip by {trigger}")
        except StudioError as err:
            if err.code != "too-soon":
                raise
        await buffer_moves_on(sb)
    raise AssertionError(f"no {trigger} clip after five key frame intervals")


async def station_clip(
    session: aiohttp.ClientSession, sb: StudioBox
) -> tuple[int, dict[str, object]]:
    """Ask for a clip as the creator station does; return the status and body."""
    http = sb.studio.http
    assert http is not None
    async with session.post(
        f"http://127.0.0.1:{http.port}/stream/control/clip",
        headers={"Authorization": f"Bearer {sb.token(STATION, 'stream:publish')}"},
        json={"note": "from the station"},
    ) as response:
        return response.status, await response.json()


async def test_station_share_leaves_room(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    share = studio.clips.request_limit
    await camera_streaming(sb)
    replies: list[tuple[int, dict[str, object]]] = []
    async with aiohttp.ClientSession() as session:
        # Each accepted clip needs newer video; one more than the share.
        while len([r for r in replies if r[0] == 200]) <= share:
            await buffer_moves_on(sb)
            status, body = await station_clip(session, sb)
            replies.append((status, body))
            if body.get("error") not in (None, "too-soon"):
                break
        waiting_requests = studio.clips.waiting("request")
        others = [await clip_soon(sb, t) for t in ("button", "console", "command")]
        others_on_disk = [clip.path.exists() for clip in others]
        # Once the fleet has the station's clips, the station has room again.
        for clip in studio.clips.pending_uploads():
            assert studio.clips.mark_uploaded(clip.id)
        await buffer_moves_on(sb)
        after_upload = await station_clip(session, sb)

    accepted = [body for status, body in replies if status == 200]
    refused_status, refusal = replies[-1]
    message = str(refusal["message"])
    assert len(accepted) == share
    assert refused_status == 409
    assert refusal["error"] == "clips-full"
    assert f"studio.clips_keep = {SMALL_STUDIO.clips_keep}" in message
    assert "creator stations" in message
    assert "[sync]" in message
    assert waiting_requests == share
    assert [clip.trigger for clip in others] == ["button", "console", "command"]
    assert others_on_disk == [True, True, True]
    assert after_upload[0] == 200
    assert studio.state()["refused"]["clip-clips-full"] >= 1
