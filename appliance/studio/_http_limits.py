"""Limits that keep the studio's HTTP server up under slow or hostile clients.

The server admits at most a fixed number of connections in total and per
client address. It sends the others a 503 response and closes them. Log
lines about rejected connections, malformed requests and failed accepts are
rate-limited per reason, with the number left out since the last line, so a
flood of bad clients cannot fill the disk with log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = [
    "AcceptFailureFilter",
    "ConnectionLimits",
    "GuardedSite",
    "LogLimiter",
    "ServerErrorLog",
    "listen_guarded",
]

# The message asyncio's default exception handler logs when accept() fails
# for lack of file descriptors or memory (CPython 3.11, selector_events.py).
_ACCEPT_FAILURE_MESSAGE = "socket.accept() out of system resource"


class LogLimiter:
    """Allows one log line per reason per interval and counts the others."""

    def __init__(self, interval_s: float, monotonic: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, reason: str) -> int | None:
        """Return the number of lines left out since the last one, or None to skip.

        None means a line for ``reason`` was logged less than the interval ago.
        """
        now = self._monotonic()
        last_at, skipped = self._last.get(reason, (float("-inf"), 0))
        if now - last_at < self._interval_s:
            self._last[reason] = (last_at, skipped + 1)
            return None
        self._last[reason] = (now, 0)
        return skipped


def skipped_suffix(skipped: int) -> str:
    """Return the suffix that counts the lines left out, or ''."""
    return f" ({skipped} more since the last one logged)" if skipped else ""


class ConnectionLimits:
    """Counts open connections in total and per client address."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        if max_total < 1 or max_per_address < 1:
            raise ValueError(
                f"invalid connection limits {max_total} in total and "
                f"{max_per_address} per address: give 1 or more"
            )
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.by_address: Counter[str] = Counter()
        self.total = 0

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``, or return why it is rejected."""
        if self.total >= self.max_total:
            return "too-many-connections"
        if self.by_address[address] >= self.max_per_address:
            return "too-many-from-address"
        self.total += 1
        self.by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        """Forget a closed connection from ``address``."""
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


def _busy_response(reason: str, message: str) -> bytes:
    body = json.dumps({"error": reason, "message": message}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _GuardedConnection(asyncio.Protocol):
    """One TCP connection, handed to aiohttp only when the limits admit it."""

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        limits: ConnectionLimits,
        on_rejected: Callable[[str, str], None],
    ) -> None:
        self._make_handler = make_handler
        self._limits = limits
        self._on_rejected = on_rejected
        self._handler: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        rejected = self._limits.admit(address)
        if rejected is not None:
            self._on_rejected(rejected, address)
            assert isinstance(transport, asyncio.Transport)
            transport.write(
                _busy_response(
                    rejected,
                    "the box has too many open connections on this server; retry in a "
                    "few seconds",
                )
            )
            transport.close()
            return
        self._address = address
        self._handler = self._make_handler()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            return self._handler.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        handler, self._handler = self._handler, None
        if handler is None:
            return
        self._limits.release(self._address)
        handler.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass :class:`ConnectionLimits` first."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        on_rejected: Callable[[str, str], None],
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._limits = limits
        self._on_rejected = on_rejected

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limits, on_rejected = self._limits, self._on_rejected
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedConnection(server, limits, on_rejected),
            self._host,
            self._port,
            backlog=self._backlog,
        )


async def listen_guarded(
    runner: web.BaseRunner,
    host: str,
    port: int,
    limits: ConnectionLimits,
    on_rejected: Callable[[str, str], None],
    describe_failure: Callable[[OSError], str],
) -> int:
    """Set up ``runner`` and listen on ``host:port`` behind ``limits``; return the port.

    When the address cannot be bound, cleans the runner up and raises an
    OSError with the same errno and ``describe_failure(err)`` as its message.
    """
    await runner.setup()
    site = GuardedSite(runner, host, port, limits, on_rejected)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise OSError(err.errno, describe_failure(err)) from err
    return int(runner.addresses[0][1])


class ServerErrorLog(logging.LoggerAdapter[logging.Logger]):
    """The logger aiohttp's request handlers write their errors to.

    A malformed request (a header line over the limit, a bad request line)
    is counted in ``bad_requests`` by its aiohttp error class and logged in
    one line without a traceback, at most once per class per interval.
    The text of the error is left out, because it may echo a header such as
    Authorization. Any other error keeps its traceback, at most once per
    exception class per interval.
    """

    def __init__(
        self, logger: logging.Logger, limiter: LogLimiter, bad_requests: Counter[str]
    ) -> None:
        super().__init__(logger, {})
        self._limiter = limiter
        self._bad_requests = bad_requests

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if error is True:
            error = sys.exc_info()[1]
        if isinstance(error, HttpProcessingError):
            reason = type(error).__name__
            self._bad_requests[reason] += 1
            skipped = self._limiter.allow(f"bad-request-{reason}")
            if skipped is not None:
                client = args[0] if args else "unknown"
                self.logger.warning(
                    "Studio HTTP rejected a malformed request from %s with %d (%s)%s",
                    client,
                    error.code,
                    reason,
                    skipped_suffix(skipped),
                )
            return
        key = type(error).__name__ if isinstance(error, BaseException) else str(msg)
        skipped = self._limiter.allow(f"server-error-{key}")
        if skipped is None:
            return
        if skipped:
            msg = f"{msg}{skipped_suffix(skipped)}"
        self.logger.log(level, msg, *args, **kwargs)


class AcceptFailureFilter(logging.Filter):
    """Turns asyncio's accept-failure tracebacks into one counted line per interval.

    When the process runs out of file descriptors, asyncio logs a traceback
    for every failed accept() of a listening socket, many times a second.
    Installed on the ``asyncio`` logger, this filter counts them in
    ``failures`` and lets through one line without a traceback per interval.
    """

    def __init__(self, limiter: LogLimiter) -> None:
        super().__init__()
        self._limiter = limiter
        self.failures = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_ACCEPT_FAILURE_MESSAGE):
            return True
        self.failures += 1
        skipped = self._limiter.allow("accept-failure")
        if skipped is None:
            return False
        error = record.exc_info[1] if record.exc_info else None
        cause = error.strerror if isinstance(error, OSError) else None
        record.msg = (
            "The box cannot accept a network connection (%s) and retries in a "
            "second; raise the open file limit (ulimit -n) or reduce the number "
            "of clients%s"
        )
        record.args = (cause or "out of system resources", skipped_suffix(skipped))
        record.exc_info = None
        record.exc_text = None
        return True
