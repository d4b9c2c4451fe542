"""Commands and bundles from the upstream broker, and the results sent back.

A message on ``.../box/<box>/cmnd/<name>`` is a signed command, one on
``.../box/<box>/bundle/<type>`` or ``nightbox/<site>/bundle/<type>`` a
signed bundle. Both go to the box's remote management, which checks the
signature and returns the ``data`` of the result published on
``.../box/<box>/stat/result``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from appliance.bus.topics import Topics
from appliance.remote.document_types import MAX_BUNDLE_BYTES, MAX_COMMAND_BYTES

_LOGGER = logging.getLogger(__name__)

_NONCE = re.compile(r"^[0-9a-f]{32}\Z")


class Management(Protocol):
    """The interface of the box's remote management that the sync service calls."""

    async def handle_command(self, name: str, payload: bytes) -> dict[str, Any]:
        """Check and run a signed command, and return the result ``data``."""
        ...

    async def handle_bundle(self, bundle_type: str, payload: bytes) -> dict[str, Any]:
        """Check and apply a signed bundle, and return the result ``data``."""
        ...

    def telemetry(self) -> dict[str, Any]:
        """Return the box's telemetry ``data``."""
        ...


class AssetDelivery(Protocol):
    """The asset cache's side of blob delivery, which the sync service feeds.

    See :mod:`appliance.assets.delivery` for the topics and the protocol.
    """

    def offer(self, topic: str, payload: bytes) -> bool:
        """Take a blob chunk, or return False when ``topic`` is not a chunk topic."""
        ...

    async def follow(self, client: Any) -> None:
        """Subscribe to the chunks of the blobs to fetch, for one connection."""
        ...


@dataclass(frozen=True, slots=True)
class Inbound:
    """The request of an upstream message: a ``command`` or ``bundle`` and its name."""

    kind: str
    name: str


def max_payload_bytes(inbound: Inbound) -> int:
    """Return the largest payload that remote management accepts for ``inbound``."""
    return MAX_COMMAND_BYTES if inbound.kind == "command" else MAX_BUNDLE_BYTES


class InboundQueue:
    """Commands and bundles waiting for remote management, bounded by count and bytes.

    A flood of large bundles must not grow the box's memory, so the queue
    contains at most ``max_messages`` messages and ``max_bytes`` bytes of
    payload in all.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # Payload bytes of the messages in the queue.
        self.bytes = 0
        self._queue: asyncio.Queue[tuple[Inbound, bytes]] = asyncio.Queue()

    def __len__(self) -> int:
        return self._queue.qsize()

    def offer(self, inbound: Inbound, payload: bytes) -> bool:
        """Queue a message, or return False and queue nothing when it does not fit."""
        if len(self) >= self.max_messages:
            return False
        if self.bytes + len(payload) > self.max_bytes:
            return False
        self._queue.put_nowait((inbound, payload))
        self.bytes += len(payload)
        return True

    async def get(self) -> tuple[Inbound, bytes]:
        """Remove and return the oldest message, waiting for one if none is queued."""
        inbound, payload = await self._queue.get()
        self.bytes -= len(payload)
        return inbound, payload


class LimitedLog:
    """Warnings logged at most once per key every ``interval_s`` seconds.

    The next warning of a key says how many of that key were skipped since
    the last one was logged.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        # The time each key was last logged, and how many were skipped since.
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``key`` was logged within the interval."""
        now = self._clock()
        last_at, skipped = self._last.get(key, (-math.inf, 0))
        if now - last_at < self._interval_s:
            self._last[key] = (last_at, skipped + 1)
            return
        self._last[key] = (now, 0)
        if skipped:
            message += " (%d more like it since the last report)"
            args = (*args, skipped)
        self._logger.warning(message, *args)


class InboundTopics:
    """The upstream topic filters of a box, and the request of each topic."""

    def __init__(self, topics: Topics, box_id: str) -> None:
        self.filters = (
            topics.command(box_id, "+"),
            topics.bundle(box_id, "+"),
            topics.bundle(None, "+"),
        )
        self._prefixes = (
            ("command", topics.command(box_id, "")),
            ("bundle", topics.bundle(box_id, "")),
            ("bundle", topics.bundle(None, "")),
        )

    def parse(self, topic: str) -> Inbound | None:
        """Return the request of ``topic``, or None for any other topic."""
        for kind, prefix in self._prefixes:
            if topic.startswith(prefix):
                name = topic.removeprefix(prefix)
                if name and "/" not in name:
                    return Inbound(kind, name)
        return None


async def handle_inbound(
    management: Management | None, inbound: Inbound, payload: bytes
) -> dict[str, Any]:
    """Pass a command or bundle to ``management`` and return the result ``data``.

    Without management, or when it raises, the result is a rejection with
    the reason ``unavailable`` or ``error``.
    """
    if management is None:
        return rejection(
            inbound,
            payload,
            "unavailable",
            "this box runs without remote management, so it accepts no "
            f"{inbound.kind}s; enable [fleet] in its configuration",
        )
    try:
        if inbound.kind == "command":
            return await management.handle_command(inbound.name, payload)
        return await management.handle_bundle(inbound.name, payload)
    except Exception:
        # RemoteManagement turns bad input into a rejection result, so an
        # exception here is a bug. The operator still gets a result.
        _LOGGER.exception(
            "Remote management failed on %s %r", inbound.kind, inbound.name
        )
        return rejection(
            inbound,
            payload,
            "error",
            f"the box failed while handling the {inbound.kind}; see the box's log",
        )


def rejection(
    inbound: Inbound, payload: bytes, reason: str, message: str
) -> dict[str, Any]:
    """Return the result ``data`` of a rejected command or bundle."""
    return {
        "kind": inbound.kind,
        "type": inbound.name,
        "nonce": _nonce(payload),
        "ok": False,
        "reason": reason,
        "message": message,
    }


def busy_rejection(
    inbound: Inbound, payload: bytes, waiting: int, waiting_bytes: int
) -> dict[str, Any] | None:
    """Return the ``busy`` result of a dropped command, or None without a nonce.

    Only a command's nonce is read, because a command of at most
    MAX_COMMAND_BYTES is cheap to parse but a bundle may have 4 MiB. A
    result without a nonce matches no request, so none is sent for it.
    """
    if inbound.kind != "command" or len(payload) > MAX_COMMAND_BYTES:
        return None
    result = rejection(
        inbound,
        payload,
        "busy",
        f"{waiting} commands and bundles ({waiting_bytes} bytes) were waiting "
        "on the box; the command was dropped, so send it again later",
    )
    return result if result["nonce"] is not None else None


def _nonce(payload: bytes) -> str | None:
    """Return the document's nonce, or None when the payload has no readable one."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    nonce = document.get("nonce")
    return nonce if isinstance(nonce, str) and _NONCE.match(nonce) else None
