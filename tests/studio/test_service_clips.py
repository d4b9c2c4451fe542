"""Clip limits on a running box: repeats, full disks, short buffers, bad fields.

One box streams the simulator at 320x180 for the whole module; creator
stations reach it over a real mosquitto and over the studio's HTTP server.
The start-up check of the clips folder runs on boxes of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from studio_site import (
    LATER_DROP,
    SMALL_STUDIO,
    STATION,
    StudioBox,
    request,
    running_studio_box,
    studio_box_fixture,  # noqa: F401 - registers the studio_box fixture
    wait_until,
)

from appliance.errors import RequestError
from appliance.studio._actions import StudioError
from appliance.studio._store import ClipRecord
from appliance.studio.clips import write_clip
from tests.studio.packets import stream_packets

pytestmark = pytest.mark.asyncio(loop_scope="module")

PUBLISH = "stream:publish"
INTERVAL_S = SMALL_STUDIO.keyframe_interval_s
FRAME_S = 1 / SMALL_STUDIO.fps
LOOP = 20


def ring_end(sb: StudioBox) -> float:
    """The end of the newest video in the clip buffer, in output seconds."""
    end = sb.studio.stream.ring.end_s
    return 0.0 if end is None else end


async def camera_streaming(sb: StudioBox) -> None:
    """Wait until the studio streams a second of camera video."""
    await wait_until(lambda: sb.studio.source == "camera", "the camera's stream")
    await wait_until(
        lambda: sb.studio.stream.ring.duration_s >= 1.0, "a second of camera video"
    )


async def buffer_moves_on(sb: StudioBox) -> None:
    """Wait until the buffer contains a key frame interval of newer video."""
    start = ring_end(sb)
    await wait_until(
        lambda: ring_end(sb) >= start + INTERVAL_S, "a key frame interval of video"
    )


def upload_all(sb: StudioBox) -> None:
    """Record every waiting clip as uploaded, as sync does once the fleet has it."""
    for clip in sb.studio.clips.pending_uploads():
        assert sb.studio.clips.mark_uploaded(clip.id)


async def refused(
    bus_call: Any, service: str, action: str, data: dict[str, Any]
) -> RequestError:
    """Await a request that must fail and return its error."""
    try:
        reply = await bus_call(service, action, data)
    except RequestError as err:
        return err
    raise AssertionError(f"{service}/{action} succeeded: {reply}")


async def test_request_loop_keeps_first_clip(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    upload_all(sb)
    await buffer_moves_on(sb)
    token = sb.token(STATION, PUBLISH)
    accepted: list[str] = []
    refusals: list[RequestError] = []
    async with sb.client(f"terminal-{STATION}", "terminal", STATION) as bus:
        before = ring_end(sb)
        first = await request(bus, "studio", "clip", {"note": "first"}, token)
        for _ in range(LOOP):
            try:
                reply = await request(bus, "studio", "clip", {}, token)
            except RequestError as err:
                refusals.append(err)
            else:
                accepted.append(reply["clip"])
        after = ring_end(sb)
    await studio.wait_for_clips()
    kept = studio.clips.find(first["clip"])

    # Each further clip needs a key frame interval of newer video.
    assert len(accepted) <= (after - before) / INTERVAL_S
    assert {err.code for err in refusals} <= {"too-soon", "busy"}
    too_soon = [err for err in refusals if err.code == "too-soon"]
    assert too_soon
    assert any(first["clip"] in err.message for err in too_soon)
    assert kept is not None
    assert kept.note == "first"
    assert kept.path.exists()
    assert kept in studio.clips.pending_uploads()
    assert studio.state()["refused"]["clip-too-soon"] >= len(too_soon)


async def test_http_clip_loop_refused(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    upload_all(sb)
    await buffer_moves_on(sb)
    http = studio.http
    assert http is not None
    url = f"http://127.0.0.1:{http.port}/stream/control/clip"
    headers = {"Authorization": f"Bearer {sb.token(STATION, PUBLISH)}"}
    replies: list[tuple[int, dict[str, Any]]] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        before = ring_end(sb)
        for _ in range(LOOP):
            async with session.post(url, json={}) as response:
                replies.append((response.status, await response.json()))
        after = ring_end(sb)

    written = [body for status, body in replies if status == 200]
    repeats = [body for status, body in replies if status == 409]
    assert written
    assert len(written) <= 1 + (after - before) / INTERVAL_S
    assert len(written) + len(repeats) == LOOP
    assert all("contains the same video" in body["message"] for body in repeats)


async def test_too_soon_is_per_trigger(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    upload_all(sb)
    await buffer_moves_on(sb)

    button = studio.begin_clip("button", "first press")
    with pytest.raises(StudioError) as repeat:
        studio.begin_clip("button", "stuck button")
    console = studio.begin_clip("console")
    set_end = studio.begin_clip("set-end", "end of set maya-live", set_id="maya-live")
    records = await asyncio.gather(button.task, console.task, set_end.task)
    await buffer_moves_on(sb)
    later = await studio.clip("button", "pressed again")

    assert repeat.value.code == "too-soon"
    assert button.id in repeat.value.message
    assert [record.trigger for record in records] == ["button", "console", "set-end"]
    assert later.trigger == "button"
    assert later.path.exists()


async def fill_clips(sb: StudioBox) -> tuple[list[ClipRecord], StudioError]:
    """Cut clips from every trigger until one is refused for another reason."""
    written: list[ClipRecord] = []
    triggers = itertools.cycle(("button", "command", "console", "request"))
    for _ in range(sb.studio.clips.limit * 4):
        try:
            written.append(await sb.studio.clip(next(triggers)))
        except StudioError as err:
            if err.code != "too-soon":
                return written, err
            await buffer_moves_on(sb)
    raise AssertionError(f"{len(written)} clips written and none refused")


async def test_waiting_clips_are_never_removed(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    clips = studio.clips
    keep = SMALL_STUDIO.clips_keep
    await camera_streaming(sb)
    upload_all(sb)
    set_end = await studio.clip("set-end", "end of set maya-live", set_id="maya-live")

    written, full = await fill_clips(sb)
    waiting_when_full = clips.on_disk(set_end=False, waiting=True)
    waiting = {clip.id for clip in clips.pending_uploads()}
    files_when_full = [record.path.exists() for record in written]
    state = studio.state()
    last_set_end = await studio.clip("set-end", "end of set x", set_id="maya-live")
    upload_all(sb)
    await buffer_moves_on(sb)
    after_upload = await studio.clip("request")

    assert full.code == "clips-full"
    assert "studio.clips_keep" in full.message
    assert "[sync]" in full.message
    assert state["refused"]["clip-clips-full"] >= 1
    assert waiting_when_full == clips.limit
    assert len(written) > keep
    assert all(files_when_full)
    assert {record.id for record in written} <= waiting
    assert last_set_end.path.exists()
    assert after_upload.path.exists()
    # Once uploaded, only the newest clips_keep stay; set-end clips apart.
    assert clips.on_disk(set_end=False) == keep
    assert set_end.path.exists()
    assert clips.on_disk(set_end=True) >= 2


async def clip_when_ready(sb: StudioBox) -> tuple[ClipRecord, list[StudioError]]:
    """Ask for a console clip until the studio writes one; return it and refusals."""
    refusals: list[StudioError] = []
    for _ in range(1000):
        try:
            return await sb.studio.clip("console"), refusals
        except StudioError as err:
            refusals.append(err)
        await asyncio.sleep(0.01)
    raise AssertionError(f"no clip after {len(refusals)} tries: {refusals[-1]}")


async def test_clip_after_restart_holds_keyframe_interval(
    studio_box: StudioBox,
) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    upload_all(sb)

    await studio.stop_stream()
    await studio.start_stream()
    record, refusals = await clip_when_ready(sb)

    assert refusals
    assert {err.code for err in refusals} == {"no-video"}
    assert "key frame interval" in refusals[0].message
    assert record.duration_s >= INTERVAL_S - FRAME_S / 2


async def test_clip_after_slate_holds_keyframe_interval(
    studio_box: StudioBox,
) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    upload_all(sb)

    studio.camera.fail("lens cap on")
    await wait_until(lambda: studio.source == "slate", "the slate")
    studio.camera.recover()
    await wait_until(lambda: studio.source == "camera", "the camera again")
    record, refusals = await clip_when_ready(sb)

    assert {err.code for err in refusals} <= {"no-video", "camera-down"}
    assert record.duration_s >= INTERVAL_S - FRAME_S / 2


async def test_unknown_fields_rejected_on_the_bus(studio_box: StudioBox) -> None:
    sb = studio_box
    token = sb.token(STATION, PUBLISH)
    async with sb.client(f"terminal-{STATION}", "terminal", STATION) as bus:

        async def call(service: str, action: str, data: dict[str, Any]) -> Any:
            return await request(bus, service, action, data, token)

        clip = await refused(call, "studio", "clip", {"note": "x", "evil": 1})
        drop = await refused(
            call, "studio", "drop-open", {"drop": LATER_DROP, "when": "now"}
        )
        overlay = await refused(
            call, "studio", "overlay", {"message": "hi", "colour": "red"}
        )
        both = await refused(call, "studio", "overlay", {"message": "hi", "hide": True})

    for error, field in ((clip, "'evil'"), (drop, "'when'"), (overlay, "'colour'")):
        assert error.code == "invalid-request"
        assert field in error.message
    assert "takes note" in clip.message
    assert both.code == "invalid-request"
    assert "contradict" in both.message
    assert sb.studio.message is None
    state = sb.box.store.query_one(
        "SELECT state FROM drops WHERE id = ?", (LATER_DROP,)
    )
    assert state == ("scheduled",)


async def test_unknown_fields_rejected_over_http(studio_box: StudioBox) -> None:
    sb = studio_box
    http = sb.studio.http
    assert http is not None
    base = f"http://127.0.0.1:{http.port}/stream/control"
    headers = {"Authorization": f"Bearer {sb.token(STATION, PUBLISH)}"}
    bodies = {
        "clip": {"note": "x", "evil": 1},
        "stop": {"force": True},
        "drop-open": {"drop": LATER_DROP, "when": "now"},
        "overlay": {"message": "hi", "hide": True},
    }
    replies: dict[str, tuple[int, str]] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for action, body in bodies.items():
            async with session.post(f"{base}/{action}", json=body) as response:
                replies[action] = (response.status, (await response.json())["message"])

    assert {status for status, _message in replies.values()} == {400}
    assert "'evil'" in replies["clip"][1]
    assert "'force'" in replies["stop"][1]
    assert "stop takes no fields" in replies["stop"][1]
    assert "'when'" in replies["drop-open"][1]
    assert "contradict" in replies["overlay"][1]
    assert sb.studio.running
    assert sb.studio.message is None


async def test_clips_folder_checked_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "box"
    folder = data_dir / "studio" / "clips"
    folder.mkdir(parents=True)
    info, packets = stream_packets(3.0)
    whole = write_clip(packets, info, folder / f"{uuid.uuid4().hex}.mp4")
    data = whole.path.read_bytes()
    partial = folder / f".{uuid.uuid4().hex}.mp4.partial"
    partial.write_bytes(data[:5000])
    cut = folder / f"{uuid.uuid4().hex}.mp4"
    cut.write_bytes(data[: len(data) // 2])
    foreign = folder / "holiday.mp4"
    foreign.write_bytes(b"an operator's own file")

    async with running_studio_box(data_dir) as sb:
        studio = sb.studio
        recovered = studio.clips.find(whole.path.stem)
        pending = studio.clips.pending_uploads()
        first_check = studio.state()["clips_folder"]
        events = sb.box.store.query(
            "SELECT body FROM outbox WHERE type = 'clip_written'"
        )
        await camera_streaming(sb)
        lost = await studio.clip("console")
        # The box stops after recording a removal and before deleting the file.
        studio.clips.mark_removed([whole.path.stem])
    lost.path.unlink()

    async with running_studio_box(data_dir) as sb:
        second_check = sb.studio.state()["clips_folder"]
        lost_after = sb.studio.clips.find(lost.id)
        waiting_after = sb.studio.clips.pending_uploads()

    assert recovered is not None
    assert recovered.trigger == "recovered"
    assert recovered.sha256 == whole.sha256
    assert recovered.size == whole.size
    assert recovered.duration_s == pytest.approx(whole.duration_s, abs=FRAME_S)
    assert recovered.set_id == "maya-live"
    assert recovered in pending
    assert any(recovered.id in body for (body,) in events)
    assert not partial.exists()
    assert not cut.exists()
    assert foreign.exists()
    assert first_check == {"partial": 1, "unreadable": 1, "foreign": 1, "recovered": 1}
    assert not whole.path.exists()
    assert second_check == {"removed": 1, "missing": 1, "foreign": 1}
    assert lost_after is not None
    assert lost_after.id not in {clip.id for clip in waiting_after}
