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
and connections are limited in total and per client address. The access
log writes the method, the path without its query string, the status and
the size, never a token.

This module contains the routes and the server's life cycle. The token checks
and error responses are in ``_http_auth``, the reading of the writer's
playlist in ``_http_playlist``, byte ranges and held parts in
``_http_ranges``, and the connection limits in ``_http_limits``.
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
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from appliance.clock import Clock
from appliance.errors import NightboxError
from appliance.studio._actions import StudioError
from appliance.studio._http_auth import (
    PUBLISH_SCOPES,
    VIEW_SCOPES,
    Authorized,
    RequestGate,
    error_response,
)
from appliance.studio._http_limits import (
    AcceptFailureFilter,
    ConnectionLimits,
    LogLimiter,
    ServerErrorLog,
    listen_guarded,
    skipped_suffix,
)
from appliance.studio._http_playlist import (
    BLOCK_TARGET_DURATIONS,
    HlsSource,
    blocking_request,
    part_too_far_ahead,
    playlist_ended,
    playlist_position,
    with_token,
)
from appliance.studio._http_ranges import Refused, read_segment_range, requested_range
from appliance.studio.config import listen_failure_advice
from appliance.tokens import EdgeTokens

__all__ = [
    "CONTROL_ACTIONS",
    "ControlHandler",
    "HlsSource",
    "StudioHttp",
    "WriterProvider",
]

_LOGGER = logging.getLogger(__name__)
_ACCESS_LOGGER = logging.getLogger(f"{__name__}.access")

# Returns the writer of the running stream, or None while it is stopped.
WriterProvider = Callable[[], HlsSource | None]
# Handles one control action: takes the JSON object of the request body and
# returns a JSON object for the reply. Raises a NightboxError to reject it.
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

CONTROL_ACTIONS = ("start", "stop", "clip", "drop-open", "overlay")

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
_SHUTDOWN_TIMEOUT_S = 2.0
# Rejections are logged at most once per reason in this many seconds, with
# the number not logged since.
_REJECTION_LOG_INTERVAL_S = 5.0
# A connection must send a complete request head (or request body) within
# this many seconds of connecting or of its last response, or it is closed.
DEFAULT_HEADER_TIMEOUT_S = 5.0
# Connections admitted at once, in total and from one client address. A
# player keeps a few connections open. The total stays well below the
# process's open file limit, because SQLite, clips and the broker share it.
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 32
_FILE_LIMIT_SHARE = 4


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
        self._header_timeout_s = header_timeout_s
        self._limits = ConnectionLimits(
            min(max_connections, _file_limit_share()), max_connections_per_address
        )
        self._log_limiter = LogLimiter(_REJECTION_LOG_INTERVAL_S, monotonic)
        self._accept_failures = AcceptFailureFilter(self._log_limiter)
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
        self._gate = RequestGate(
            tokens,
            self._log_limiter,
            _LOGGER,
            monotonic,
            self.rejections,
            self.bad_requests,
        )

    @property
    def port(self) -> int:
        """The TCP port the server listens on (RuntimeError before start())."""
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
        return self._gate.viewers

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
        self._port = await listen_guarded(
            runner,
            self._host,
            self._requested_port,
            self._limits,
            self._reject_connection,
            lambda err: (
                f"cannot listen for the stream on {self._host}:"
                f"{self._requested_port} ({err.strerror}); "
                f"{listen_failure_advice(err.errno)}"
            ),
        )
        self._runner = runner
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
        """Stop listening and end the requests still held for a blocking reload."""
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
        text = "" if writer is None else writer.playlist()
        # A stopped stream's playlist ends, so players stop waiting for more.
        if writer is None or playlist_ended(text):
            return web.json_response({"ok": False, "reason": "stopped"}, status=503)
        if playlist_position(text).open_msn == 0:
            return web.json_response({"ok": False, "reason": "starting"}, status=503)
        return web.json_response({"ok": True})

    async def _playlist(self, request: web.Request) -> web.Response:
        authorized = self._authorize(request, VIEW_SCOPES)
        if isinstance(authorized, web.Response):
            return authorized
        blocking = blocking_request(request)
        if isinstance(blocking, str):
            return self._gate.invalid(request, 400, "invalid", blocking)
        writer = self._writer_provider()
        if writer is None:
            return _stopped()

        text = writer.playlist()
        # An ended playlist gets no more segments, so a blocking reload gets
        # it at once and the player learns that the stream stopped.
        if blocking is not None and not playlist_ended(text):
            msn, part = blocking
            position = playlist_position(text)
            too_far = part_too_far_ahead(position, msn, part)
            if too_far is not None:
                return self._gate.invalid(request, 400, "invalid", too_far)
            if not position.contains(msn, part):
                timeout_s = BLOCK_TARGET_DURATIONS * position.target_duration_s
                try:
                    await writer.wait_for(msn, part, timeout_s)
                except ValueError as err:
                    return self._gate.invalid(request, 400, "invalid", str(err))
                text = writer.playlist()
                if not (
                    playlist_position(text).contains(msn, part) or playlist_ended(text)
                ):
                    return error_response(
                        503,
                        "timeout",
                        f"segment {msn} part {part} did not appear within "
                        f"{timeout_s:g} s; the stream may be stalled, retry",
                    )

        if authorized.from_query:
            text = with_token(text, authorized.token)
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
            return error_response(404, "not-found", f"no stream file {name[:64]!r}")
        authorized = self._authorize(request, VIEW_SCOPES)
        if isinstance(authorized, web.Response):
            return authorized
        writer = self._writer_provider()
        if writer is None:
            return _stopped()
        requested = requested_range(request.headers.get("Range"))
        if isinstance(requested, str):
            return self._gate.invalid(request, 416, "invalid-range", requested)
        served = await read_segment_range(writer, name, requested)
        if isinstance(served, Refused):
            if served.status == 416:
                self._gate.count_invalid(request, served.reason, served.message)
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

    async def _control_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in CONTROL_ACTIONS:
            return error_response(
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
            return error_response(
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
            return error_response(status, reason, str(err))
        except Exception:
            # A bug in a handler is logged with its traceback and gets a 500
            # response, so the server goes on serving.
            self.control_actions[f"{action}-failed"] += 1
            _LOGGER.exception("Stream control %s from %s failed", action, subject)
            return error_response(
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
            return self._gate.invalid(
                request,
                413,
                "too-large",
                f"the request body is over {_MAX_BODY_BYTES} bytes; send less",
            )
        except TimeoutError:
            return self._gate.invalid(
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
            return self._gate.invalid(
                request, 400, "invalid", f"the request body is not valid JSON: {err}"
            )
        except RecursionError:
            # json.loads recurses once per nested array or object.
            return self._gate.invalid(
                request,
                400,
                "invalid",
                "the request body nests arrays or objects too deeply; send a flat "
                "JSON object",
            )
        if not isinstance(body, dict):
            return self._gate.invalid(
                request, 400, "invalid", "the request body must be a JSON object"
            )
        return body

    def _authorize(
        self, request: web.Request, scopes: tuple[str, ...]
    ) -> Authorized | web.Response:
        """Check the request's token; return it, or the error response to send."""
        self.last_request_at = self._clock.now()
        return self._gate.authorize(request, scopes)


def _file_limit_share() -> int:
    """Return the share of the open file limit the stream's connections may use."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, soft // _FILE_LIMIT_SHARE)


def _stopped() -> web.Response:
    return error_response(
        503,
        "stopped",
        "the stream is not running; start it from the console or a creator station",
    )
