"""Commands and bundles from the upstream broker, and the results sent back.

A message on ``.../box/<box>/cmnd/<name>`` is a signed command, one on
``.../box/<box>/bundle/<type>`` or ``nightbox/<site>/bundle/<type>`` a
signed bundle. Both go to the box's remote management, which checks the
signature and returns the ``data`` of the result published on
``.../box/<box>/stat/result``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from appliance.bus.topics import Topics

_LOGGER = logging.getLogger(__name__)

_NONCE = re.compile(r"^[0-9a-f]{32}\Z")


class Management(Protocol):
    """The interface of the box's remote management that the sync service calls."""

    async def handle_command(self, name: str, payload: bytes) -> dict[str, Any]:
        """Check and run a signed command; return the result ``data``."""
        ...

    async def handle_bundle(self, bundle_type: str, payload: bytes) -> dict[str, Any]:
        """Check and apply a signed bundle; return the result ``data``."""
        ...

    def telemetry(self) -> dict[str, Any]:
        """Return the box's telemetry ``data``."""
        ...


@dataclass(frozen=True, slots=True)
class Inbound:
    """The request of an upstream message: a ``command`` or ``bundle`` and its name."""

    kind: str
    name: str


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
        # Management never raises on bad input, so this is a bug. The
        # operator still gets a result.
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
