"""Edge token checks and error responses of the studio's HTTP server.

:class:`RequestGate` checks the token of each request, counts the viewers
that fetch the stream, and counts and logs every rejected or invalid
request. Its log lines are rate-limited per reason and name a token by its
id only, never its text. Every error response is a JSON object with the
reason and a message that states what to do next (:func:`error_response`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from appliance.studio._http_limits import LogLimiter, skipped_suffix
from appliance.tokens import EdgeTokens, TokenClaims, TokenError

__all__ = [
    "PUBLISH_SCOPES",
    "VIEW_SCOPES",
    "Authorized",
    "RequestGate",
    "error_response",
]

VIEW_SCOPES = ("stream:view", "stream:publish")
PUBLISH_SCOPES = ("stream:publish",)

# A viewer counts while a request with its token arrived this recently.
_VIEWER_WINDOW_S = 30.0
# Token ids remembered for the viewer count, at most.
_MAX_TRACKED_VIEWERS = 10_000
_BEARER = re.compile(r"^Bearer +(\S+) *\Z", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Authorized:
    """The token of an accepted request and where it came from."""

    token: str
    claims: TokenClaims
    from_query: bool


class RequestGate:
    """Checks request tokens, counts viewers, and counts and logs rejections.

    ``rejections`` and ``bad_requests`` are the server's counters, shared so
    its telemetry reads them; log lines go to ``logger``.
    """

    def __init__(
        self,
        tokens: EdgeTokens,
        log_limiter: LogLimiter,
        logger: logging.Logger,
        monotonic: Callable[[], float],
        rejections: Counter[str],
        bad_requests: Counter[str],
    ) -> None:
        self._tokens = tokens
        self._log_limiter = log_limiter
        self._logger = logger
        self._monotonic = monotonic
        self._rejections = rejections
        self._bad_requests = bad_requests
        self._viewers: dict[str, float] = {}

    @property
    def viewers(self) -> int:
        """The number of distinct tokens that fetched the stream in the last 30 s."""
        self._forget_old_viewers()
        return len(self._viewers)

    def authorize(
        self, request: web.Request, scopes: tuple[str, ...]
    ) -> Authorized | web.Response:
        """Check the request's token and return it, or the error response to send."""
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
        return Authorized(token or "", claims, from_query)

    def invalid(
        self, request: web.Request, status: int, reason: str, message: str
    ) -> web.Response:
        """Count and log an invalid request, and return its error response."""
        self.count_invalid(request, reason, message)
        return error_response(status, reason, message)

    def count_invalid(self, request: web.Request, reason: str, message: str) -> None:
        """Count and log an invalid request whose response is built elsewhere."""
        self._bad_requests[reason] += 1
        self._log_limited(request, reason, message)

    def _reject(self, request: web.Request, err: TokenError) -> web.Response:
        """Count and log a rejected token, and return the error response."""
        self._rejections[err.reason] += 1
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
            return error_response(403, reason, message)
        # RFC 6750, section 3: a 401 names the scheme and the token error.
        error = "invalid_request" if reason == "missing" else "invalid_token"
        challenge = f'Bearer realm="nightbox-stream", error="{error}"'
        return error_response(
            401, reason, message, headers={"WWW-Authenticate": challenge}
        )

    def _log_limited(self, request: web.Request, reason: str, message: str) -> None:
        skipped = self._log_limiter.allow(reason)
        if skipped is None:
            return
        # The message names a token by its id only, never its text.
        self._logger.warning(
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


def error_response(
    status: int, reason: str, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Build the JSON error response ``{"error": reason, "message": message}``."""
    return web.json_response(
        {"error": reason, "message": message}, status=status, headers=headers
    )
