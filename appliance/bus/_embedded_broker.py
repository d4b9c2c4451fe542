"""MQTT 5.0 broker that runs in-process, for ``nightbox demo`` without mosquitto.

The box and the tests use mosquitto. On a machine with only Python the bus
falls back to this broker, which enforces the same passwords and
:class:`~provisioning.acl.AccessPolicy`. Section numbers refer to the OASIS
MQTT Version 5.0 standard.

Supported: MQTT 5 over TCP, username and password, will messages, QoS 0 and 1
in both directions, retained messages, wildcard subscriptions with No Local,
Retain As Published and Retain Handling, inbound topic aliases, message
expiry and session takeover. QoS 2 PUBLISH packets get PUBREC and PUBCOMP,
but their messages go to subscribers at QoS 1 at most.

Not supported: MQTT 3.1.1 and older (rejected), TLS, WebSockets, enhanced
authentication (CONNACK 0x8C), subscription identifiers and shared
subscriptions (announced as unavailable in CONNACK), outbound topic aliases
and the Will Delay Interval (wills are published at once). Sessions end with
their connection: every CONNACK has Session Present 0, and unacknowledged QoS 1
messages are not resent, because MQTT 5 resends only to a resumed session (4.4).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from appliance.bus import _mqtt_codec as mqtt
from appliance.bus._mqtt_codec import PacketError, PacketType, Publish, ReasonCode
from provisioning.acl import Access, AccessPolicy, validate_filter
from provisioning.credentials import hash_password, verify_password

_LOGGER = logging.getLogger(__name__)

_MAX_PACKET_SIZE = 1024 * 1024  # announced in CONNACK (3.2.2.3.6)
_TOPIC_ALIAS_MAXIMUM = 10  # inbound aliases per connection (3.2.2.3.8)
_OUTBOX_LIMIT = 10_000  # messages queued for one client before DISCONNECT 0x97
_CONNECT_TIMEOUT_S = 10.0  # from TCP accept to CONNECT
_CLOSE_GRACE_S = 2.0  # to flush a last DISCONNECT before the socket is aborted
_ACL_CACHE_SIZE = 1024  # access decisions cached per client
# Without Receive Maximum in CONNACK a client may have 65535 QoS 2 messages
# waiting for PUBREL (3.2.2.3.3).
_RECEIVE_MAXIMUM = 65535

_Subscribers = dict["_Connection", mqtt.SubscriptionRequest]


@dataclass
class BrokerStats:
    """Counters since the broker was created. They only grow."""

    connections: int = 0  # accepted CONNECT packets
    rejected_connections: int = 0  # bad password, protocol or will topic
    messages_in: int = 0  # PUBLISH packets received, denied ones included
    messages_out: int = 0  # PUBLISH packets sent to subscribers
    denied_publishes: int = 0
    denied_subscriptions: int = 0
    malformed_packets: int = 0  # malformed or out-of-protocol packets
    dropped_messages: int = 0  # expired, or larger than the client accepts


def _filter_matches(filter_levels: list[str], topic_levels: list[str]) -> bool:
    """Match a split topic filter against a split topic name (4.7)."""
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False  # 4.7.2
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


class EmbeddedBroker:
    """MQTT 5.0 broker in-process for the demo on machines without mosquitto.

    ``passwords`` maps usernames to clear passwords, and None allows anonymous
    clients. ``policy`` decides who may publish and subscribe to which topics,
    and None allows everything. Sessions end with their connection, and
    retained messages are kept in memory only. The broker runs no tasks of its
    own: each connection is an asyncio protocol driven by the event loop, and
    stop() aborts them all.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        passwords: Mapping[str, str] | None = None,
        policy: AccessPolicy | None = None,
    ) -> None:
        self._host = host
        self._port = port
        # Only PBKDF2 hashes are kept, and verify_password compares in constant time.
        self._password_hashes = None
        if passwords is not None:
            self._password_hashes = {u: hash_password(p) for u, p in passwords.items()}
        self._policy = policy
        self.stats = BrokerStats()
        self._stopping = False
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Connection] = {}
        self._subscribers: dict[str, _Subscribers] = {}
        self._wildcard_filters: dict[str, list[str]] = {}
        self._retained: dict[str, Publish] = {}

    @property
    def host(self) -> str:
        """The address the broker listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port, which after start() is the bound port even when 0 was given."""
        return self._port

    async def start(self) -> None:
        """Bind the listening socket, raising OSError if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the embedded MQTT broker is already started")
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self._host, self._port
        )
        # NOTE: a host name with several addresses binds several sockets, each
        # with its own port when port 0 was given. The port property is the first.
        self._port = self._server.sockets[0].getsockname()[1]
        _LOGGER.info("Embedded MQTT broker listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        """Close the listener and abort every connection without a DISCONNECT."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        closed = [connection.abort() for connection in list(self._connections)]
        if closed:
            await asyncio.wait(closed)
        await server.wait_closed()
        _LOGGER.info("Embedded MQTT broker on %s:%d stopped", self._host, self._port)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _open_session(self, connection: _Connection, connect: mqtt.Connect) -> int:
        """Check ``connect``, register its client id and return the CONNACK reason."""
        reason = self._authenticate(connect)
        will = connect.will
        if not reason and will and not connection.may(will.topic, Access.WRITE):
            # Like mosquitto, check the will topic when the client connects.
            self.stats.denied_publishes += 1
            reason = ReasonCode.NOT_AUTHORIZED
        if reason:
            return reason
        client_id = cast(str, connection.client_id)
        previous = self._sessions.get(client_id)
        if previous is not None:
            # 3.1.4-3: close the old connection with 0x8E. Its will is kept
            # back when the new connection continues the session (3.1.3.2.2).
            if not connect.clean_start:
                previous.will = None
            previous.close(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
            self._end_session(previous)
        self._sessions[client_id] = connection
        self.stats.connections += 1
        return ReasonCode.SUCCESS

    def _authenticate(self, connect: mqtt.Connect) -> int:
        method = mqtt.PropertyId.AUTHENTICATION_METHOD
        if mqtt.property_value(connect.properties, method) is not None:
            return ReasonCode.BAD_AUTHENTICATION_METHOD  # 3.1.2.11.9
        if self._password_hashes is None:
            return ReasonCode.SUCCESS
        hashed = self._password_hashes.get(connect.username or "")
        # A password that is not UTF-8 cannot match, so "replace" is safe here.
        password = (connect.password or b"").decode("utf-8", "replace")
        if hashed is None or not verify_password(password, hashed):
            return ReasonCode.BAD_USERNAME_OR_PASSWORD
        return ReasonCode.SUCCESS

    def _end_session(self, connection: _Connection) -> None:
        """Drop the subscriptions of ``connection`` and publish its will, once."""
        client_id = connection.client_id
        if client_id and self._sessions.get(client_id) is connection:
            del self._sessions[client_id]
        for topic_filter in connection.subscriptions:
            self._remove_subscriber(topic_filter, connection)
        connection.subscriptions.clear()
        will, connection.will = connection.will, None
        if will is not None and not self._stopping:
            _LOGGER.info(
                "Publishing will of MQTT client %s to %s", client_id, will.topic
            )
            self._publish(will)

    def _publish(self, message: Publish) -> int:
        """Store a retained message, queue it for subscribers, return their number."""
        if message.retain:
            # 3.3.1.3: an empty payload deletes the retained message, and is
            # still forwarded to the current subscribers.
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)
        targets: dict[_Connection, tuple[int, bool]] = {}
        self._match(self._subscribers.get(message.topic, {}), message, targets)
        if self._wildcard_filters:
            topic_levels = message.topic.split("/")
            for topic_filter, filter_levels in self._wildcard_filters.items():
                if _filter_matches(filter_levels, topic_levels):
                    self._match(self._subscribers[topic_filter], message, targets)
        for connection, (qos, retain) in targets.items():
            connection.deliver(message, qos, retain)
        return len(targets)

    @staticmethod
    def _match(
        subscribers: _Subscribers,
        message: Publish,
        targets: dict[_Connection, tuple[int, bool]],
    ) -> None:
        for connection, subscription in subscribers.items():
            if subscription.no_local and connection.client_id == message.publisher:
                continue  # 3.8.3.1
            if not connection.may(message.topic, Access.READ):
                continue  # checked per message too, as mosquitto does
            qos = min(message.qos, subscription.qos)  # 3.8.4
            retain = message.retain and subscription.retain_as_published  # 3.3.1.3
            if connection in targets:
                # 3.3.4: overlapping subscriptions get one copy at the highest QoS.
                previous_qos, previous_retain = targets[connection]
                qos, retain = max(qos, previous_qos), retain or previous_retain
            targets[connection] = (qos, retain)

    def _subscribe(
        self, connection: _Connection, request: mqtt.SubscriptionRequest
    ) -> int:
        """Add one subscription and return its SUBACK reason code (3.9.3)."""
        topic_filter = request.topic_filter
        try:
            validate_filter(topic_filter)
        except ValueError:
            # NOTE: mosquitto 2.0.11 closes the connection with DISCONNECT 0x81
            # instead, which ends every other subscription of the client too.
            return ReasonCode.TOPIC_FILTER_INVALID
        if not connection.may(topic_filter, Access.READ):
            self.stats.denied_subscriptions += 1
            return ReasonCode.NOT_AUTHORIZED
        request.qos = min(request.qos, 1)  # QoS 2 is granted as QoS 1
        connection.subscriptions[topic_filter] = request
        self._subscribers.setdefault(topic_filter, {})[connection] = request
        if "+" in topic_filter or "#" in topic_filter:
            self._wildcard_filters[topic_filter] = topic_filter.split("/")
        return request.qos

    def _unsubscribe(self, connection: _Connection, topic_filter: str) -> int:
        """Remove one subscription and return its UNSUBACK reason code (3.11.3)."""
        if connection.subscriptions.pop(topic_filter, None) is None:
            return ReasonCode.NO_SUBSCRIPTION_EXISTED
        self._remove_subscriber(topic_filter, connection)
        return ReasonCode.SUCCESS

    def _remove_subscriber(self, topic_filter: str, connection: _Connection) -> None:
        subscribers = self._subscribers.get(topic_filter, {})
        subscribers.pop(connection, None)
        if not subscribers:
            self._subscribers.pop(topic_filter, None)
            self._wildcard_filters.pop(topic_filter, None)

    def _send_retained(
        self, connection: _Connection, request: mqtt.SubscriptionRequest
    ) -> None:
        """Queue the retained messages that match a new subscription (3.3.1.3)."""
        filter_levels = request.topic_filter.split("/")
        now = time.monotonic()
        for topic, message in list(self._retained.items()):
            if message.expires_at is not None and message.expires_at <= now:
                del self._retained[topic]
                continue
            matched = _filter_matches(filter_levels, topic.split("/"))
            if matched and connection.may(topic, Access.READ):
                connection.deliver(message, min(message.qos, request.qos), True)


class _Connection(asyncio.Protocol):
    """One client's network connection and its session, which end together."""

    _transport: asyncio.Transport

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closing = False
        self._end_reason = "connection lost"
        self._peer = "unknown peer"
        self._buffer = bytearray()
        # The CONNECT timeout, then the keep alive check, then the close grace.
        self._timer: asyncio.TimerHandle | None = None
        self.client_id: str | None = None
        self.username: str | None = None
        self.will: Publish | None = None
        self.subscriptions: dict[str, mqtt.SubscriptionRequest] = {}
        self._keep_alive_s = 0
        self._last_packet_at = 0.0
        self._receive_maximum = 65535
        self._max_packet_size: int | None = None
        self._topic_aliases: dict[int, str] = {}
        self._unreleased_ids: set[int] = set()  # QoS 2 PUBLISH waiting for PUBREL
        self._inflight: dict[int, Publish] = {}  # QoS 1 PUBLISH waiting for PUBACK
        self._outbox: deque[tuple[Publish, int, bool]] = deque()
        self._writing_paused = False
        self._last_packet_id = 0
        self._acl_cache: dict[tuple[str, Access], bool] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else self._peer
        if self._broker._stopping:
            self._transport.abort()
            return
        self._broker._connections.add(self)
        detail = f"no CONNECT within {_CONNECT_TIMEOUT_S} s"
        self._timer = self._loop.call_later(
            _CONNECT_TIMEOUT_S, self._reject_connect, detail, None
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if exc is not None and not self._closing:
            self._end_reason = f"connection lost: {exc}"
        self._closing = True
        self._broker._connections.discard(self)
        if self.client_id is not None:
            self._broker._end_session(self)
            lost = len(self._inflight) + len(self._outbox)
            _LOGGER.info(
                "MQTT client %s disconnected (%s) with %d messages undelivered",
                self.client_id,
                self._end_reason,
                lost,
            )
        self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._flush_outbox()

    def close(self, reason: ReasonCode | None, detail: str) -> None:
        """Send DISCONNECT with ``reason`` if given, then close the connection.

        A client that has not read its last bytes after _CLOSE_GRACE_S is
        aborted, so that it cannot hold the connection open.
        """
        if self._closing:
            return
        self._closing = True
        self._end_reason = detail
        if reason is not None:
            self._transport.write(mqtt.encode_disconnect(reason))
        self._transport.close()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(_CLOSE_GRACE_S, self._transport.abort)

    def abort(self) -> asyncio.Future[None]:
        """Abort without sending anything and return a future done once closed."""
        self._closing = True
        self._end_reason = "broker stopped"
        self._transport.abort()
        return self._closed

    def may(self, topic: str, access: Access) -> bool:
        """Return whether the policy lets this client read or write ``topic``.

        Decisions are cached per client, so a denial is logged again only after
        the cache of _ACL_CACHE_SIZE decisions was cleared.
        """
        policy = self._broker._policy
        if policy is None:
            return True
        allowed = self._acl_cache.get((topic, access))
        if allowed is None:
            if len(self._acl_cache) >= _ACL_CACHE_SIZE:
                self._acl_cache.clear()
            allowed = policy.allows(self.username, topic, access)
            self._acl_cache[(topic, access)] = allowed
            if not allowed:
                _LOGGER.warning(
                    "Denied %s access to %s for MQTT client %s (user %s)",
                    access,
                    topic,
                    self.client_id,
                    self.username,
                )
        return allowed

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while not self._closing:
                bounds = mqtt.split_packet(buffer, start, _MAX_PACKET_SIZE)
                if bounds is None:
                    break
                body_start, end = bounds
                self._handle_packet(buffer[start], bytes(buffer[body_start:end]))
                start = end
        except PacketError as err:
            self._broker.stats.malformed_packets += 1
            _LOGGER.warning(
                "Closing MQTT client %s at %s: %s (reason 0x%02X)",
                self.client_id or "before CONNECT",
                self._peer,
                err,
                err.reason_code,
            )
            # Before CONNACK there is no session to send a DISCONNECT to.
            self.close(err.reason_code if self.client_id else None, str(err))
        if start:
            self._last_packet_at = self._loop.time()
            del buffer[:start]

    def _handle_packet(self, first: int, body: bytes) -> None:
        packet_type = first >> 4
        write = self._transport.write
        if self.client_id is None:
            self._on_connect(first, body)
        elif packet_type == PacketType.PUBLISH:
            self._on_publish(mqtt.decode_publish(first, body))
        elif packet_type == PacketType.PUBACK:
            self._inflight.pop(mqtt.decode_ack(first, body), None)
            self._flush_outbox()
        elif packet_type == PacketType.PUBREL:
            # 3.7.2.1: PUBCOMP 0x92 when the packet id is not waiting for PUBREL.
            packet_id = mqtt.decode_ack(first, body)
            reason = ReasonCode.SUCCESS
            if packet_id not in self._unreleased_ids:
                reason = ReasonCode.PACKET_ID_NOT_FOUND
            self._unreleased_ids.discard(packet_id)
            write(mqtt.encode_ack(PacketType.PUBCOMP, packet_id, reason))
        elif packet_type == PacketType.SUBSCRIBE:
            self._on_subscribe(*mqtt.decode_subscribe(first, body))
        elif packet_type == PacketType.UNSUBSCRIBE:
            packet_id, filters = mqtt.decode_unsubscribe(first, body)
            reasons = [self._broker._unsubscribe(self, name) for name in filters]
            write(mqtt.encode_subscription_ack(PacketType.UNSUBACK, packet_id, reasons))
        elif packet_type == PacketType.PINGREQ:
            mqtt.check_fixed_header(first, body, empty=True)
            write(mqtt.PINGRESP)
        elif packet_type == PacketType.DISCONNECT:
            disconnect_reason = mqtt.decode_disconnect(first, body)
            if disconnect_reason == ReasonCode.SUCCESS:
                self.will = None  # 3.14.4: only reason 0x00 discards the will
            self.close(None, f"DISCONNECT 0x{disconnect_reason:02X} from the client")
        else:
            # A second CONNECT (3.1.0-2), AUTH without enhanced authentication,
            # PUBREC or PUBCOMP though the broker never sends QoS 2, or a packet
            # that only a server sends.
            name = PacketType(packet_type).name if packet_type else "reserved type 0"
            raise mqtt.protocol_error(f"unexpected {name} packet")

    def _on_connect(self, first: int, body: bytes) -> None:
        if first >> 4 != PacketType.CONNECT:
            raise mqtt.protocol_error("first packet is not CONNECT")  # 3.1.0-1
        try:
            connect = mqtt.decode_connect(first, body)
        except mqtt.UnsupportedProtocolError as err:
            self._reject_connect(str(err), err.reply)
            return
        except PacketError as err:
            # 4.13.1: a CONNACK with the reason code reports an error before CONNACK.
            self._broker.stats.malformed_packets += 1
            self._reject_connect(str(err), mqtt.encode_connack(False, err.reason_code))
            return
        self.username = connect.username
        self.client_id = connect.client_id or f"nightbox-{secrets.token_hex(8)}"
        self.will = connect.will
        if self.will is not None:
            self.will.publisher = self.client_id
        reason = self._broker._open_session(self, connect)
        if reason:
            self.client_id = self.will = None
            detail = f"user {connect.username}: {ReasonCode(reason).name}"
            self._reject_connect(detail, mqtt.encode_connack(False, ReasonCode(reason)))
            return

        properties: mqtt.Properties = [
            (mqtt.PropertyId.MAXIMUM_PACKET_SIZE, _MAX_PACKET_SIZE),
            (mqtt.PropertyId.TOPIC_ALIAS_MAXIMUM, _TOPIC_ALIAS_MAXIMUM),
            (mqtt.PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE, 0),
            (mqtt.PropertyId.SHARED_SUBSCRIPTION_AVAILABLE, 0),
        ]
        if not connect.client_id:
            assigned = mqtt.PropertyId.ASSIGNED_CLIENT_IDENTIFIER
            properties.append((assigned, self.client_id))
        expiry = mqtt.PropertyId.SESSION_EXPIRY_INTERVAL
        if mqtt.property_value(connect.properties, expiry):
            properties.append((expiry, 0))  # 3.2.2.3.2: sessions end on disconnect
        self._transport.write(
            mqtt.encode_connack(False, ReasonCode.SUCCESS, properties)
        )
        _LOGGER.info(
            "MQTT client %s connected from %s as %s",
            self.client_id,
            self._peer,
            self.username,
        )

        if self._timer is not None:
            self._timer.cancel()
        self._receive_maximum = connect.receive_maximum
        self._max_packet_size = connect.max_packet_size
        self._keep_alive_s = connect.keep_alive_s
        self._last_packet_at = self._loop.time()
        if self._keep_alive_s:
            self._check_keep_alive()

    def _reject_connect(self, detail: str, reply: bytes | None) -> None:
        self._broker.stats.rejected_connections += 1
        _LOGGER.warning("Rejected MQTT connection from %s: %s", self._peer, detail)
        if reply is not None:
            self._transport.write(reply)
        self.close(None, detail)

    def _check_keep_alive(self) -> None:
        # 3.1.2.10: close a client that sent nothing for 1.5 times its Keep Alive.
        deadline = self._last_packet_at + 1.5 * self._keep_alive_s
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_keep_alive)
            return
        self._timer = None
        timeout_s = 1.5 * self._keep_alive_s
        _LOGGER.warning("MQTT client %s silent for %s s", self.client_id, timeout_s)
        self.close(ReasonCode.KEEP_ALIVE_TIMEOUT, "keep alive timed out")

    def _on_publish(self, publish: Publish) -> None:
        broker = self._broker
        broker.stats.messages_in += 1
        publish.topic = self._resolve_topic(publish)
        publish.publisher = cast(str, self.client_id)
        packet_id = cast(int, publish.packet_id)
        ack_type = PacketType.PUBACK if publish.qos == 1 else PacketType.PUBREC
        if publish.qos == 2 and packet_id in self._unreleased_ids:
            # 4.3.3: a resent QoS 2 PUBLISH is acknowledged, not delivered again.
            self._transport.write(
                mqtt.encode_ack(ack_type, packet_id, ReasonCode.SUCCESS)
            )
            return
        if publish.qos == 2 and len(self._unreleased_ids) >= _RECEIVE_MAXIMUM:
            raise PacketError(
                ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                "65535 QoS 2 messages wait for PUBREL",
            )

        if not self.may(publish.topic, Access.WRITE):
            broker.stats.denied_publishes += 1
            reason = ReasonCode.NOT_AUTHORIZED  # the message is dropped
        elif broker._publish(publish):
            reason = ReasonCode.SUCCESS
        else:
            reason = ReasonCode.NO_MATCHING_SUBSCRIBERS
        if publish.qos == 2 and reason < 0x80:
            self._unreleased_ids.add(packet_id)
        if publish.qos:
            self._transport.write(mqtt.encode_ack(ack_type, packet_id, reason))

    def _resolve_topic(self, publish: Publish) -> str:
        alias = publish.topic_alias
        if alias is None:
            if not publish.topic:
                raise mqtt.protocol_error("empty topic name and no topic alias")
            return publish.topic
        if not 0 < alias <= _TOPIC_ALIAS_MAXIMUM:
            reason = ReasonCode.TOPIC_ALIAS_INVALID  # 3.3.2.3.4
            raise PacketError(reason, f"topic alias {alias} is out of range")
        if publish.topic:
            self._topic_aliases[alias] = publish.topic
            return publish.topic
        if alias not in self._topic_aliases:
            raise mqtt.protocol_error(f"topic alias {alias} was never set")
        return self._topic_aliases[alias]

    def _on_subscribe(
        self, packet_id: int, requests: list[mqtt.SubscriptionRequest]
    ) -> None:
        reasons: list[int] = []
        with_retained = []
        for request in requests:
            existed = request.topic_filter in self.subscriptions
            reasons.append(self._broker._subscribe(self, request))
            # 3.8.3.1 Retain Handling: 0 sends retained messages, 1 sends them
            # only for a new subscription, 2 never does.
            if reasons[-1] < 0x80 and request.retain_handling + existed < 2:
                with_retained.append(request)
        suback = mqtt.encode_subscription_ack(PacketType.SUBACK, packet_id, reasons)
        self._transport.write(suback)
        for request in with_retained:
            self._broker._send_retained(self, request)

    def deliver(self, message: Publish, qos: int, retain: bool) -> None:
        """Send ``message`` now, or queue it behind flow control (4.9)."""
        if self._closing:
            return
        window_full = qos and len(self._inflight) >= self._receive_maximum
        if not (self._outbox or self._writing_paused or window_full):
            self._send_publish(message, qos, retain)
        elif len(self._outbox) < _OUTBOX_LIMIT:
            self._outbox.append((message, qos, retain))
        else:
            _LOGGER.warning(
                "Dropping MQTT client %s: it reads too slowly", self.client_id
            )
            self.close(ReasonCode.QUOTA_EXCEEDED, "outbound queue full")

    def _flush_outbox(self) -> None:
        outbox = self._outbox
        while outbox and not self._writing_paused and not self._closing:
            message, qos, retain = outbox[0]
            if qos and len(self._inflight) >= self._receive_maximum:
                return
            outbox.popleft()
            self._send_publish(message, qos, retain)

    def _send_publish(self, message: Publish, qos: int, retain: bool) -> None:
        properties = message.encoded_properties()
        packet_id = self._next_packet_id() if qos else None
        packet = b""
        if properties is not None:
            packet = mqtt.encode_publish(message, qos, retain, packet_id, properties)
        limit = self._max_packet_size
        if not packet or (limit and len(packet) > limit):
            # 3.3.2.3.3 and 3.1.2.11.4: drop expired and oversized messages.
            self._broker.stats.dropped_messages += 1
            _LOGGER.debug(
                "Dropped %s for MQTT client %s", message.topic, self.client_id
            )
            return
        if packet_id is not None:
            self._inflight[packet_id] = message
        self._transport.write(packet)
        self._broker.stats.messages_out += 1

    def _next_packet_id(self) -> int:
        # The in-flight window is at most 65535, so a free id always exists.
        while True:
            self._last_packet_id = self._last_packet_id % 65535 + 1
            if self._last_packet_id not in self._inflight:
                return self._last_packet_id
