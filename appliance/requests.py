"""Idempotent, authorised request handling shared by every bus API.

A mutating request carries an idempotency key. Its reply, success or
refusal, is committed in the same transaction as the change it made. A
retry after a lost reply, or after a crash of the box between commit and
reply, gets the first reply again and changes nothing.

Requests from terminals carry an edge token (see :mod:`appliance.tokens`)
that must allow the endpoint's scope. Requests are committed in groups: all
requests waiting when the worker runs share one durable SQLite commit, each
inside its own savepoint, and every reply is sent only after that commit.

An MQTT 3.1.1 requester, such as a reader running umqtt, cannot set the MQTT
5 Response Topic and Correlation Data properties. It puts ``reply_to`` and
``corr`` in the request envelope instead, and the reply payload repeats
``corr`` at its top level.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.client import Bus, Incoming
from appliance.clock import Clock
from appliance.errors import PayloadError
from appliance.store import Store, Transaction
from appliance.tokens import EdgeTokens, TokenClaims, TokenError

_LOGGER = logging.getLogger(__name__)

# Clock difference tolerated between a requester and the box, in seconds.
DEADLINE_SKEW_S = 2.0
# Requests committed together at most; a group this size commits in a few
# milliseconds, which bounds the wait of the last request in it.
MAX_GROUP = 256
# Passes of the event loop with no message waiting in the bus client that
# end a group.
_IDLE_PASSES = 2


class Refusal(Exception):
    """A final, stored "no" to a request, with a code and a sentence.

    Raise it from a request handler; the handler's writes are rolled back.
    Writes registered with :meth:`also_commit` then run in the transaction
    that stores the refusal.
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.writes: list[Callable[[Transaction], None]] = []

    def also_commit(self, write: Callable[[Transaction], None]) -> Refusal:
        """Run ``write`` after the rollback, in the transaction that stores this.

        A retry with the same key gets the stored refusal and runs nothing
        again, so ``write`` takes effect once. Returns this refusal.
        """
        self.writes.append(write)
        return self


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request as a handler receives it.

    ``requester`` is the device id from the request's topic, ``requester_kind``
    its kind (``terminal``, ``reader`` or ``box``), and ``token`` the verified
    edge token, None for a reader on an endpoint that readers may use.
    """

    key: str | None
    data: dict[str, Any]
    requester: str
    requester_kind: str
    token: TokenClaims | None


RequestHandler = Callable[[Transaction, Request], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    name: str
    handler: RequestHandler
    scope: str | None
    readers: bool
    mutating: bool
    stores_reply: bool


@dataclass(slots=True)
class _Pending:
    endpoint: _Endpoint
    request: Request
    fingerprint: str
    # The reply to a request from the bus goes to its reply topic, and the
    # reply to an in-process call to its future.
    incoming: Incoming | None = None
    future: asyncio.Future[dict[str, Any]] | None = None


_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,64}\Z")
# The envelope's correlation id: 1-64 lowercase hex digits.
_CORR = re.compile(r"^[0-9a-f]{1,64}\Z")


def idempotency_key(data: dict[str, Any]) -> str:
    """Return the request's ``idempotency_key`` or raise PayloadError."""
    value = data.get("idempotency_key")
    if not isinstance(value, str) or not _KEY.match(value):
        raise PayloadError(
            "field 'idempotency_key' must be 8-64 letters, digits or ._:- "
            f"(a UUID works), not {value!r:.60}"
        )
    return value


def request_fingerprint(data: dict[str, Any]) -> str:
    """Return a digest of a request's data, the idempotency key left out.

    Raises PayloadError for data nested too deeply to serialise.
    """
    fields = {key: value for key, value in data.items() if key != "idempotency_key"}
    try:
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    except RecursionError as err:
        raise PayloadError(
            "field 'data' is nested too deeply; send flat request fields"
        ) from err
    return hashlib.sha256(canonical.encode()).hexdigest()


class RequestServer:
    """Runs request handlers with tokens, idempotency, deadlines and clear errors."""

    def __init__(
        self, bus: Bus, store: Store, clock: Clock, tokens: EdgeTokens | None = None
    ) -> None:
        self._bus = bus
        self._store = store
        self._clock = clock
        self._tokens = tokens
        # A request arrives on its sender's own topic, which the ACL lets only
        # that device publish, so the topic names the requester.
        self._request_topic = re.compile(
            rf"{re.escape(bus.topics.prefix)}/(box|reader|terminal)/([^/+#]+)"
            r"/api/([^/+#]+)/([^/+#]+)"
        )
        bus.subscribe(bus.topics.all_requests, self._on_request)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, _Endpoint] = {}
        self.counts: Counter[str] = Counter()
        self.groups = 0

    def serve(
        self,
        service: str,
        action: str,
        handler: RequestHandler,
        *,
        scope: str | None = None,
        readers: bool = False,
        mutating: bool = True,
        stores_reply: bool = True,
    ) -> None:
        """Serve requests for ``api/<service>/<action>`` with ``handler``.

        Devices send them on ``<kind>/<id>/api/<service>/<action>``.

        ``scope`` is the token scope a terminal needs; ``readers`` lets
        readers call the endpoint without a token, because the broker's ACL
        already limits which readers may publish there. A ``mutating``
        endpoint needs an idempotency key and stores its reply. A query
        does neither.

        ``stores_reply=False`` makes a mutating endpoint whose reply carries
        a secret, such as a fresh token, that must not rest in the store. Its
        replies are neither stored nor replayed, so a retry runs the handler
        again; writes a refusal registers with :meth:`Refusal.also_commit`
        still commit.
        """
        endpoint = _Endpoint(
            f"{service}/{action}",
            handler,
            scope,
            readers,
            mutating,
            stores_reply=mutating and stores_reply,
        )
        self._endpoints[endpoint.name] = endpoint

    async def start(self) -> None:
        """Start the worker that commits queued requests and sends their replies."""
        self._worker = asyncio.create_task(self._work(), name="request-worker")

    async def stop(self) -> None:
        """Stop the worker; requests still queued get no reply and are retried."""
        for task in [self._worker, *self._sending]:
            await cancel_and_wait(task)

    async def _on_request(self, incoming: Incoming) -> None:
        match = self._request_topic.fullmatch(incoming.topic)
        if match is None:
            self.counts["invalid-request-topic"] += 1
            self._bus.reject(
                incoming,
                "requests go to <kind>/<id>/api/<service>/<action> of a box, "
                "reader or terminal",
                "invalid-request-topic",
            )
            return
        kind, device, service, action = match.groups()
        reply_topic = self._bus.topics.reply(kind, device)
        mqtt311 = incoming.response_topic is None
        if mqtt311:
            try:
                incoming = _route_from_envelope(incoming)
            except PayloadError as err:
                # Without a readable envelope there is no reply_to, so the
                # request is counted under what is wrong with its payload,
                # and no reply can be sent.
                self.counts["invalid-request"] += 1
                self._bus.reject(
                    incoming,
                    f"{err}; a request without a response topic gets no reply "
                    "when its envelope cannot be read",
                    "invalid-request",
                )
                return
        if incoming.response_topic != reply_topic:
            # The reply goes only to the sender's own reply topic, which the
            # ACL lets only that device read. Without it, the requester would
            # never learn the outcome, so nothing is done.
            self.counts["invalid-response-topic"] += 1
            self._bus.reject(
                incoming,
                f"response topic {incoming.response_topic!r:.80} is not the "
                f"sender's reply topic {reply_topic!r}",
                "invalid-response-topic",
            )
            return
        endpoint = self._endpoints.get(f"{service}/{action}")
        if endpoint is None:
            self.counts["unknown-action"] += 1
            known = ", ".join(sorted(self._endpoints))
            self._bus.reject(
                incoming, f"no action {service}/{action}", "unknown-action"
            )
            await self._bus.respond(
                incoming,
                error=(
                    "unknown-action",
                    f"api/{service}/{action} is not served; use one of {known}",
                ),
            )
            return
        await self._accept(endpoint, incoming, kind, device, mqtt311=mqtt311)

    async def _accept(
        self,
        endpoint: _Endpoint,
        incoming: Incoming,
        kind: str,
        device: str,
        *,
        mqtt311: bool = False,
    ) -> None:
        try:
            message = envelope.decode(incoming.payload)
            incoming = _with_envelope_corr(incoming, message.body, mqtt311)
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
            key = idempotency_key(data) if endpoint.mutating else None
            fingerprint = request_fingerprint(data) if endpoint.mutating else ""
        except PayloadError as err:
            await self._invalid(incoming, err)
            return
        try:
            claims = self._authorise(endpoint, kind, device, message.body.get("token"))
        except TokenError as err:
            self.counts[f"token-{err.reason}"] += 1
            self._bus.reject(incoming, str(err), f"token-{err.reason}")
            await self._bus.respond(
                incoming,
                error={
                    "code": f"token-{err.reason}",
                    "message": err.message,
                    "reason": err.reason,
                },
            )
            return
        request = Request(key, data, device, kind, claims)
        self._queue.put_nowait(
            _Pending(endpoint, request, fingerprint, incoming=incoming)
        )

    async def call(
        self,
        service: str,
        action: str,
        data: dict[str, Any],
        *,
        token: str | None,
        terminal: str,
    ) -> dict[str, Any]:
        """Run a request from a terminal in this process; return its reply.

        The request passes the same token, idempotency and commit path as one
        from the bus, so the box's own terminal UI needs no broker. The reply
        is ``{"ok": True, "data": …}`` or ``{"ok": False, "error": …}``.
        """
        endpoint = self._endpoints.get(f"{service}/{action}")
        if endpoint is None:
            raise KeyError(f"no endpoint api/{service}/{action} is served")
        try:
            key = idempotency_key(data) if endpoint.mutating else None
            fingerprint = request_fingerprint(data) if endpoint.mutating else ""
            claims = self._authorise(endpoint, "terminal", terminal, token)
        except TokenError as err:
            self.counts[f"token-{err.reason}"] += 1
            return _error_reply(f"token-{err.reason}", err.message, reason=err.reason)
        except PayloadError as err:
            self.counts["invalid-request"] += 1
            return _error_reply("invalid-request", str(err))
        request = Request(key, data, terminal, "terminal", claims)
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait(_Pending(endpoint, request, fingerprint, future=future))
        return await future

    def _authorise(
        self, endpoint: _Endpoint, kind: str, device: str, token: Any
    ) -> TokenClaims | None:
        if endpoint.scope is None or (endpoint.readers and kind == "reader"):
            # NOTE: the local bus has no TLS, so a reader's identity rests on
            # its broker password and the ACL of its own request topic.
            return None
        if self._tokens is None:
            raise TokenError("missing", "this box issues no tokens")
        return self._tokens.verify(token, endpoint.scope, device)

    async def _invalid(self, incoming: Incoming, err: PayloadError) -> None:
        self.counts["invalid-request"] += 1
        self._bus.reject(incoming, str(err), "invalid-request")
        await self._bus.respond(incoming, error=("invalid-request", str(err)))

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

    async def _work(self) -> None:
        while True:
            group = [await self._queue.get()]
            await self._gather_group(group)
            replies = self._commit(group)
            self.groups += 1
            task = asyncio.create_task(self._send_all(group, replies))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _gather_group(self, group: list[_Pending]) -> None:
        """Add the requests that have already arrived to ``group``.

        The bus client hands over one message per few passes of the event
        loop, so the worker yields while messages wait in the client, and
        for one pass more, which reads what waits in the socket. An idle bus
        costs that one pass, a few microseconds, before the commit.
        """
        idle_passes = 0
        while len(group) < MAX_GROUP and idle_passes < _IDLE_PASSES:
            await asyncio.sleep(0)
            while len(group) < MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            if self._bus.queued_messages == 0:
                idle_passes += 1

    def _commit(self, group: list[_Pending]) -> list[dict[str, Any]]:
        """Run every request of ``group`` in one transaction; return the replies."""
        try:
            with self._store.transaction() as transaction:
                return [self._run(transaction, pending) for pending in group]
        except sqlite3.Error as err:
            # The transaction rolled back, so no request of the group took
            # effect, and each requester's retry runs it again.
            _LOGGER.error(
                "Could not commit %d requests: %s; they will be retried",
                len(group),
                err,
            )
            self.counts["store-error"] += len(group)
            error = {
                "code": "store-error",
                "message": "the box could not store the request; retry it",
            }
            return [{"ok": False, "error": error} for _ in group]

    def _run(self, transaction: Transaction, pending: _Pending) -> dict[str, Any]:
        endpoint, request = pending.endpoint, pending.request
        if endpoint.stores_reply:
            stored = transaction.execute(
                "SELECT action, fingerprint, reply FROM requests"
                " WHERE key = ? AND requester IN (?, '') ORDER BY requester DESC",
                (request.key, _requester(request)),
            ).fetchone()
            if stored is not None:
                return self._replay(endpoint.name, pending, stored)
        transaction.execute("SAVEPOINT handler")
        store_reply = endpoint.stores_reply
        try:
            reply: dict[str, Any] = {
                "ok": True,
                "data": endpoint.handler(transaction, request),
            }
            self.counts[f"{endpoint.name}:ok"] += 1
        except Refusal as refusal:
            transaction.execute("ROLLBACK TO handler")
            reply = _error_reply(refusal.code, refusal.message, **refusal.details)
            self.counts[f"{endpoint.name}:{refusal.code}"] += 1
            if refusal.writes and not self._commit_writes(
                transaction, pending, refusal
            ):
                reply = _error_reply(
                    "internal-error", "the box failed to handle the request; retry it"
                )
                store_reply = False
        except PayloadError as err:
            # An invalid request is not stored, so the fixed request may
            # reuse its key.
            transaction.execute("ROLLBACK TO handler")
            self.counts["invalid-request"] += 1
            self._reject(pending, str(err), "invalid-request")
            reply = _error_reply("invalid-request", str(err))
            store_reply = False
        except Exception as err:  # a handler bug must not stop the worker
            transaction.execute("ROLLBACK TO handler")
            _LOGGER.exception(
                "Request %s (key %s) failed: %s", endpoint.name, request.key, err
            )
            self.counts["internal-error"] += 1
            reply = _error_reply(
                "internal-error", "the box failed to handle the request; retry it"
            )
            store_reply = False
        transaction.execute("RELEASE handler")
        if store_reply:
            transaction.execute(
                "INSERT INTO requests"
                " (requester, key, action, fingerprint, reply, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    _requester(request),
                    request.key,
                    endpoint.name,
                    pending.fingerprint,
                    orjson.dumps(reply).decode(),
                    time.time(),
                ),
            )
        return reply

    def _commit_writes(
        self, transaction: Transaction, pending: _Pending, refusal: Refusal
    ) -> bool:
        """Run the writes of ``refusal``; return False when one of them failed."""
        try:
            for write in refusal.writes:
                write(transaction)
        except Exception as err:  # a handler bug must not stop the worker
            transaction.execute("ROLLBACK TO handler")
            _LOGGER.exception(
                "Request %s (key %s) was refused (%s), and storing what the "
                "refusal records failed: %s",
                pending.endpoint.name,
                pending.request.key,
                refusal.code,
                err,
            )
            self.counts["internal-error"] += 1
            return False
        return True

    def _replay(
        self, name: str, pending: _Pending, stored: tuple[Any, ...]
    ) -> dict[str, Any]:
        action, stored_fingerprint, reply_text = stored
        key = pending.request.key
        fingerprint = pending.fingerprint
        # A retry repeats the request exactly. The same key on another request
        # is a client bug, and a replay would return another request's reply.
        # Rows stored before schema version 2 have no fingerprint and replay.
        if action != name or stored_fingerprint not in (None, fingerprint):
            self.counts["idempotency-key-reused"] += 1
            used_for = action if action != name else f"another {action} request"
            self._reject(pending, f"key {key!r} reused", "idempotency-key-reused")
            return _error_reply(
                "idempotency-key-reused",
                f"key {key!r} was already used for {used_for}; use a new key",
            )
        self.counts["replayed"] += 1
        _LOGGER.info("Replayed the stored answer to %s request %s", name, key)
        reply: dict[str, Any] = orjson.loads(reply_text)
        return reply

    def _reject(self, pending: _Pending, reason: str, kind: str) -> None:
        if pending.incoming is not None:
            self._bus.reject(pending.incoming, reason, kind)
        else:
            _LOGGER.warning(
                "Rejected a %s request of %s (%s): %s",
                pending.endpoint.name,
                pending.request.requester,
                kind,
                reason,
            )

    async def _send_all(
        self, group: list[_Pending], replies: list[dict[str, Any]]
    ) -> None:
        for pending, reply in zip(group, replies, strict=True):
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(reply)
        results = await asyncio.gather(
            *(
                self._send(pending.incoming, reply)
                for pending, reply in zip(group, replies, strict=True)
                if pending.incoming is not None
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            # The replies are stored, so the requesters' retries get them.
            _LOGGER.warning(
                "Could not send %d of %d replies: %s",
                len(failures),
                len(group),
                failures[0],
            )

    async def _send(self, incoming: Incoming, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            await self._bus.respond(incoming, data=reply.get("data", {}))
            return
        await self._bus.respond(incoming, error=reply.get("error", {}))


def _route_from_envelope(incoming: Incoming) -> Incoming:
    """Take the reply route of an MQTT 3.1.1 request from its envelope.

    Returns ``incoming`` with ``response_topic`` set to the envelope's
    ``reply_to``, or unchanged when a valid envelope has no string
    ``reply_to``. A valid ``corr`` is copied too, so even an error reply
    sent before the envelope is checked names its request.

    Raises PayloadError when the payload is not a JSON object (too large,
    not UTF-8 JSON, another type), or when an envelope without a string
    ``reply_to`` has an invalid field. An envelope with ``reply_to`` is
    checked later, and its errors are replied to.
    """
    body = envelope.load(incoming.payload)
    if not isinstance(body.get("reply_to"), str):
        envelope.validate(body)
        return incoming
    incoming = dataclasses.replace(incoming, response_topic=body["reply_to"])
    corr = body.get("corr")
    if isinstance(corr, str) and _CORR.match(corr):
        incoming = dataclasses.replace(
            incoming, correlation=corr.encode(), envelope_corr=corr
        )
    return incoming


def _with_envelope_corr(
    incoming: Incoming, body: dict[str, Any], required: bool
) -> Incoming:
    """Return ``incoming`` with the envelope's ``corr``, for its reply to repeat.

    Raises PayloadError when ``corr`` is present and not 1-64 lowercase hex
    digits, or missing while ``required`` (an MQTT 3.1.1 request).
    """
    corr = body.get("corr")
    if corr is None:
        if required:
            raise PayloadError(
                "field 'corr' is missing; an MQTT 3.1.1 request needs 'corr' "
                "(1-64 lowercase hex digits) beside 'reply_to' to match its reply"
            )
        return incoming
    if not isinstance(corr, str) or not _CORR.match(corr):
        raise PayloadError(
            f"field 'corr' must be 1-64 lowercase hex digits, not {corr!r:.80}"
        )
    return dataclasses.replace(
        incoming,
        correlation=incoming.correlation or corr.encode(),
        envelope_corr=corr,
    )


def _requester(request: Request) -> str:
    """Return ``<kind>/<id>`` of the device that sent ``request``."""
    return f"{request.requester_kind}/{request.requester}"


def _error_reply(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, **details}}
