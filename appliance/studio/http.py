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

The access log writes the method, the path without its query string, the
status and the size, never a token.
"""

from __future__ import annotations

import json
import logging
import re
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
# A blocking request for a segment further ahead of the playlist's last one
# is rejected at once (RFC 8216bis, section 6.2.5.2).
_MAX_MSN_AHEAD = 2
_DEFAULT_TARGET_DURATION_S = 2.0
_SHUTDOWN_TIMEOUT_S = 2.0
# Rejections are logged at most once per reason in this many seconds, with
# the number not logged since.
_REJECTION_LOG_INTERVAL_S = 5.0
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
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            media_sequence = int(line.partition(":")[2])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target_duration_s = float(line.partition(":")[2])
        elif line.startswith("#EXT-X-PART:"):
            parts += 1
        elif line and not line.startswith("#"):
            segments += 1
            parts = 0
    return _PlaylistPosition(media_sequence + segments, parts, target_duration_s)


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
    """Serves the studio's live stream and controls over HTTP with edge tokens."""

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
    ) -> None:
        unknown = sorted(set(control or {}) - set(CONTROL_ACTIONS))
        if unknown:
            raise ValueError(
                f"unknown stream control action {unknown[0]!r}; use one of "
                f"{', '.join(CONTROL_ACTIONS)}"
            )
        self._writer_provider = writer_provider
        self._clock = clock
        self._host = host
        self._requested_port = port
        self._control = dict(control or {})
        self._monotonic = monotonic
        self._tokens = tokens
        self._rejection_logged: dict[str, tuple[float, int]] = {}
        self._viewers: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

        self.segments_served = 0
        self.playlists_served = 0
        self.control_actions: Counter[str] = Counter()
        # Requests rejected for their token, by reason (see TokenError).
        self.rejections: Counter[str] = Counter()
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

    def state(self) -> dict[str, Any]:
        """Return the server's counters for the studio's telemetry."""
        return {
            "listening": self._port is not None,
            "host": self._host,
            "port": self._port,
            "segments_served": self.segments_served,
            "playlists_served": self.playlists_served,
            "viewers": self.viewers,
            "control_actions": dict(self.control_actions),
            "rejections": dict(self.rejections),
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
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise OSError(
                err.errno,
                f"cannot listen for the stream on {self._host}:"
                f"{self._requested_port} ({err.strerror}); set [studio] http_port "
                "to a free port, or 0 to pick one",
            ) from err
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        _LOGGER.info("Studio HTTP server listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        """Stop listening; requests still held for a blocking reload end."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        _LOGGER.info(
            "Studio HTTP server on port %s stopped after %d segments served",
            self._port,
            self.segments_served,
        )
        self._port = None

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
        if isinstance(blocking, web.Response):
            return blocking
        writer = self._writer_provider()
        if writer is None:
            return _stopped()

        text = writer.playlist()
        if blocking is not None:
            msn, part = blocking
            position = _playlist_position(text)
            if msn > position.open_msn + _MAX_MSN_AHEAD:
                return _error(
                    400,
                    "invalid",
                    f"_HLS_msn={msn} is more than {_MAX_MSN_AHEAD} segments ahead "
                    f"of the playlist (live segment {position.open_msn}); reload it",
                )
            if not position.contains(msn, part):
                timeout_s = _BLOCK_TARGET_DURATIONS * position.target_duration_s
                try:
                    await writer.wait_for(msn, part, timeout_s)
                except ValueError as err:
                    return _error(400, "invalid", str(err))
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
        data = writer.segment_bytes(name)
        if data is None:
            return _error(
                404,
                "not-found",
                f"segment {name!r} is not in the live window; reload the playlist",
            )

        content_type = _SEGMENT_TYPES["." + match[1]]
        # The segment being written grows, so no cache may keep a copy.
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        status = 200
        if "Range" in request.headers:
            selected = _byte_range(request, len(data))
            if isinstance(selected, web.Response):
                return selected
            start, end = selected
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            data = data[start:end]
            status = 206
        self.segments_served += 1
        return web.Response(
            body=data, status=status, content_type=content_type, headers=headers
        )

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
        body = await _json_body(request)
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
            return _error(status, "rejected", str(err))
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
        self._log_rejection(request, reason, message)
        if reason == "wrong-scope":
            return _error(403, reason, message)
        # RFC 6750, section 3: a 401 names the scheme and the token error.
        error = "invalid_request" if reason == "missing" else "invalid_token"
        challenge = f'Bearer realm="nightbox-stream", error="{error}"'
        return _error(401, reason, message, headers={"WWW-Authenticate": challenge})

    def _log_rejection(self, request: web.Request, reason: str, message: str) -> None:
        now = self._monotonic()
        last_at, skipped = self._rejection_logged.get(reason, (float("-inf"), 0))
        if now - last_at < _REJECTION_LOG_INTERVAL_S:
            self._rejection_logged[reason] = (last_at, skipped + 1)
            return
        self._rejection_logged[reason] = (now, 0)
        # The message names a token by its id only, never its text.
        _LOGGER.warning(
            "Studio HTTP rejected %s %s from %s (%s): %s%s",
            request.method,
            request.path,
            request.remote,
            reason,
            message,
            f" ({skipped} more since the last one logged)" if skipped else "",
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


def _blocking_request(
    request: web.Request,
) -> tuple[int, int | None] | web.Response | None:
    """Return the ``_HLS_msn`` and ``_HLS_part`` of a blocking reload, if any."""
    msn_text = request.query.get("_HLS_msn")
    part_text = request.query.get("_HLS_part")
    if msn_text is None:
        if part_text is not None:
            return _error(400, "invalid", "_HLS_part needs _HLS_msn; add it")
        return None
    numbers: list[int] = []
    for name, text in (("_HLS_msn", msn_text), ("_HLS_part", part_text)):
        if text is None:
            continue
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            return _error(
                400,
                "invalid",
                f"{name}={text[:20]!r} is invalid; give a whole number from 0",
            )
        numbers.append(int(text))
    return numbers[0], numbers[1] if len(numbers) > 1 else None


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | web.Response:
    """Return the [start, end) of a ``Range`` request within ``size`` bytes."""
    try:
        wanted = request.http_range
    except ValueError:
        return _error(
            416,
            "invalid-range",
            "the Range header is invalid; give bytes=START-END",
            headers={"Content-Range": f"bytes */{size}"},
        )
    start, end, _step = wanted.indices(size)
    if start >= end:
        return _error(
            416,
            "invalid-range",
            f"the requested range is outside the {size} bytes written so far",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """Return the request's JSON object body, {} when it has none."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(
            413,
            "too-large",
            f"the request body is over {_MAX_BODY_BYTES} bytes; send less",
        )
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return _error(400, "invalid", f"the request body is not valid JSON: {err}")
    if not isinstance(body, dict):
        return _error(400, "invalid", "the request body must be a JSON object")
    return body


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
