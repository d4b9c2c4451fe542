"""Idempotent request handling shared by every mutating bus API.

A request carries an idempotency key. Its answer, success or refusal, is
committed in the same transaction as the change it made, so a retry after a
lost reply or a crash of the box between commit and reply gets the first
answer again and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.clock import Clock
from appliance.errors import PayloadError
from appliance.kits._validation import idempotency_key
from appliance.store import Store, Transaction

_LOGGER = logging.getLogger(__name__)

# Clock difference tolerated between a requester and the box, in seconds.
DEADLINE_SKEW_S = 2.0


class Refusal(Exception):
    """A final, stored "no" to a request, with a code and a sentence.

    Raise it from a request handler before the handler writes anything.
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


RequestHandler = Callable[[Transaction, dict[str, Any]], dict[str, Any]]


def request_fingerprint(data: dict[str, Any]) -> str:
    """Return a digest of a request's data, the idempotency key left out."""
    fields = {key: value for key, value in data.items() if key != "idempotency_key"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class RequestServer:
    """Runs request handlers with idempotency, deadlines and clear errors."""

    def __init__(self, bus: Bus, store: Store, clock: Clock) -> None:
        self._bus = bus
        self._store = store
        self._clock = clock
        # Replies go only to a device's own reply topic, which the ACL lets
        # only that device read, never to events or another site.
        self._reply_topic = re.compile(
            rf"^{re.escape(bus.topics.prefix)}/(box|reader|terminal)/[^/+#]+/reply$"
        )
        self.counts: Counter[str] = Counter()

    def serve(self, service: str, action: str, handler: RequestHandler) -> None:
        """Serve requests on ``api/<service>/<action>`` with ``handler``."""
        name = f"{service}/{action}"

        async def on_request(incoming: Incoming) -> None:
            await self._handle(name, incoming, handler)

        self._bus.subscribe(self._bus.topics.api(service, action), on_request)

    async def _handle(
        self, name: str, incoming: Incoming, handler: RequestHandler
    ) -> None:
        problem = self._response_topic_problem(incoming.response_topic)
        if problem is not None:
            # Without a reply topic of a device, the requester would never
            # learn the outcome, so nothing is done.
            self.counts["invalid-response-topic"] += 1
            self._bus.reject(incoming, problem, "invalid-response-topic")
            return
        try:
            message = envelope.decode(incoming.payload)
            if self._past_deadline(message.body.get("deadline")):
                self.counts["deadline-exceeded"] += 1
                await self._bus.respond(
                    incoming,
                    error=(
                        "deadline-exceeded",
                        "the request arrived after its deadline",
                    ),
                )
                return
            data = message.data
            key = idempotency_key(data)
        except PayloadError as err:
            self.counts["invalid-request"] += 1
            self._bus.reject(incoming, str(err), "invalid-request")
            await self._bus.respond(incoming, error=("invalid-request", str(err)))
            return
        fingerprint = request_fingerprint(data)
        stored = self._store.query_one(
            "SELECT action, fingerprint, reply FROM requests WHERE key = ?", (key,)
        )
        if stored is not None:
            await self._replay(name, incoming, key, fingerprint, stored)
            return
        try:
            reply = self._run(name, key, fingerprint, handler, data)
        except PayloadError as err:
            self.counts["invalid-request"] += 1
            self._bus.reject(incoming, str(err), "invalid-request")
            await self._bus.respond(incoming, error=("invalid-request", str(err)))
            return
        await self._send(incoming, reply)

    def _response_topic_problem(self, topic: str | None) -> str | None:
        if not topic:
            return "the request has no response topic; set it to your reply topic"
        if not self._reply_topic.match(topic):
            return (
                f"response topic {topic!r:.80} is not a device reply topic like "
                f"{self._bus.topics.reply('reader', 'kit-1')!r}"
            )
        return None

    def _past_deadline(self, deadline: Any) -> bool:
        """Return whether the request's deadline has passed.

        Raises PayloadError when ``deadline`` is present but no Unix time.
        """
        # The deadline is the requester's wall time, so only a box whose own
        # clock is vouched for can judge it, and then with a skew allowance.
        # The broker also drops stale requests through the MQTT 5 Message
        # Expiry Interval that Bus.request sets.
        if deadline is None:
            return False
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            raise PayloadError(
                f"field 'deadline' must be Unix seconds, not {deadline!r:.40}"
            )
        if not self._clock.trusted:
            return False
        return self._clock.now() > deadline + DEADLINE_SKEW_S

    def _run(
        self,
        name: str,
        key: str,
        fingerprint: str,
        handler: RequestHandler,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        with self._store.transaction() as transaction:
            transaction.execute("SAVEPOINT handler")
            try:
                reply: dict[str, Any] = {"ok": True, "data": handler(transaction, data)}
                self.counts[f"{name}:ok"] += 1
            except Refusal as refusal:
                transaction.execute("ROLLBACK TO handler")
                reply = {
                    "ok": False,
                    "error": {
                        "code": refusal.code,
                        "message": refusal.message,
                        **refusal.details,
                    },
                }
                self.counts[f"{name}:{refusal.code}"] += 1
            transaction.execute("RELEASE handler")
            transaction.execute(
                "INSERT INTO requests (key, action, fingerprint, reply, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    name,
                    fingerprint,
                    json.dumps(reply, separators=(",", ":")),
                    time.time(),
                ),
            )
        return reply

    async def _replay(
        self,
        name: str,
        incoming: Incoming,
        key: str,
        fingerprint: str,
        stored: tuple[Any, ...],
    ) -> None:
        action, stored_fingerprint, reply_text = stored
        # A retry repeats the request exactly. The same key on another request
        # is a client bug, and a replay would return another request's reply.
        # Rows stored before schema version 2 have no fingerprint and replay.
        if action != name or stored_fingerprint not in (None, fingerprint):
            self.counts["idempotency-key-reused"] += 1
            used_for = action if action != name else f"another {action} request"
            self._bus.reject(incoming, f"key {key!r} reused", "idempotency-key-reused")
            await self._bus.respond(
                incoming,
                error=(
                    "idempotency-key-reused",
                    f"key {key!r} was already used for {used_for}; use a new key",
                ),
            )
            return
        self.counts["replayed"] += 1
        _LOGGER.info("Replayed the stored answer to %s request %s", name, key)
        await self._send(incoming, json.loads(reply_text))

    async def _send(self, incoming: Incoming, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            await self._bus.respond(incoming, data=reply.get("data", {}))
            return
        await self._bus.respond(incoming, error=reply.get("error", {}))
