"""One client connection of the embedded MQTT 5.0 broker, as an asyncio protocol.

:class:`_Connection` splits the byte stream into packets, handles CONNECT,
PUBLISH, PUBACK, PUBREL, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT,
enforces keep alive, inbound topic aliases and the client's Receive Maximum,
and queues outbound messages behind flow control. Routing, subscriptions,
retained messages and the password check are in
:class:`~appliance.bus._embedded_broker.EmbeddedBroker`, which creates one
_Connection for each accepted socket. Section numbers refer to the OASIS MQTT
Version 5.0 standard.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, cast

from appliance.bus import _mqtt_codec as mqtt
from appliance.bus._mqtt_codec import PacketError, Publish
from appliance.bus._mqtt_encode import (
    PINGRESP,
    PacketType,
    Properties,
    ReasonCode,
    encode_ack,
    encode_connack,
    encode_disconnect,
    encode_publish,
    encode_subscription_ack,
)
from provisioning.acl import Access

if TYPE_CHECKING:
    from appliance.bus._embedded_broker import EmbeddedBroker

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
            self._transport.write(encode_disconnect(reason))
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
            write(encode_ack(PacketType.PUBCOMP, packet_id, reason))
        elif packet_type == PacketType.SUBSCRIBE:
            self._on_subscribe(*mqtt.decode_subscribe(first, body))
        elif packet_type == PacketType.UNSUBSCRIBE:
            packet_id, filters = mqtt.decode_unsubscribe(first, body)
            reasons = [self._broker._unsubscribe(self, name) for name in filters]
            write(encode_subscription_ack(PacketType.UNSUBACK, packet_id, reasons))
        elif packet_type == PacketType.PINGREQ:
            mqtt.check_fixed_header(first, body, empty=True)
            write(PINGRESP)
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
            self._reject_connect(str(err), encode_connack(False, err.reason_code))
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
            self._reject_connect(detail, encode_connack(False, ReasonCode(reason)))
            return

        properties: Properties = [
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
        self._transport.write(encode_connack(False, ReasonCode.SUCCESS, properties))
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
            self._transport.write(encode_ack(ack_type, packet_id, ReasonCode.SUCCESS))
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
            self._transport.write(encode_ack(ack_type, packet_id, reason))

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
        suback = encode_subscription_ack(PacketType.SUBACK, packet_id, reasons)
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
            packet = encode_publish(message, qos, retain, packet_id, properties)
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
