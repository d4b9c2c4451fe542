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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from appliance.bus import _mqtt_codec as mqtt
from appliance.bus._mqtt_codec import Publish
from appliance.bus._mqtt_connection import _Connection
from appliance.bus._mqtt_encode import ReasonCode
from provisioning.acl import Access, AccessPolicy, validate_filter
from provisioning.credentials import hash_password, verify_password

_LOGGER = logging.getLogger(__name__)

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
