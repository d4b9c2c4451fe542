"""The studio on a running box: stream, clips, requests, console actions, slate.

One box streams the simulator at 320x180 for the whole module. Creator
stations, the console and the operator talk to it over a real mosquitto;
clips and HLS segments are checked with ffprobe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from ffprobe import decode_errors, probe, probe_bytes
from studio_site import (
    LATER_DROP,
    OPEN_DROP,
    OTHER_DROP,
    STATION,
    TIMEOUT_S,
    StudioBox,
    request,
    studio_box_fixture,  # noqa: F401 - registers the studio_box fixture
    wait_until,
)

from appliance.bus.client import Incoming
from appliance.errors import RequestError
from appliance.signed_documents import sign_document
from appliance.studio._http_playlist import playlist_position
from appliance.studio._store import ClipRecord

pytestmark = pytest.mark.asyncio(loop_scope="module")

PUBLISH = "stream:publish"


async def refused(
    sb: StudioBox, service: str, action: str, data: dict[str, Any], token: str | None
) -> RequestError:
    """Send a station's request that must fail and return its error."""
    async with sb.client(f"terminal-{STATION}", "terminal", STATION) as bus:
        try:
            reply = await request(bus, service, action, data, token)
        except RequestError as err:
            return err
    raise AssertionError(f"{service}/{action} succeeded: {reply}")


async def station_call(
    sb: StudioBox, action: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Send ``api/studio/<action>`` from the creator station with its token."""
    async with sb.client(f"terminal-{STATION}", "terminal", STATION) as bus:
        return await request(bus, "studio", action, data, sb.token(STATION, PUBLISH))


async def stored_clip(sb: StudioBox, clip_id: str) -> ClipRecord:
    """Wait until clip ``clip_id`` is in the store and return it."""
    await wait_until(lambda: sb.studio.clips.find(clip_id) is not None, "the clip")
    record = sb.studio.clips.find(clip_id)
    assert record is not None
    return record


async def camera_streaming(sb: StudioBox) -> None:
    """Wait until the studio streams from the camera again."""
    await wait_until(lambda: sb.studio.source == "camera", "the camera's stream")
    await wait_until(
        lambda: sb.studio.stream.ring.duration_s >= 1.0, "a second of camera video"
    )


async def test_stream_state_published(studio_box: StudioBox) -> None:
    sb = studio_box
    await camera_streaming(sb)
    await wait_until(
        lambda: sb.studio.state()["segments_written"] >= 2, "two HLS segments"
    )
    states: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_state(incoming: Incoming) -> None:
        states.put_nowait(orjson.loads(incoming.payload)["data"])

    async with sb.client("terminal-console", "terminal", "console") as console:
        console.subscribe(console.topics.stream_state(sb.config.box_id), on_state)
        state = await asyncio.wait_for(states.get(), TIMEOUT_S)

    assert state["running"] is True
    assert state["source"] == "camera"
    assert state["size"] == "320x180"
    assert state["fps"] > 0
    assert state["bitrate_kbps"] > 0
    assert state["set"] == {"id": "maya-live", "creator": "maya"}
    assert sb.box.status()["stream"]["camera"] == "simulator"


async def test_state_publishing_survives_a_failure(
    studio_box: StudioBox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = studio_box
    studio = sb.studio
    states: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_state(incoming: Incoming) -> None:
        states.put_nowait(orjson.loads(incoming.payload)["data"])

    async def next_state(message: str) -> dict[str, Any]:
        while True:
            state = await asyncio.wait_for(states.get(), TIMEOUT_S)
            if state["message"] == message:
                return state

    async with sb.client("terminal-console", "terminal", "console") as console:
        console.subscribe(console.topics.stream_state(sb.config.box_id), on_state)
        with caplog.at_level(logging.WARNING, logger="appliance.studio.service"):
            # A lone surrogate cannot be encoded as UTF-8, so the state with
            # it in cannot be published. Requests reject such text; the
            # studio's own call gets it through.
            studio.show_message("\udfff")
            await wait_until(
                lambda: studio.counts["state-failures"] >= 2, "two failed publishes"
            )
            studio.show_message("back on air")
            state = await next_state("back on air")
        studio.show_message(None)

    failures = [
        record for record in caplog.records if "stream state" in record.getMessage()
    ]
    assert state["running"] is True
    assert len(failures) == 1
    assert failures[0].exc_info is not None


async def test_stream_served_over_http(studio_box: StudioBox) -> None:
    sb = studio_box
    await camera_streaming(sb)
    http = sb.studio.http
    assert http is not None
    url = f"http://127.0.0.1:{http.port}/stream/live.m3u8"
    viewer = sb.token("viewer-1", "stream:view")

    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"token": viewer}) as response:
            playlist = await response.text()
            status = response.status
        async with session.get(url) as anonymous:
            anonymous_status = anonymous.status

    assert status == 200
    assert playlist.startswith("#EXTM3U")
    assert anonymous_status == 401


def segment_names(playlist: str) -> list[str]:
    """Return the finished segments a playlist lists, oldest first."""
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


async def test_stopped_stream_ends_playlist(
    studio_box: StudioBox, caplog: pytest.LogCaptureFixture
) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    await wait_until(lambda: studio.state()["segments_written"] >= 2, "two segments")
    http = studio.http
    assert http is not None
    base = f"http://127.0.0.1:{http.port}/stream"
    station = {"Authorization": f"Bearer {sb.token(STATION, PUBLISH)}"}
    viewer = {"Authorization": f"Bearer {sb.token('viewer-1', 'stream:view')}"}

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/health") as response:
            live_health = response.status
        with caplog.at_level(logging.WARNING):
            async with session.post(
                f"{base}/control/stop", headers=station, json={}
            ) as response:
                stopped = await response.json()
        async with session.get(f"{base}/health") as response:
            stopped_health = (response.status, await response.json())
        async with session.get(f"{base}/live.m3u8", headers=viewer) as response:
            ended = await response.text()
        next_msn = playlist_position(ended).open_msn
        async with session.get(
            f"{base}/live.m3u8", headers=viewer, params={"_HLS_msn": str(next_msn)}
        ) as response:
            blocked = (response.status, await response.text())
        last = segment_names(ended)[-1]
        async with session.get(f"{base}/{last}", headers=viewer) as response:
            last_segment = await response.read()
        written = studio.state()["segments_written"]
        async with session.post(
            f"{base}/control/start", headers=station, json={}
        ) as response:
            assert response.status == 200
        await camera_streaming(sb)
        await wait_until(
            lambda: studio.state()["segments_written"] > written, "a new segment"
        )
        async with session.get(f"{base}/health") as response:
            resumed_health = response.status
        async with session.get(f"{base}/live.m3u8", headers=viewer) as response:
            resumed = await response.text()

    stop_warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert live_health == 200
    assert stopped["result"] == {"running": False}
    assert stopped_health == (503, {"ok": False, "reason": "stopped"})
    assert ended.endswith("#EXT-X-ENDLIST\n")
    assert "#EXT-X-PRELOAD-HINT" not in ended
    # A blocking reload of an ended playlist gets it at once.
    assert blocked == (200, ended)
    assert probe_bytes(last_segment, ".ts").packets_of("video")
    assert stop_warnings == []
    assert resumed_health == 200
    assert "#EXT-X-ENDLIST" not in resumed
    assert "#EXT-X-DISCONTINUITY" in resumed
    assert playlist_position(resumed).open_msn > next_msn


async def test_clip_request_writes_clip(studio_box: StudioBox) -> None:
    sb = studio_box
    await camera_streaming(sb)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(incoming: Incoming) -> None:
        events.put_nowait(orjson.loads(incoming.payload)["data"])

    async with sb.client("observer", "observer", "studio-test") as observer:
        observer.subscribe(observer.topics.event("clip_written"), on_event)
        reply = await station_call(sb, "clip", {"note": "encore"})
        event = await asyncio.wait_for(events.get(), TIMEOUT_S)
    record = await stored_clip(sb, reply["clip"])

    assert reply["state"] == "writing"
    assert record.trigger == "request"
    assert record.note == "encore"
    assert record.set_id == "maya-live"
    assert hashlib.sha256(record.path.read_bytes()).hexdigest() == record.sha256
    assert record.path.stat().st_size == record.size
    assert event["id"] == record.id
    assert event["sha256"] == record.sha256
    assert "path" not in event
    assert record in sb.studio.clips.pending_uploads()
    clip = probe(record.path)
    assert clip.has_stream("video")
    assert clip.has_stream("audio")
    assert clip.packets_of("video")[0]["keyframe"]
    assert clip.duration_s >= 1.0
    assert decode_errors(record.path) == ""


async def test_uploaded_clip_leaves_queue(studio_box: StudioBox) -> None:
    sb = studio_box
    await camera_streaming(sb)
    record = await sb.studio.clip("console")

    assert sb.studio.clips.mark_uploaded(record.id) is True
    assert record.id not in {clip.id for clip in sb.studio.clips.pending_uploads()}
    assert sb.studio.clips.mark_uploaded("no-such-clip") is False


async def test_clip_request_needs_publish_scope(studio_box: StudioBox) -> None:
    sb = studio_box
    without = await refused(sb, "studio", "clip", {}, None)
    viewer = await refused(sb, "studio", "clip", {}, sb.token(STATION, "stream:view"))

    assert without.code == "token-missing"
    assert viewer.code == "token-wrong-scope"


async def test_clip_note_invalid(studio_box: StudioBox) -> None:
    token = studio_box.token(STATION, PUBLISH)
    error = await refused(studio_box, "studio", "clip", {"note": 7}, token)

    assert error.code == "invalid-request"
    assert "field 'note'" in error.message


async def test_overlay_request(studio_box: StudioBox) -> None:
    sb = studio_box
    shown = await station_call(sb, "overlay", {"message": "Last call at the bar"})
    message_while_shown = sb.studio.message
    hidden = await station_call(sb, "overlay", {"hide": True})
    token = sb.token(STATION, PUBLISH)
    control = await refused(sb, "studio", "overlay", {"message": "a\x1bb"}, token)

    assert shown == {
        "message": "Last call at the bar",
        "display": "shown",
        "lines": ["Last call at the bar"],
    }
    assert message_while_shown == "Last call at the bar"
    assert hidden == {"message": None, "display": "hidden", "lines": []}
    assert sb.studio.message is None
    assert control.code == "invalid-request"
    assert "U+001B" in control.message


async def test_overlay_reply_shortened_message(
    studio_box: StudioBox,
) -> None:
    message = "W" * 120
    reply = await station_call(studio_box, "overlay", {"message": message})

    assert reply["message"] == message
    assert reply["display"] == "shortened"
    assert 1 <= len(reply["lines"]) <= 2
    assert reply["lines"][-1].endswith("\u2026")
    assert len("".join(reply["lines"])) < len(message)


async def test_drop_open_request(studio_box: StudioBox) -> None:
    sb = studio_box
    token = sb.token(STATION, PUBLISH)
    opened = await station_call(sb, "drop-open", {"drop": LATER_DROP})
    state = sb.box.store.query_one(
        "SELECT state FROM drops WHERE id = ?", (LATER_DROP,)
    )
    again = await refused(sb, "studio", "drop-open", {"drop": LATER_DROP}, token)
    scheduled_open = await refused(
        sb, "studio", "drop-open", {"drop": OPEN_DROP}, token
    )
    other = await refused(sb, "studio", "drop-open", {"drop": OTHER_DROP}, token)
    unknown = await refused(sb, "studio", "drop-open", {"drop": "nope"}, token)

    assert opened == {"drop": LATER_DROP, "state": "live"}
    assert state == ("live",)
    assert again.code == "already-open"
    assert scheduled_open.code == "already-open"
    assert other.code == "not-set-creator"
    assert "leo" in other.message
    assert unknown.code == "invalid-request"
    assert "'nope'" in unknown.message


async def test_console_stream_actions(studio_box: StudioBox) -> None:
    sb = studio_box
    await camera_streaming(sb)
    admin = sb.box.tokens.issue("console", ["console:admin"], 600.0).token
    async with sb.client("terminal-console", "terminal", "console") as console:
        stopping = await request(console, "console", "stream-stop", {}, admin)
        await wait_until(lambda: not sb.studio.running, "the stream to stop")
        try:
            await request(console, "console", "stream-clip", {}, admin)
        except RequestError as err:
            stopped_clip = err
        starting = await request(console, "console", "stream-start", {}, admin)
        await camera_streaming(sb)
        clip = await request(console, "console", "stream-clip", {}, admin)
    record = await stored_clip(sb, clip["clip"])

    assert stopping["state"] == "stopping"
    assert stopped_clip.code == "stream-stopped"
    assert starting["state"] == "starting"
    assert record.trigger == "console"


async def test_clip_command_signed(studio_box: StudioBox) -> None:
    sb = studio_box
    await camera_streaming(sb)
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_result(incoming: Incoming) -> None:
        results.put_nowait(orjson.loads(incoming.payload)["data"])

    def command(body: dict[str, Any]) -> bytes:
        document = sign_document(
            sb.operator_key,
            kind="command",
            document_type="clip",
            site=sb.config.site_id,
            body={**body, "box": sb.config.box_id},
            issued_at=time.time(),
            validity_s=300.0,
        )
        return orjson.dumps(document)

    async with sb.client("operator", "operator", "ops") as operator:
        operator.subscribe(operator.topics.command_result(sb.config.box_id), on_result)
        await asyncio.sleep(0.2)
        topic = operator.topics.command(sb.config.box_id, "clip")
        await operator.publish(topic, command({"note": "from the fleet"}))
        done = await asyncio.wait_for(results.get(), TIMEOUT_S)
        await operator.publish(topic, command({"length": 5}))
        rejected = await asyncio.wait_for(results.get(), TIMEOUT_S)

    assert done["ok"] is True, done
    clip = done["result"]
    record = await stored_clip(sb, clip["id"])
    assert record.trigger == "command"
    assert clip["note"] == "from the fleet"
    assert clip["sha256"] == record.sha256
    assert "path" not in clip
    assert rejected["ok"] is False
    assert rejected["reason"] == "invalid-argument"
    assert "'length'" in rejected["message"]


async def test_camera_failure_shows_slate(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    token = sb.token(STATION, PUBLISH)

    studio.camera.fail("lens cap on")
    await wait_until(lambda: studio.source == "slate", "the slate")
    segments = studio.state()["segments_written"]
    await wait_until(
        lambda: studio.state()["segments_written"] >= segments + 2,
        "segments of the slate",
    )
    down = await refused(sb, "studio", "clip", {}, token)
    state_while_down = studio.state()
    studio.camera.recover()
    await camera_streaming(sb)
    playlist = studio.stream.hls.playlist() if studio.stream.hls is not None else ""
    recovered = await station_call(sb, "clip", {})
    record = await stored_clip(sb, recovered["clip"])

    assert down.code == "camera-down"
    assert "the camera is down since" in down.message
    assert "lens cap on" in down.message
    assert state_while_down["source"] == "slate"
    assert state_while_down["camera_down_since"] is not None
    assert state_while_down["refused"]["clip-camera-down"] >= 1
    assert "#EXT-X-DISCONTINUITY" in playlist
    assert decode_errors(record.path) == ""


async def test_segments_keep_one_timeline(studio_box: StudioBox) -> None:
    sb = studio_box
    studio = sb.studio
    await camera_streaming(sb)
    studio.camera.fail("cable pulled")
    await wait_until(lambda: studio.source == "slate", "the slate")
    studio.camera.recover()
    await camera_streaming(sb)
    await wait_until(
        lambda: (
            studio.stream.hls is not None
            and studio.stream.hls.playlist().count("#EXTINF") >= 3
            and "#EXT-X-DISCONTINUITY" in studio.stream.hls.playlist()
        ),
        "a playlist across the switch",
    )
    assert studio.stream.hls is not None
    names = [
        line
        for line in studio.stream.hls.playlist().splitlines()
        if line and not line.startswith("#")
    ]
    # Read every segment at once, before the window drops the oldest.
    segments = {name: studio.stream.hls.segment_bytes(name) for name in names}
    starts = []
    for name, data in segments.items():
        assert data is not None, name
        video = probe_bytes(data, ".ts").packets_of("video")
        starts.append(video[0]["pts_time"])
        times = [packet["pts_time"] for packet in video]
        assert times == sorted(times), name

    assert starts == sorted(starts)
    assert len(set(starts)) == len(starts)


@dataclass
class ServedSegment:
    """A segment as a viewer fetched it, with its duration and discontinuity flag."""

    uri: str
    duration_s: float
    discontinuity: bool
    data: bytes


@dataclass
class ViewerRecording:
    """Every segment a viewer fetched over HTTP while it polled the playlist."""

    segments: list[ServedSegment] = field(default_factory=list)

    def switches(self) -> int:
        """Return how many segments began after an EXT-X-DISCONTINUITY."""
        return sum(segment.discontinuity for segment in self.segments)

    def since_switch(self) -> int:
        """Return how many segments were fetched since the last discontinuity."""
        count = 0
        for segment in reversed(self.segments):
            count += 1
            if segment.discontinuity:
                return count
        return count

    def vod_playlist(self) -> str:
        """Return a finished playlist of the recorded segments, as served."""
        longest = max(segment.duration_s for segment in self.segments)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{int(longest) + 1}",
            "#EXT-X-PLAYLIST-TYPE:VOD",
        ]
        for segment in self.segments:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += [f"#EXTINF:{segment.duration_s:.3f},", segment.uri]
        lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


def media_uris(playlist: str) -> list[str]:
    """Return the segment URIs of a media playlist, in order."""
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


async def record_viewer(sb: StudioBox, recording: ViewerRecording) -> None:
    """Poll the live playlist with a viewer's token and fetch each new segment.

    The viewer starts at the last two segments of the first playlist, as a
    player starts near the live edge, because the oldest segment may leave
    the window before it is fetched.
    """
    http = sb.studio.http
    assert http is not None
    base = f"http://127.0.0.1:{http.port}/stream"
    headers = {"Authorization": f"Bearer {sb.token('viewer-2', 'stream:view')}"}
    fetched: set[str] | None = None
    async with aiohttp.ClientSession(headers=headers) as session:
        while True:
            async with session.get(f"{base}/live.m3u8") as response:
                assert response.status == 200, await response.text()
                playlist = await response.text()
            if fetched is None:
                fetched = set(media_uris(playlist)[:-2])
            duration_s = 0.0
            discontinuity = False
            for line in playlist.splitlines():
                if line == "#EXT-X-DISCONTINUITY":
                    discontinuity = True
                elif line.startswith("#EXTINF:"):
                    duration_s = float(line.removeprefix("#EXTINF:").split(",")[0])
                elif line and not line.startswith("#"):
                    if line not in fetched:
                        async with session.get(f"{base}/{line}") as response:
                            assert response.status == 200, line
                            data = await response.read()
                        fetched.add(line)
                        recording.segments.append(
                            ServedSegment(line, duration_s, discontinuity, data)
                        )
                    discontinuity = False
            await asyncio.sleep(0.2)


async def test_camera_stall_shows_slate(studio_box: StudioBox, tmp_path: Path) -> None:
    sb = studio_box
    studio = sb.studio
    slate_after_s = sb.config.studio.slate_after_s if sb.config.studio else 0.0
    await camera_streaming(sb)
    token = sb.token(STATION, PUBLISH)
    recording = ViewerRecording()
    viewer = asyncio.create_task(record_viewer(sb, recording))

    def viewer_fetched(count: int) -> bool:
        if viewer.done():
            viewer.result()  # raises what failed in the viewer
        return len(recording.segments) >= count

    def viewer_saw(switches: int, segments: int) -> bool:
        return (
            viewer_fetched(0)
            and recording.switches() == switches
            and recording.since_switch() >= segments
        )

    await wait_until(lambda: viewer_fetched(2), "two camera segments")
    # The window may still list a switch of an earlier test.
    earlier = recording.switches()

    studio.camera.stall()
    await wait_until(lambda: studio.source == "slate", "the slate")
    await wait_until(lambda: viewer_saw(earlier + 1, 2), "two segments of the slate")
    down = await refused(sb, "studio", "clip", {}, token)
    state_while_down = studio.state()
    studio.camera.resume()
    await camera_streaming(sb)
    await wait_until(
        lambda: viewer_saw(earlier + 2, 2), "two camera segments after the stall"
    )
    viewer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await viewer
    recovered = await studio.clip("console")

    assert down.code == "camera-down"
    assert f"no frame from the camera for {slate_after_s:g} s" in down.message
    assert state_while_down["source"] == "slate"
    assert state_while_down["camera_down_since"] is not None
    assert state_while_down["refused"]["clip-camera-down"] >= 1
    assert studio.state()["camera_down_since"] is None
    assert decode_errors(recovered.path) == ""
    video_packets = 0
    for segment in recording.segments:
        video = probe_bytes(segment.data, ".ts").packets_of("video")
        assert video[0]["keyframe"], segment.uri
        video_packets += len(video)
    # The whole recording, camera to slate to camera, plays as one stream.
    folder = tmp_path / "viewer"
    folder.mkdir()
    for segment in recording.segments:
        (folder / segment.uri).write_bytes(segment.data)
    playlist = folder / "recorded.m3u8"
    playlist.write_text(recording.vod_playlist())
    played = probe(playlist)
    times = [packet["pts_time"] for packet in played.packets_of("video")]
    assert len(times) == video_packets
    assert times == sorted(times)
    assert played.has_stream("audio")
    assert decode_errors(playlist) == ""
