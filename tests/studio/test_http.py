"""StudioHttp serving the live stream: playlist, segments, parts, blocking reload.

The server runs on a free loopback port with the box's real edge tokens (a
SQLite store and an Ed25519 key made for the test) and the studio's
``HlsWriter`` fed with packets that libx264 and AAC encoded
(``tests/studio/packets.py``); ffprobe reads the segments it serves. The
token clock is a ManualClock, so expiry is reached by moving it. The
fixtures here are shared with ``test_http_auth.py``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ffprobe import probe_bytes
from packets import stream_packets

from appliance.clock import ManualClock
from appliance.errors import NightboxError
from appliance.store import Store
from appliance.studio.hls import HlsWriter
from appliance.studio.http import ControlHandler, StudioHttp
from appliance.tokens import EdgeTokens
from hardware.camera import EncodedPacket

# 2027-01-15 08:00:00 UTC.
START_S = 1_800_000_000.0
STREAM_SECONDS = 8.0
SEGMENT_S = 1.0
PART_S = 0.25


class FakeMonotonic:
    """A monotonic clock in seconds that moves only when the test moves it."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


@dataclass
class LiveStream:
    """An HLS writer and the packets not fed to it yet."""

    writer: HlsWriter
    packets: list[EncodedPacket]
    fed_until_s: float = 0.0

    def feed_until(self, seconds: float) -> None:
        """Feed every packet that starts before ``seconds`` into the stream."""
        while self.packets and self.packets[0].seconds < seconds:
            self.writer.feed(self.packets.pop(0))
        self.fed_until_s = seconds


@dataclass
class StreamServer:
    """A running StudioHttp with what it reads from."""

    http: StudioHttp
    tokens: EdgeTokens
    clock: ManualClock
    monotonic: FakeMonotonic
    stream: LiveStream
    session: aiohttp.ClientSession
    control_calls: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    serving: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}/stream"

    def token(
        self, *scopes: str, subject: str = "viewer-1", ttl_s: float = 3600.0
    ) -> str:
        return self.tokens.issue(subject, scopes, ttl_s).token


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "nightbox.sqlite3", ManualClock(START_S))
    yield opened
    opened.close()


def live_stream(folder: Path, seconds: float = 4.5) -> LiveStream:
    """Return a writer fed with the first ``seconds`` of the test stream."""
    info, packets = stream_packets(STREAM_SECONDS)
    writer = HlsWriter(folder, info, segment_s=SEGMENT_S, part_s=PART_S, window=6)
    stream = LiveStream(writer, list(packets))
    stream.feed_until(seconds)
    return stream


def control_handlers(
    calls: list[tuple[str, dict[str, object]]], actions: Iterable[str]
) -> dict[str, ControlHandler]:
    """Return control handlers that record their calls and reject on request."""

    def make(action: str) -> ControlHandler:
        async def handle(body: dict[str, object]) -> dict[str, object]:
            calls.append((action, body))
            if body.get("reject"):
                raise NightboxError(f"{action} rejected: the camera is down")
            if body.get("crash"):
                raise RuntimeError(f"{action} handler failed")
            return {"done": action}

        return handle

    return {action: make(action) for action in actions}


@pytest.fixture
async def server(tmp_path: Path, store: Store) -> AsyncIterator[StreamServer]:
    clock = ManualClock(START_S)
    tokens = EdgeTokens(
        Ed25519PrivateKey.generate(),
        store,
        clock,
        issuer="nightbox:club:box-1",
        audience="club",
    )
    monotonic = FakeMonotonic()
    stream = live_stream(tmp_path / "hls")
    calls: list[tuple[str, dict[str, object]]] = []
    holder: dict[str, StreamServer] = {}

    def provider() -> HlsWriter | None:
        running = holder.get("server")
        return stream.writer if running is None or running.serving else None

    http = StudioHttp(
        provider,
        tokens,
        clock,
        "127.0.0.1",
        0,
        control=control_handlers(calls, ("start", "stop", "clip", "overlay")),
        monotonic=monotonic,
    )
    await http.start()
    async with aiohttp.ClientSession() as session:
        running = StreamServer(http, tokens, clock, monotonic, stream, session, calls)
        holder["server"] = running
        try:
            yield running
        finally:
            await http.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def media_uris(playlist: str) -> list[str]:
    """Return the segment URIs of a media playlist, in order."""
    return [line for line in playlist.splitlines() if line and line[0] != "#"]


def part_ranges(playlist: str) -> list[tuple[str, int, int]]:
    """Return (URI, offset, size) of every EXT-X-PART of a playlist."""
    parts = []
    for match in re.finditer(
        r'#EXT-X-PART:.*URI="([^"]+)",BYTERANGE="(\d+)@(\d+)"', playlist
    ):
        parts.append((match[1], int(match[3]), int(match[2])))
    return parts


async def test_viewer_gets_playlist_and_segments(server: StreamServer) -> None:
    token = server.token("stream:view")
    async with server.session.get(
        f"{server.url}/live.m3u8", headers=bearer(token)
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/vnd.apple.mpegurl"
        playlist = await response.text()
    assert playlist == server.stream.writer.playlist()
    uris = media_uris(playlist)
    assert len(uris) == 4

    for uri in uris:
        async with server.session.get(
            f"{server.url}/{uri}", headers=bearer(token)
        ) as response:
            assert response.status == 200
            assert response.content_type == "video/mp2t"
            data = await response.read()
        assert data == server.stream.writer.segment_bytes(uri)
        probe = probe_bytes(data, ".ts")
        assert probe.has_stream("video")
        assert probe.has_stream("audio")
        assert probe.packets_of("video")[0]["keyframe"] is True

    assert server.http.segments_served == 4
    assert server.http.playlists_served == 1
    assert server.http.viewers == 1
    assert server.http.state()["segments_served"] == 4


async def test_publish_token_can_watch(server: StreamServer) -> None:
    token = server.token("stream:publish", subject="creator-1")
    async with server.session.get(
        f"{server.url}/live.m3u8", headers=bearer(token)
    ) as response:
        assert response.status == 200
        assert "#EXTM3U" in await response.text()


async def test_query_token_repeated_on_uris(server: StreamServer) -> None:
    token = server.token("stream:view")
    async with server.session.get(
        f"{server.url}/live.m3u8", params={"token": token}
    ) as response:
        assert response.status == 200
        playlist = await response.text()

    uris = media_uris(playlist)
    assert uris
    assert all(uri.endswith(f"?token={token}") for uri in uris)
    hinted = re.findall(r'URI="([^"]+)"', playlist)
    assert hinted
    assert all(uri.endswith(f"?token={token}") for uri in hinted)
    # A player follows the URIs as they are, with no header.
    async with server.session.get(f"{server.url}/{uris[-1]}") as response:
        assert response.status == 200
        assert await response.read() == server.stream.writer.segment_bytes(
            uris[-1].partition("?")[0]
        )


async def test_header_token_leaves_uris_bare(server: StreamServer) -> None:
    token = server.token("stream:view")
    async with server.session.get(
        f"{server.url}/live.m3u8", headers=bearer(token)
    ) as response:
        playlist = await response.text()
    assert "token=" not in playlist


async def test_part_served_as_byte_range(server: StreamServer) -> None:
    token = server.token("stream:view")
    playlist = server.stream.writer.playlist()
    live = server.stream.writer.live_msn
    parts = [p for p in part_ranges(playlist) if p[0].endswith(f"{live:06d}.ts")]
    assert len(parts) >= 2
    uri, offset, size = parts[1]
    whole = server.stream.writer.segment_bytes(uri)
    assert whole is not None

    headers = {**bearer(token), "Range": f"bytes={offset}-{offset + size - 1}"}
    async with server.session.get(f"{server.url}/{uri}", headers=headers) as response:
        assert response.status == 206
        # The segment is still being written, so its full length is unknown.
        assert response.headers["Content-Range"] == (
            f"bytes {offset}-{offset + size - 1}/*"
        )
        data = await response.read()
    assert data == whole[offset : offset + size]

    outside = {**bearer(token), "Range": f"bytes={len(whole) + 10}-"}
    async with server.session.get(f"{server.url}/{uri}", headers=outside) as response:
        assert response.status == 416
        assert (await response.json())["error"] == "invalid-range"


async def test_blocking_reload_waits_for_segment(server: StreamServer) -> None:
    token = server.token("stream:view")
    writer = server.stream.writer
    wanted = writer.live_msn + 1
    request = asyncio.create_task(
        server.session.get(
            f"{server.url}/live.m3u8",
            params={"_HLS_msn": str(wanted)},
            headers=bearer(token),
        )
    )
    # The segment does not exist yet, so the request is held.
    done, _pending = await asyncio.wait({request}, timeout=0.5)
    assert not done

    server.stream.feed_until(server.stream.fed_until_s + 2.5)
    response = await asyncio.wait_for(request, 30)
    async with response:
        assert response.status == 200
        playlist = await response.text()
    assert any(uri.endswith(f"{wanted:06d}.ts") for uri in media_uris(playlist))


async def test_blocking_reload_waits_for_part(server: StreamServer) -> None:
    token = server.token("stream:view")
    writer = server.stream.writer
    live = writer.live_msn
    listed = [
        p for p in part_ranges(writer.playlist()) if p[0].endswith(f"{live:06d}.ts")
    ]
    wanted_part = len(listed)
    request = asyncio.create_task(
        server.session.get(
            f"{server.url}/live.m3u8",
            params={"_HLS_msn": str(live), "_HLS_part": str(wanted_part)},
            headers=bearer(token),
        )
    )
    done, _pending = await asyncio.wait({request}, timeout=0.5)
    assert not done

    server.stream.feed_until(server.stream.fed_until_s + PART_S * 2)
    response = await asyncio.wait_for(request, 30)
    async with response:
        assert response.status == 200
        playlist = await response.text()
    parts = [p for p in part_ranges(playlist) if p[0].endswith(f"{live:06d}.ts")]
    assert len(parts) > wanted_part


async def test_blocking_reload_listed_segment_at_once(server: StreamServer) -> None:
    token = server.token("stream:view")
    async with server.session.get(
        f"{server.url}/live.m3u8", params={"_HLS_msn": "1"}, headers=bearer(token)
    ) as response:
        assert response.status == 200
        assert media_uris(await response.text())


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"_HLS_msn": "-1"}, "_HLS_msn='-1' is invalid"),
        ({"_HLS_msn": "two"}, "_HLS_msn='two' is invalid"),
        ({"_HLS_msn": "\u00b2"}, "is invalid"),
        ({"_HLS_msn": "1", "_HLS_part": "x"}, "_HLS_part='x' is invalid"),
        ({"_HLS_part": "1"}, "_HLS_part needs _HLS_msn"),
        ({"_HLS_msn": "99"}, "_HLS_msn=99 is more than 2 segments beyond"),
    ],
)
async def test_blocking_reload_invalid_request(
    server: StreamServer, query: dict[str, str], fragment: str
) -> None:
    token = server.token("stream:view")
    async with server.session.get(
        f"{server.url}/live.m3u8", params=query, headers=bearer(token)
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "invalid"
    assert fragment in body["message"]


async def test_blocking_reload_times_out(server: StreamServer) -> None:
    token = server.token("stream:view")
    wanted = server.stream.writer.live_msn + 1
    async with server.session.get(
        f"{server.url}/live.m3u8",
        params={"_HLS_msn": str(wanted)},
        headers=bearer(token),
    ) as response:
        assert response.status == 503
        body = await response.json()
    assert body["error"] == "timeout"
    assert f"segment {wanted}" in body["message"]


async def test_unknown_segment_not_found(server: StreamServer) -> None:
    token = server.token("stream:view")
    for name in ("segment-000000-999999.ts", "..%2Fnightbox.sqlite3", "live.txt"):
        async with server.session.get(
            f"{server.url}/{name}", headers=bearer(token)
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"] == "not-found"
    async with server.session.get(
        f"http://127.0.0.1:{server.http.port}/other", headers=bearer(token)
    ) as response:
        assert response.status == 404
    assert server.http.segments_served == 0


async def test_stopped_stream_unavailable(server: StreamServer) -> None:
    token = server.token("stream:view")
    server.serving = False
    async with server.session.get(
        f"{server.url}/live.m3u8", headers=bearer(token)
    ) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "stopped"
    async with server.session.get(f"{server.url}/health") as response:
        assert response.status == 503
        assert await response.json() == {"ok": False, "reason": "stopped"}


async def test_health_needs_no_token(server: StreamServer) -> None:
    async with server.session.get(f"{server.url}/health") as response:
        assert response.status == 200
        assert await response.json() == {"ok": True}


async def test_viewers_counts_recent_tokens(server: StreamServer) -> None:
    for subject in ("viewer-1", "viewer-2"):
        token = server.token("stream:view", subject=subject)
        for _ in range(2):
            async with server.session.get(
                f"{server.url}/live.m3u8", headers=bearer(token)
            ) as response:
                assert response.status == 200
    assert server.http.viewers == 2

    server.monotonic.value += 31.0
    assert server.http.viewers == 0


async def test_control_calls_handler(server: StreamServer) -> None:
    token = server.token("stream:publish", subject="creator-1")
    async with server.session.post(
        f"{server.url}/control/overlay",
        json={"message": "Last call"},
        headers=bearer(token),
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body == {"ok": True, "action": "overlay", "result": {"done": "overlay"}}
    async with server.session.post(
        f"{server.url}/control/clip", headers=bearer(token)
    ) as response:
        assert response.status == 200
    assert server.control_calls == [("overlay", {"message": "Last call"}), ("clip", {})]
    assert server.http.control_actions == {"overlay": 1, "clip": 1}


async def test_control_rejection_reported(server: StreamServer) -> None:
    token = server.token("stream:publish", subject="creator-1")
    async with server.session.post(
        f"{server.url}/control/clip", json={"reject": True}, headers=bearer(token)
    ) as response:
        assert response.status == 409
        body = await response.json()
    assert body["error"] == "rejected"
    assert "the camera is down" in body["message"]


async def test_control_handler_failure_reported(
    server: StreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = server.token("stream:publish", subject="creator-1")
    async with server.session.post(
        f"{server.url}/control/stop", json={"crash": True}, headers=bearer(token)
    ) as response:
        assert response.status == 500
        body = await response.json()
    assert body["error"] == "internal-error"
    assert server.http.control_actions == {"stop-failed": 1}
    assert any(
        "Stream control stop from creator-1 failed" in r.getMessage()
        for r in caplog.records
    )
    # The server goes on serving.
    async with server.session.get(
        f"{server.url}/live.m3u8", headers=bearer(token)
    ) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("action", "payload", "status", "error"),
    [
        ("rewind", b"{}", 404, "not-found"),
        ("drop-open", b"{}", 503, "unavailable"),
        ("overlay", b"[1, 2]", 400, "invalid"),
        ("overlay", b"{not json", 400, "invalid"),
        ("overlay", b"{" + b" " * 20_000 + b"}", 413, "too-large"),
    ],
)
async def test_control_invalid_request(
    server: StreamServer, action: str, payload: bytes, status: int, error: str
) -> None:
    token = server.token("stream:publish", subject="creator-1")
    async with server.session.post(
        f"{server.url}/control/{action}",
        data=payload,
        headers={**bearer(token), "Content-Type": "application/json"},
    ) as response:
        assert response.status == status
        assert (await response.json())["error"] == error
    assert server.control_calls == []


def test_unknown_control_action_rejected(store: Store) -> None:
    tokens = EdgeTokens(
        Ed25519PrivateKey.generate(),
        store,
        ManualClock(START_S),
        issuer="i",
        audience="a",
    )
    with pytest.raises(ValueError, match="unknown stream control action 'pause'"):
        StudioHttp(
            lambda: None,
            tokens,
            ManualClock(START_S),
            "127.0.0.1",
            0,
            control=control_handlers([], ("pause",)),
        )


def edge_tokens(store: Store) -> EdgeTokens:
    return EdgeTokens(
        Ed25519PrivateKey.generate(),
        store,
        ManualClock(START_S),
        issuer="nightbox:club:box-1",
        audience="club",
    )


async def test_bound_port_none_until_started(store: Store) -> None:
    http = StudioHttp(
        lambda: None, edge_tokens(store), ManualClock(START_S), "127.0.0.1", 0
    )
    before = http.bound_port
    with pytest.raises(RuntimeError, match="not started"):
        _ = http.port
    await http.start()
    listening = http.bound_port
    port = http.port
    await http.stop()

    assert before is None
    assert listening == port
    assert port > 0
    assert http.bound_port is None
    assert http.state()["port"] is None


async def test_port_in_use_rejected(store: Store) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        http = StudioHttp(
            lambda: None,
            edge_tokens(store),
            ManualClock(START_S),
            "127.0.0.1",
            busy_port,
        )
        with pytest.raises(OSError, match="set \\[studio\\] http_port") as raised:
            await http.start()

    assert f"127.0.0.1:{busy_port}" in str(raised.value)
    assert http.bound_port is None


def preload_hint(playlist: str) -> tuple[str, int]:
    """Return the URI and BYTERANGE-START of a playlist's EXT-X-PRELOAD-HINT."""
    match = re.search(
        r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"?]+)[^"]*",BYTERANGE-START=(\d+)',
        playlist,
    )
    assert match is not None, playlist
    return match[1], int(match[2])


async def test_preload_hint_held_until_part_done(server: StreamServer) -> None:
    token = server.token("stream:view")
    writer = server.stream.writer
    uri, start = preload_hint(writer.playlist())
    request = asyncio.create_task(
        server.session.get(
            f"{server.url}/{uri}", headers={**bearer(token), "Range": f"bytes={start}-"}
        )
    )
    # The hinted part is not finished, so the request is held.
    done, _pending = await asyncio.wait({request}, timeout=0.5)
    assert not done

    server.stream.feed_until(server.stream.fed_until_s + PART_S * 2)
    response = await asyncio.wait_for(request, 30)
    async with response:
        assert response.status == 206
        content_range = response.headers["Content-Range"]
        data = await response.read()

    # Once the segment is finished, the bytes served are exactly one part.
    server.stream.feed_until(server.stream.fed_until_s + SEGMENT_S * 2)
    finished = writer.segment_bytes(uri)
    assert finished is not None
    assert uri in media_uris(writer.playlist())
    assert data == finished[start : start + len(data)]
    assert (uri, start, len(data)) in part_ranges(writer.playlist())
    assert content_range.startswith(f"bytes {start}-{start + len(data) - 1}/")


async def test_open_segment_held_until_finished(server: StreamServer) -> None:
    token = server.token("stream:view")
    writer = server.stream.writer
    uri, _start = preload_hint(writer.playlist())
    request = asyncio.create_task(
        server.session.get(f"{server.url}/{uri}", headers=bearer(token))
    )
    done, _pending = await asyncio.wait({request}, timeout=0.5)
    assert not done

    server.stream.feed_until(server.stream.fed_until_s + SEGMENT_S * 2)
    response = await asyncio.wait_for(request, 30)
    async with response:
        assert response.status == 200
        data = await response.read()
    assert uri in media_uris(writer.playlist())
    assert data == writer.segment_bytes(uri)


@pytest.mark.parametrize(
    ("range_header", "status"),
    [
        ("bytes=-0", 416),
        ("bytes=20-10", 416),
        ("bytes=abc", 416),
        ("bytes=0-9,20-29", 200),
        ("bytes=-100", 206),
    ],
)
async def test_finished_segment_ranges(
    server: StreamServer, range_header: str, status: int
) -> None:
    token = server.token("stream:view")
    uri = media_uris(server.stream.writer.playlist())[0]
    whole = server.stream.writer.segment_bytes(uri)
    assert whole is not None
    headers = {**bearer(token), "Range": range_header}
    async with server.session.get(f"{server.url}/{uri}", headers=headers) as response:
        assert response.status == status
        data = await response.read()
    if status == 416:
        assert server.http.bad_requests == {"invalid-range": 1}
    elif status == 200:
        # Several ranges get the whole segment (RFC 9110, section 14.2).
        assert data == whole
    else:
        assert data == whole[-100:]


async def test_blocking_reload_part_too_far(server: StreamServer) -> None:
    token = server.token("stream:view")
    live = server.stream.writer.live_msn
    for query in (
        {"_HLS_msn": str(live), "_HLS_part": "999999"},
        {"_HLS_msn": str(live + 1), "_HLS_part": "50"},
    ):
        async with server.session.get(
            f"{server.url}/live.m3u8", params=query, headers=bearer(token)
        ) as response:
            assert response.status == 400
            body = await response.json()
        assert body["error"] == "invalid"
        assert f"_HLS_part={query['_HLS_part']} is more than" in body["message"]
    assert server.http.bad_requests == {"invalid": 2}


async def test_blocking_reload_one_ahead_rule(server: StreamServer) -> None:
    token = server.token("stream:view")
    live = server.stream.writer.live_msn
    # The segment after the live one is two beyond the last finished one.
    async with server.session.get(
        f"{server.url}/live.m3u8",
        params={"_HLS_msn": str(live + 2)},
        headers=bearer(token),
    ) as response:
        assert response.status == 400
        body = await response.json()
    assert f"_HLS_msn={live + 2} is more than 2 segments beyond" in body["message"]


async def test_control_deeply_nested_json(
    server: StreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = server.token("stream:publish", subject="creator-1")
    nested = "[" * 5000 + "]" * 5000
    for _ in range(2):
        async with server.session.post(
            f"{server.url}/control/clip",
            data=nested,
            headers={**bearer(token), "Content-Type": "application/json"},
        ) as response:
            assert response.status == 400
            body = await response.json()
        assert body["error"] == "invalid"
        assert "nests arrays or objects too deeply" in body["message"]
    assert server.control_calls == []
    assert server.http.bad_requests == {"invalid": 2}
    logged = [r for r in caplog.records if "too deeply" in r.getMessage()]
    assert len(logged) == 1
    assert all(record.exc_info is None for record in caplog.records)
