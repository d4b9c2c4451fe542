"""The studio's HTTP server: the live HLS stream and the creator station's controls.

Viewers on the venue network fetch ``/stream/live.m3u8`` and its segments
with an edge token that has ``stream:view`` or ``stream:publish``. A creator
station posts ``/stream/control/<action>`` with ``stream:publish``. A token
comes in ``Authorization: Bearer <jwt>`` or, for players that cannot set
headers, in a ``token`` query parameter, which the served playlist then
repeats on every URI it lists. Tokens are bearer tokens here: no device
identity travels with an HTTP request, so any holder of a valid token may
use it, and its lifetime and revocation bound that.

Low-latency HLS (RFC 8216bis, section 6.2.5.2): a playlist request with
``_HLS_msn`` (and ``_HLS_part``) is held until the playlist contains that
segment (or part), for at most three target durations. Parts are byte
ranges of the segment being written and are served from ``Range`` requests.
A request for bytes not written yet (a preload hint, or a part still being
written) is held until the part that contains them is finished and then
gets the whole part, so a player never receives a truncated part.

Slow clients cannot hold the server: a connection must send a complete
request head within a few seconds of connecting or of its last response,
and connections are limited in total and per client address (see
``_http_limits``). The access log writes the method, the path without its
query string, the status and the size, never a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from appliance.clock import Clock
from appliance.errors import NightboxError
from appliance.studio._actions import StudioError
from appliance.studio._http_limits import (
    AcceptFailureFilter,
    ConnectionLimits,
    GuardedSite,
    LogLimiter,
    ServerErrorLog,
    skipped_suffix,
)
from appliance.studio.config import listen_failure_advice
from appliance.tokens import EdgeTokens, TokenClaims, TokenError

__all__ = [
    "CONTROL_ACTIONS",
    "ControlHandler",
    "HlsSource",
    "StudioHttp",
    "WriterProvider",
]

_LOGGER = logging.getLogger(__name__)
_ACCESS_LOGGER = logging.getLogger(f"{__name__}.access")


class HlsSource(Protocol):
    """The HLS writer of the running stream, as the server reads it."""

    def playlist(self) -> str:
        """Return the current media playlist."""
        ...

    def segment_bytes(self, name: str) -> bytes | None:
        """Return the bytes of segment ``name`` so far, or None if there is none."""
        ...

    async def wait_for_part(
        self, name: str, offset: int, timeout_s: float, /
    ) -> int | None:
        """Wait until the part holding byte ``offset`` of ``name`` is finished.

        Returns the part's end offset, or None when the time runs out, the
        segment is not in the window, or it ended before ``offset``.
        """
        ...

    async def wait_for(self, msn: int, part: int | None, timeout_s: float, /) -> object:
        """Wait until the playlist contains segment ``msn`` (part ``part``) or time out.

        Raises ValueError for a request that can never be met.
        """
        ...


# Returns the writer of the running stream, or None while it is stopped.
WriterProvider = Callable[[], HlsSource | None]
# Handles one control action: takes the JSON object of the request body and
# returns a JSON object for the reply. Raises a NightboxError to reject it.
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

CONTROL_ACTIONS = ("start", "stop", "clip", "drop-open", "overlay")
VIEW_SCOPES = ("stream:view", "stream:publish")
PUBLISH_SCOPES = ("stream:publish",)

_PLAYLIST = "live.m3u8"
_PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
_SEGMENT_TYPES = {
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".aac": "audio/aac",
}
# Segment names the writer makes: no folders, no dot-dot, a known extension.
_SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\.(ts|m4s|mp4|aac)\Z")
# The largest request body accepted, in bytes (control actions carry a
# small JSON object at most).
_MAX_BODY_BYTES = 16 * 1024
# A viewer counts while a request with its token arrived this recently.
_VIEWER_WINDOW_S = 30.0
# Token ids remembered for the viewer count, at most.
_MAX_TRACKED_VIEWERS = 10_000
# A blocked playlist request waits at most this many target durations
# (RFC 8216bis, section 6.2.5.2).
_BLOCK_TARGET_DURATIONS = 3
# A blocking request for a part further ahead of the playlist's last part
# than three seconds of parts (three parts when a part lasts 1 s or more) is
# rejected at once (RFC 8216bis, section 6.2.5.2, Advance Part Limit). The
# HLS writer rejects a segment more than two ahead of the last finished one.
_ADVANCE_PART_SECONDS = 3.0
_DEFAULT_TARGET_DURATION_S = 2.0
_DEFAULT_PART_TARGET_S = 0.5
_SHUTDOWN_TIMEOUT_S = 2.0
# Rejections are logged at most once per reason in this many seconds, with
# the number not logged since.
_REJECTION_LOG_INTERVAL_S = 5.0
# A connection must send a complete request head (or request body) within
# this many seconds of connecting or of its last response, or it is closed.
DEFAULT_HEADER_TIMEOUT_S = 5.0
# Connections admitted at once, in total and from one client address. A
# player keeps a few connections open; the total stays well below the
# process's open file limit, because SQLite, clips and the broker share it.
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 32
_FILE_LIMIT_SHARE = 4
_BEARER = re.compile(r"^Bearer +(\S+) *\Z", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Authorized:
    """The token of an accepted request and where it came from."""

    token: str
    claims: TokenClaims
    from_query: bool


@dataclass(frozen=True, slots=True)
class _PlaylistPosition:
    """How far a media playlist reaches: its next segment and that segment's parts."""

    open_msn: int
    open_parts: int
    target_duration_s: float
    part_target_s: float

    def contains(self, msn: int, part: int | None) -> bool:
        if msn < self.open_msn:
            return True
        return msn == self.open_msn and part is not None and part < self.open_parts


def _playlist_position(text: str) -> _PlaylistPosition:
    """Read the media sequence, segment and part counts of a media playlist."""
    media_sequence = 0
    segments = 0
    parts = 0
    target_duration_s = _DEFAULT_TARGET_DURATION_S
    part_target_s = _DEFAULT_PART_TARGET_S
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            media_sequence = int(line.partition(":")[2])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target_duration_s = float(line.partition(":")[2])
        elif line.startswith("#EXT-X-PART-INF:PART-TARGET="):
            part_target_s = float(line.partition("=")[2])
        elif line.startswith("#EXT-X-PART:"):
            parts += 1
        elif line and not line.startswith("#"):
            segments += 1
            parts = 0
    return _PlaylistPosition(
        media_sequence + segments, parts, target_duration_s, part_target_s
    )


def _finished_segments(text: str) -> set[str]:
    """Return the URIs of the finished segments a media playlist lists."""
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def _with_token(playlist: str, token: str) -> str:
    """Return ``playlist`` with ``token`` added to the query of every URI."""
    query = "token=" + quote(token, safe="")

    def add(uri: str) -> str:
        return f"{uri}{'&' if '?' in uri else '?'}{query}"

    lines = []
    for line in playlist.splitlines():
        if line and not line.startswith("#"):
            line = add(line)
        elif 'URI="' in line:
            line = re.sub(r'URI="([^"]*)"', lambda m: f'URI="{add(m[1])}"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


class _AccessLog(AbstractAccessLogger):
    """An access log of method, path, status and size, without query strings."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        self.logger.debug(
            "%s %s %s %d %s bytes %.3f s",
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class StudioHttp:
    """Serves the studio's live stream and controls over HTTP with edge tokens.

    ``header_timeout_s`` bounds how long a connection may take to send a
    request head or body; ``max_connections`` and
    ``max_connections_per_address`` bound the connections admitted at once
    (the total is also kept under a quarter of the open file limit).
    """

    def __init__(
        self,
        writer_provider: WriterProvider,
        tokens: EdgeTokens,
        clock: Clock,
        host: str,
        port: int,
        *,
        control: Mapping[str, ControlHandler] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        unknown = sorted(set(control or {}) - set(CONTROL_ACTIONS))
        if unknown:
            raise ValueError(
                f"unknown stream control action {unknown[0]!r}; use one of "
                f"{', '.join(CONTROL_ACTIONS)}"
            )
        if not header_timeout_s > 0:
            raise ValueError(
                f"invalid request header timeout {header_timeout_s!r} s: give "
                "seconds above 0"
            )
        self._writer_provider = writer_provider
        self._clock = clock
        self._host = host
        self._requested_port = port
        self._control = dict(control or {})
        self._monotonic = monotonic
        self._tokens = tokens
        self._header_timeout_s = header_timeout_s
        self._limits = ConnectionLimits(
            min(max_connections, _file_limit_share()), max_connections_per_address
        )
        self._log_limiter = LogLimiter(_REJECTION_LOG_INTERVAL_S, monotonic)
        self._accept_failures = AcceptFailureFilter(self._log_limiter)
        self._viewers: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

        self.segments_served = 0
        self.playlists_served = 0
        self.control_actions: Counter[str] = Counter()
        # Requests rejected for their token, by reason (see TokenError).
        self.rejections: Counter[str] = Counter()
        # Requests rejected as invalid (body, range, blocking reload, or a
        # malformed request aiohttp rejected), by reason.
        self.bad_requests: Counter[str] = Counter()
        # Connections closed at once because of the connection limits.
        self.connections_rejected: Counter[str] = Counter()
        self.last_request_at: float | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on; raises RuntimeError before start()."""
        if self._port is None:
            raise RuntimeError("the studio HTTP server is not started")
        return self._port

    @property
    def bound_port(self) -> int | None:
        """The TCP port the server listens on, or None before start() and after stop().

        Status reports read this one, because they may run while the server
        is starting or stopping.
        """
        return self._port

    @property
    def viewers(self) -> int:
        """The number of distinct tokens that fetched the stream in the last 30 s."""
        self._forget_old_viewers()
        return len(self._viewers)

    @property
    def connections(self) -> int:
        """The number of connections open now."""
        return self._limits.total

    @property
    def accept_failures(self) -> int:
        """The number of failed accept() calls logged by asyncio since start()."""
        return self._accept_failures.failures

    def state(self) -> dict[str, Any]:
        """Return the server's counters for the studio's telemetry."""
        return {
            "listening": self._port is not None,
            "host": self._host,
            "port": self._port,
            "segments_served": self.segments_served,
            "playlists_served": self.playlists_served,
            "viewers": self.viewers,
            "connections": self.connections,
            "control_actions": dict(self.control_actions),
            "rejections": dict(self.rejections),
            "bad_requests": dict(self.bad_requests),
            "connections_rejected": dict(self.connections_rejected),
            "accept_failures": self.accept_failures,
            "last_request_at": self.last_request_at,
        }

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one); see :attr:`port`.

        Raises OSError naming the address when it cannot be bound.
        """
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/stream/health", self._health)
        app.router.add_get(f"/stream/{_PLAYLIST}", self._playlist)
        app.router.add_post("/stream/control/{action}", self._control_action)
        app.router.add_get("/stream/{name}", self._segment)
        runner = web.AppRunner(
            app,
            access_log_class=_AccessLog,
            access_log=_ACCESS_LOGGER,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            # aiohttp closes a connection that has no complete request this
            # long after it connected or after its last response, which ends
            # clients that send their request head slowly or never.
            keepalive_timeout=self._header_timeout_s,
            logger=ServerErrorLog(_LOGGER, self._log_limiter, self.bad_requests),
        )
        await runner.setup()
        site = GuardedSite(
            runner,
            self._host,
            self._requested_port,
            self._limits,
            self._reject_connection,
        )
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise OSError(
                err.errno,
                f"cannot listen for the stream on {self._host}:"
                f"{self._requested_port} ({err.strerror}); "
                f"{listen_failure_advice(err.errno)}",
            ) from err
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logging.getLogger("asyncio").addFilter(self._accept_failures)
        _LOGGER.info(
            "Studio HTTP server listening on %s:%d (at most %d connections, %d "
            "per client address)",
            self._host,
            self._port,
            self._limits.max_total,
            self._limits.max_per_address,
        )

    async def stop(self) -> None:
        """Stop listening; requests still held for a blocking reload end."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        logging.getLogger("asyncio").removeFilter(self._accept_failures)
        await runner.cleanup()
        _LOGGER.info(
            "Studio HTTP server on port %s stopped after %d segments served",
            self._port,
            self.segments_served,
        )
        self._port = None

    def _reject_connection(self, reason: str, address: str) -> None:
        self.connections_rejected[reason] += 1
        skipped = self._log_limiter.allow(f"connection-{reason}")
        if skipped is None:
            return
        _LOGGER.warning(
            "Studio HTTP rejected a connection from %s (%s): %d open in total, "
            "%d from that address; the limits are %d and %d%s",
            address,
            reason,
            self._limits.total,
            self._limits.by_address[address],
            self._limits.max_total,
            self._limits.max_per_address,
            skipped_suffix(skipped),
        )

    async def _health(self, request: web.Request) -> web.Response:
        writer = self._writer_provider()
        if writer is None:
            return web.json_response({"ok": False, "reason": "stopped"}, status=503)
        if _playlist_position(writer.playlist()).open_msn == 0:
            return web.json_response({"ok": False, "reason": "starting"}, status=503)
        return web.json_response({"ok": True})

    async def _playlist(self, request: web.Request) -> web.Response:
        authorized = self._authorize(request, VIEW_SCOPES)
        if isinstance(authorized, web.Response):
            return authorized
        blocking = _blocking_request(request)
        if isinstance(blocking, str):
            return self._invalid(request, 400, "invalid", blocking)
        writer = self._writer_provider()
        if writer is None:
            return _stopped()

        text = writer.playlist()
        if blocking is not None:
            msn, part = blocking
            position = _playlist_position(text)
            too_far = _part_too_far_ahead(position, msn, part)
            if too_far is not None:
                return self._invalid(request, 400, "invalid", too_far)
            if not position.contains(msn, part):
                timeout_s = _BLOCK_TARGET_DURATIONS * position.target_duration_s
                try:
                    await writer.wait_for(msn, part, timeout_s)
                except ValueError as err:
                    return self._invalid(request, 400, "invalid", str(err))
                text = writer.playlist()
                if not _playlist_position(text).contains(msn, part):
                    return _error(
                        503,
                        "timeout",
                        f"segment {msn} part {part} did not appear within "
                        f"{timeout_s:g} s; the stream may be stalled, retry",
                    )

        if authorized.from_query:
            text = _with_token(text, authorized.token)
        self.playlists_served += 1
        return web.Response(
            text=text,
            content_type=_PLAYLIST_TYPE,
            headers={"Cache-Control": "no-cache"},
        )

    async def _segment(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        match = _SEGMENT_NAME.match(name)
        if match is None:
            return _error(404, "not-found", f"no stream file {name[:64]!r}")
        authorized = self._authorize(request, VIEW_SCOPES)
        if isinstance(authorized, web.Response):
            return authorized
        writer = self._writer_provider()
        if writer is None:
            return _stopped()
        requested = _requested_range(request.headers.get("Range"))
        if isinstance(requested, str):
            return self._invalid(request, 416, "invalid-range", requested)
        served = await self._segment_bytes(writer, name, requested)
        if isinstance(served, _Refused):
            if served.status == 416:
                self.bad_requests[served.reason] += 1
                self._log_limited(request, served.reason, served.message)
            return served.response()

        content_type = _SEGMENT_TYPES["." + match[1]]
        # The segment being written grows, so no cache may keep a copy.
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        status = 200
        if served.content_range is not None:
            headers["Content-Range"] = served.content_range
            status = 206
        self.segments_served += 1
        return web.Response(
            body=served.data, status=status, content_type=content_type, headers=headers
        )

    async def _segment_bytes(
        self, writer: HlsSource, name: str, requested: _RangeRequest | None
    ) -> _Served | _Refused:
        """Return the bytes of segment ``name`` to serve for ``requested``.

        A finished segment is served at once. For the segment being
        written, a request for bytes that are not final yet waits until the
        part that contains them is finished, for at most three target
        durations. A request for the whole segment or for a suffix range
        waits until the whole segment is finished.
        """
        data = writer.segment_bytes(name)
        if data is None:
            return _not_in_window(name)
        text = writer.playlist()
        if name in _finished_segments(text):
            return _finished_range(data, requested)
        timeout_s = _BLOCK_TARGET_DURATIONS * _playlist_position(text).target_duration_s
        if requested is None or requested.start is None:
            return await self._whole_segment(writer, name, requested, timeout_s)
        if requested.start > len(data):
            return _Refused(
                416,
                "invalid-range",
                f"bytes from {requested.start} of segment {name!r} are beyond the "
                f"{len(data)} bytes written so far and the preload hint; reload "
                "the playlist",
                "bytes */*",
            )
        offset = requested.start if requested.last is None else requested.last
        end = await writer.wait_for_part(name, offset, timeout_s)
        data = writer.segment_bytes(name)
        if data is None:
            return _not_in_window(name)
        if name in _finished_segments(writer.playlist()):
            return _finished_range(data, requested)
        if end is None:
            return _part_timeout(name, offset, timeout_s)
        stop = end if requested.last is None else requested.last + 1
        return _Served(
            data[requested.start : stop], f"bytes {requested.start}-{stop - 1}/*"
        )

    async def _whole_segment(
        self,
        writer: HlsSource,
        name: str,
        requested: _RangeRequest | None,
        timeout_s: float,
    ) -> _Served | _Refused:
        """Wait part by part until segment ``name`` is finished; serve ``requested``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        offset = 0
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            end = await writer.wait_for_part(name, offset, max(remaining, 0.0))
            data = writer.segment_bytes(name)
            if data is None:
                return _not_in_window(name)
            if name in _finished_segments(writer.playlist()):
                return _finished_range(data, requested)
            if end is None:
                return _part_timeout(name, offset, timeout_s)
            offset = end

    async def _control_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in CONTROL_ACTIONS:
            return _error(
                404,
                "not-found",
                f"unknown stream control action {action[:40]!r}; use one of "
                f"{', '.join(CONTROL_ACTIONS)}",
            )
        authorized = self._authorize(request, PUBLISH_SCOPES)
        if isinstance(authorized, web.Response):
            return authorized
        handler = self._control.get(action)
        if handler is None:
            return _error(
                503,
                "unavailable",
                f"stream control {action!r} is not available on this box",
            )
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body

        subject = authorized.claims.subject
        try:
            result = await handler(body)
        except NightboxError as err:
            self.control_actions[f"{action}-rejected"] += 1
            _LOGGER.warning(
                "Stream control %s from %s was rejected: %s", action, subject, err
            )
            status = 400 if isinstance(err, ValueError) else 409
            reason = err.code if isinstance(err, StudioError) else "rejected"
            return _error(status, reason, str(err))
        except Exception:
            # A bug in a handler is logged with its traceback and gets a 500
            # response, so the server goes on serving.
            self.control_actions[f"{action}-failed"] += 1
            _LOGGER.exception("Stream control %s from %s failed", action, subject)
            return _error(
                500,
                "internal-error",
                f"stream control {action!r} failed on the box; see its log",
            )
        self.control_actions[action] += 1
        _LOGGER.info("Stream control %s by %s", action, subject)
        return web.json_response({"ok": True, "action": action, "result": result})

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """Return the request's JSON object body, {} when it has none."""
        try:
            async with asyncio.timeout(self._header_timeout_s):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._invalid(
                request,
                413,
                "too-large",
                f"the request body is over {_MAX_BODY_BYTES} bytes; send less",
            )
        except TimeoutError:
            return self._invalid(
                request,
                408,
                "timeout",
                f"the request body did not arrive within {self._header_timeout_s:g} "
                "s; send it at once",
            )
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return self._invalid(
                request, 400, "invalid", f"the request body is not valid JSON: {err}"
            )
        except RecursionError:
            # json.loads recurses once per nested array or object.
            return self._invalid(
                request,
                400,
                "invalid",
                "the request body nests arrays or objects too deeply; send a flat "
                "JSON object",
            )
        if not isinstance(body, dict):
            return self._invalid(
                request, 400, "invalid", "the request body must be a JSON object"
            )
        return body

    def _invalid(
        self, request: web.Request, status: int, reason: str, message: str
    ) -> web.Response:
        """Count and log an invalid request; return its error response."""
        self.bad_requests[reason] += 1
        self._log_limited(request, reason, message)
        return _error(status, reason, message)

    def _authorize(
        self, request: web.Request, scopes: tuple[str, ...]
    ) -> _Authorized | web.Response:
        """Check the request's token; return it, or the error response to send."""
        self.last_request_at = self._clock.now()
        header = request.headers.get("Authorization")
        from_query = header is None
        token = request.query.get("token") if header is None else None
        try:
            if header is not None:
                match = _BEARER.match(header)
                if match is None:
                    raise TokenError(
                        "malformed",
                        "the Authorization header is not 'Bearer <token>'; send the "
                        "edge token in that form",
                    )
                token = match[1]
            claims = self._tokens.verify_bearer(token, scopes)
        except TokenError as err:
            return self._reject(request, err)
        if scopes == VIEW_SCOPES:
            self._count_viewer(claims.token_id)
        return _Authorized(token or "", claims, from_query)

    def _reject(self, request: web.Request, err: TokenError) -> web.Response:
        """Count and log a rejected token; return the error response."""
        self.rejections[err.reason] += 1
        reason = err.reason
        if reason == "missing":
            message = (
                "the request carries no token; send 'Authorization: Bearer <token>' "
                "or a token query parameter with a stream:view edge token"
            )
        else:
            message = err.message
        self._log_limited(request, reason, message)
        if reason == "wrong-scope":
            return _error(403, reason, message)
        # RFC 6750, section 3: a 401 names the scheme and the token error.
        error = "invalid_request" if reason == "missing" else "invalid_token"
        challenge = f'Bearer realm="nightbox-stream", error="{error}"'
        return _error(401, reason, message, headers={"WWW-Authenticate": challenge})

    def _log_limited(self, request: web.Request, reason: str, message: str) -> None:
        skipped = self._log_limiter.allow(reason)
        if skipped is None:
            return
        # The message names a token by its id only, never its text.
        _LOGGER.warning(
            "Studio HTTP rejected %s %s from %s (%s): %s%s",
            request.method,
            request.path,
            request.remote,
            reason,
            message,
            skipped_suffix(skipped),
        )

    def _count_viewer(self, token_id: str) -> None:
        if token_id not in self._viewers and len(self._viewers) >= _MAX_TRACKED_VIEWERS:
            self._forget_old_viewers()
            if len(self._viewers) >= _MAX_TRACKED_VIEWERS:
                return
        self._viewers[token_id] = self._monotonic()

    def _forget_old_viewers(self) -> None:
        cutoff = self._monotonic() - _VIEWER_WINDOW_S
        for token_id in [key for key, seen in self._viewers.items() if seen < cutoff]:
            del self._viewers[token_id]


def _file_limit_share() -> int:
    """Return the share of the open file limit the stream's connections may use."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, soft // _FILE_LIMIT_SHARE)


@dataclass(frozen=True, slots=True)
class _RangeRequest:
    """One byte range of a ``Range`` header (RFC 9110, section 14.1.2).

    ``start`` and ``last`` are inclusive offsets; ``start`` None with
    ``last`` set requests the last ``last`` bytes.
    """

    start: int | None
    last: int | None


@dataclass(frozen=True, slots=True)
class _Served:
    """The bytes to send, and their Content-Range for a 206 response."""

    data: bytes
    content_range: str | None


@dataclass(frozen=True, slots=True)
class _Refused:
    """An error response for a segment request, with its Content-Range if any."""

    status: int
    reason: str
    message: str
    content_range: str | None = None

    def response(self) -> web.Response:
        headers = (
            {} if self.content_range is None else {"Content-Range": self.content_range}
        )
        return _error(self.status, self.reason, self.message, headers=headers)


_BYTE_RANGE = re.compile(r"^bytes=(\d{0,15})-(\d{0,15})\Z")


def _requested_range(header: str | None) -> _RangeRequest | str | None:
    """Return the byte range a ``Range`` header requests, or why it is invalid.

    None means the whole resource: no header, another unit, or several
    ranges, which a server may answer with the whole resource (RFC 9110,
    section 14.2).
    """
    if header is None:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes=") or "," in header:
        return None
    match = _BYTE_RANGE.match("bytes=" + header[6:].replace(" ", ""))
    if match is None or match[1] == match[2] == "":
        return (
            f"the Range header {header[:40]!r} is invalid; give bytes=START-END, "
            "bytes=START- or bytes=-LENGTH"
        )
    if match[1] == "":
        suffix = int(match[2])
        if suffix == 0:
            return "the Range header asks for the last 0 bytes; ask for 1 or more"
        return _RangeRequest(None, suffix)
    start = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < start:
        return (
            f"the Range header {header[:40]!r} ends before it starts; give "
            "bytes=START-END with END at least START"
        )
    return _RangeRequest(start, last)


def _finished_range(data: bytes, requested: _RangeRequest | None) -> _Served | _Refused:
    """Return the bytes of a finished segment for ``requested``."""
    size = len(data)
    if requested is None:
        return _Served(data, None)
    if requested.start is None:
        assert requested.last is not None
        start = max(size - requested.last, 0)
        stop = size
    else:
        start = requested.start
        stop = size if requested.last is None else min(requested.last + 1, size)
    if start >= size:
        return _Refused(
            416,
            "invalid-range",
            f"the requested range starts at byte {start}, outside the segment's "
            f"{size} bytes",
            f"bytes */{size}",
        )
    return _Served(data[start:stop], f"bytes {start}-{stop - 1}/{size}")


def _not_in_window(name: str) -> _Refused:
    return _Refused(
        404,
        "not-found",
        f"segment {name!r} is not in the live window; reload the playlist",
    )


def _part_timeout(name: str, offset: int, timeout_s: float) -> _Refused:
    return _Refused(
        503,
        "timeout",
        f"the part at byte {offset} of segment {name!r} was not finished within "
        f"{timeout_s:g} s; the stream may be stalled, retry",
    )


def _part_too_far_ahead(
    position: _PlaylistPosition, msn: int, part: int | None
) -> str | None:
    """Return why a blocking request's ``_HLS_part`` is too far ahead, or None."""
    if part is None or msn < position.open_msn:
        return None
    if position.part_target_s < 1.0:
        limit = int(_ADVANCE_PART_SECONDS / position.part_target_s)
    else:
        limit = int(_ADVANCE_PART_SECONDS)
    last_part = position.open_parts - 1
    # For a later segment, at least the parts up to ``part`` of it are
    # still to come after the playlist's last part.
    ahead = part - last_part if msn == position.open_msn else part + 1
    if ahead <= limit:
        return None
    return (
        f"_HLS_msn={msn} _HLS_part={part} is more than {limit} parts ahead of the "
        f"playlist's last part (segment {position.open_msn} part {last_part}); "
        "reload the playlist without it"
    )


def _blocking_request(
    request: web.Request,
) -> tuple[int, int | None] | str | None:
    """Return the ``_HLS_msn`` and ``_HLS_part`` of a blocking reload, if any.

    A string is the reason the request is invalid.
    """
    msn_text = request.query.get("_HLS_msn")
    part_text = request.query.get("_HLS_part")
    if msn_text is None:
        if part_text is not None:
            return "_HLS_part needs _HLS_msn; add it"
        return None
    numbers: list[int] = []
    for name, text in (("_HLS_msn", msn_text), ("_HLS_part", part_text)):
        if text is None:
            continue
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            return f"{name}={text[:20]!r} is invalid; give a whole number from 0"
        numbers.append(int(text))
    return numbers[0], numbers[1] if len(numbers) > 1 else None


def _stopped() -> web.Response:
    return _error(
        503,
        "stopped",
        "the stream is not running; start it from the console or a creator station",
    )


def _error(
    status: int, reason: str, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": reason, "message": message}, status=status, headers=headers
    )
