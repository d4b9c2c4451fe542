"""The studio's HTTP server against slow, greedy and malformed clients.

Slow clients are real TCP connections on loopback that send a request head
a line at a time and never finish it. Extra client addresses are other
loopback addresses (127.0.0.2, 127.0.0.3), which Linux routes to the same
interface. The stream and tokens are the ones ``test_http.py`` builds.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_http import (
    START_S,
    StreamServer,
    bearer,
    edge_tokens,
    live_stream,
    media_uris,
    server,  # noqa: F401
    store,  # noqa: F401
)

from appliance.clock import ManualClock
from appliance.service_host import raise_open_file_limit
from appliance.store import Store
from appliance.studio.http import StudioHttp
from appliance.tokens import EdgeTokens

SLOW_CLIENTS = 50
# Upper bound for the server to close a client, far above any timeout set
# here. It only keeps a broken server from hanging the test run.
CLOSE_BOUND_S = 30.0


class LimitedServer:
    """A StudioHttp with small limits, its tokens and a stream to serve."""

    def __init__(self, http: StudioHttp, tokens: EdgeTokens) -> None:
        self.http = http
        self.tokens = tokens

    @property
    def port(self) -> int:
        return self.http.port

    def view_token(self) -> str:
        return self.tokens.issue("viewer-1", ("stream:view",), 3600.0).token


LimitedServerFactory = Callable[..., Awaitable[LimitedServer]]


@pytest.fixture
async def limited_server(
    tmp_path: Path,
    store: Store,  # noqa: F811
) -> AsyncIterator[LimitedServerFactory]:
    started: list[StudioHttp] = []

    async def start(**limits: Any) -> LimitedServer:
        stream = live_stream(tmp_path / "hls")
        tokens = edge_tokens(store)
        http = StudioHttp(
            lambda: stream.writer,
            tokens,
            ManualClock(START_S),
            "127.0.0.1",
            0,
            **limits,
        )
        await http.start()
        started.append(http)
        return LimitedServer(http, tokens)

    yield start
    for http in started:
        await http.stop()


async def wait_for_connections(http: StudioHttp, count: int) -> None:
    """Wait until the server has admitted ``count`` connections."""
    async with asyncio.timeout(CLOSE_BOUND_S):
        # The server has no event for its connection count, so poll it.
        while http.connections != count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def slow_client(port: int, started: asyncio.Event) -> bytes:
    """Send a request head a line at a time, never ending it; return the reply bytes.

    Returns once the server closes the connection.
    """
    reader, writer = await connect(port)
    writer.write(b"GET /stream/live.m3u8 HTTP/1.1\r\nHost: box\r\n")
    await writer.drain()
    started.set()
    received = bytearray()
    try:
        async with asyncio.timeout(CLOSE_BOUND_S):
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(1024), 0.2)
                except TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    continue
                if not chunk:
                    return bytes(received)
                received += chunk
    finally:
        writer.close()


async def test_slow_clients_closed_viewer_served(
    limited_server: LimitedServerFactory,
) -> None:
    limited = await limited_server(
        header_timeout_s=2.0, max_connections_per_address=SLOW_CLIENTS + 10
    )
    started = [asyncio.Event() for _ in range(SLOW_CLIENTS)]
    slow = [asyncio.create_task(slow_client(limited.port, event)) for event in started]
    await asyncio.gather(*(event.wait() for event in started))
    await wait_for_connections(limited.http, SLOW_CLIENTS)

    # A viewer is served while the slow clients hold their connections.
    token = limited.view_token()
    url = f"http://127.0.0.1:{limited.port}/stream"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/live.m3u8", headers=bearer(token)) as response:
            assert response.status == 200
            playlist = await response.text()
        segment = media_uris(playlist)[0]
        async with session.get(f"{url}/{segment}", headers=bearer(token)) as response:
            assert response.status == 200
            assert len(await response.read()) > 0

    # Every slow client is closed although it kept sending header lines, and
    # none of them got a response.
    received = await asyncio.gather(*slow)
    assert received == [b""] * SLOW_CLIENTS
    await wait_for_connections(limited.http, 0)


async def read_refusal(port: int, source: str) -> dict[str, object]:
    """Connect from ``source`` and return the JSON body of the 503 refusal."""
    reader, writer = await connect(port, source)
    try:
        async with asyncio.timeout(CLOSE_BOUND_S):
            response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), head
    parsed = json.loads(body)
    assert isinstance(parsed, dict)
    return parsed


async def test_connections_over_limit_rejected(
    limited_server: LimitedServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    limited = await limited_server(
        header_timeout_s=30.0, max_connections=4, max_connections_per_address=3
    )
    held = [await connect(limited.port) for _ in range(3)]
    await wait_for_connections(limited.http, 3)

    from_same_address = await read_refusal(limited.port, "127.0.0.1")
    assert from_same_address["error"] == "too-many-from-address"

    held.append(await connect(limited.port, "127.0.0.2"))
    await wait_for_connections(limited.http, 4)
    over_total = await read_refusal(limited.port, "127.0.0.3")
    assert over_total["error"] == "too-many-connections"
    assert "retry in a few seconds" in str(over_total["message"])

    assert limited.http.connections_rejected == {
        "too-many-from-address": 1,
        "too-many-connections": 1,
    }
    assert limited.http.state()["connections"] == 4
    logged = [r for r in caplog.records if "rejected a connection" in r.getMessage()]
    assert len(logged) == 2

    # Once a connection closes, a viewer from a third address is served.
    _reader, closing = held.pop(0)
    closing.close()
    await wait_for_connections(limited.http, 3)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(
            f"http://127.0.0.1:{limited.port}/stream/live.m3u8",
            headers=bearer(limited.view_token()),
        ) as response,
    ):
        assert response.status == 200
    for _reader, writer in held:
        writer.close()


async def send_raw(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; return the whole response."""
    reader, writer = await connect(port)
    try:
        writer.write(request)
        async with asyncio.timeout(CLOSE_BOUND_S):
            return await reader.read()
    finally:
        writer.close()


async def test_long_header_line_one_log_line(
    server: StreamServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = server.token("stream:view")
    segment = media_uris(server.stream.writer.playlist())[0]
    long_range = b"bytes=" + b"1" * 20_000 + b"-"
    request = (
        f"GET /stream/{segment} HTTP/1.1\r\nHost: box\r\n"
        f"Authorization: Bearer {token}\r\n".encode()
        + b"Range: "
        + long_range
        + b"\r\n\r\n"
    )
    for _ in range(3):
        response = await send_raw(server.http.port, request)
        status_line = response.partition(b"\r\n")[0]
        assert status_line.split(b" ")[1] == b"400"

    assert server.http.bad_requests == {"LineTooLong": 3}
    assert server.http.segments_served == 0
    assert all(record.exc_info is None for record in caplog.records)
    logged = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(logged) == 1
    assert "LineTooLong" in logged[0].getMessage()
    assert "1111111111" not in caplog.text
    assert token not in caplog.text


async def test_accept_failures_logged_once(
    server: StreamServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    error = OSError(errno.EMFILE, "Too many open files")
    for _ in range(5):
        # The same call asyncio makes when accept() fails for lack of files.
        loop.call_exception_handler(
            {"message": "socket.accept() out of system resource", "exception": error}
        )
    logged = [r for r in caplog.records if r.name == "asyncio"]
    assert len(logged) == 1
    assert logged[0].exc_info is None
    assert "Too many open files" in logged[0].getMessage()
    assert server.http.accept_failures == 5
    assert server.http.state()["accept_failures"] == 5


@pytest.fixture
def lowered_file_limit() -> Iterator[tuple[int, int]]:
    """Lower the soft open file limit for a test; restore it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    try:
        yield soft, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_open_file_limit_raised(lowered_file_limit: tuple[int, int]) -> None:
    _soft, hard = lowered_file_limit
    wanted = 2048 if hard == resource.RLIM_INFINITY else min(2048, hard)

    raised = raise_open_file_limit(wanted)

    assert raised == wanted
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
    # A limit already at the wanted value is left alone.
    assert raise_open_file_limit(wanted // 2) == wanted
