"""Store-and-forward sync of the outbox to the fleet's upstream broker.

:class:`SyncService` publishes every outbox event that the upstream broker
has not acknowledged yet, in ``seq`` order, at QoS 1 over MQTT 5 with TLS.
Up to ``sync.window`` events wait for their PUBACK at once, and each PUBACK
lets the next event go (a sliding window). An event is marked
``synced_at`` only after its PUBACK. So the outbox in SQLite, not a broker's
queue, decides what still has to go. After an outage, a restart or a crash,
every unmarked event is sent again with the same id, and the collector drops
repeats by that id.

The same connection carries signed commands and bundles from the fleet to
the box's remote management and their results back, the box's retained
availability with a last will, its telemetry, and its sync state. With
:meth:`SyncService.attach_clip_uploads` it also uploads the studio's clips
(``_clip_upload.py``), only while no event waits to go.

The connection is an aiomqtt client of its own, not a :class:`Bus`: the
service reports why the upstream broker turned it away (TLS, login, ACL)
and backs off up to ``sync.retry_max_s``, and Bus exposes neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import Counter, deque
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance._tasks import cancel_and_wait
from appliance.bus import envelope
from appliance.bus.client import Bus
from appliance.bus.topics import Topics
from appliance.bus.url import client_tls_context
from appliance.clock import Clock
from appliance.config import SiteConfig
from appliance.errors import ConfigError, NightboxError
from appliance.outbox import event_payload
from appliance.remote._clip_upload import (
    ClipRejectedError,
    ClipToUpload,
    ClipUploader,
    ClipUploads,
)
from appliance.remote._sync_inbound import (
    AssetDelivery,
    Inbound,
    InboundQueue,
    InboundTopics,
    LimitedLog,
    Management,
    busy_rejection,
    handle_inbound,
    max_payload_bytes,
)
from appliance.remote._sync_login import UpstreamLogin, read_login
from appliance.store import OutboxEvent, Store
from provisioning.fleet_access import upstream_box_username

__all__ = [
    "ClipToUpload",
    "ClipUploads",
    "Management",
    "SyncService",
    "effective_window",
]

_LOGGER = logging.getLogger(__name__)

_RETRY_INITIAL_S = 0.5
# The sync state is published on a change, then not again for this many
# seconds, so a draining backlog updates it about once a second.
_STATE_INTERVAL_S = 1.0
# aiomqtt's timeout for connecting and subscribing, in seconds.
_CONNECT_TIMEOUT_S = 10
_KEEPALIVE_S = 15
# How long the upstream broker keeps the box's subscriptions, and the
# commands and bundles sent to it, while the box is offline (mosquitto
# caps it with persistent_client_expiration).
_SESSION_EXPIRY_S = 7 * 24 * 3600
# Timeout of a state, result or telemetry publish, in seconds.
_PUBLISH_TIMEOUT_S = 10.0
# The maximum number of commands and bundles received but not yet handled,
# and of their payload bytes in all. Messages beyond either limit are
# dropped, and four bundles of the maximum size (4 MiB) fill the bytes.
_INBOUND_QUEUE = 1000
_INBOUND_QUEUE_BYTES = 16 * 1024 * 1024
# The maximum number of "busy" results of dropped commands waiting to be
# sent. A command dropped while this queue is full gets no result.
_BUSY_QUEUE = 64
# Warnings about dropped or ignored messages are logged at most once per
# reason in this many seconds, with the number skipped.
_DROP_LOG_INTERVAL_S = 5.0
# The counters in the sync state, each 0 until it happens.
_STATE_COUNTS = (
    "commands",
    "bundles",
    "inbound_dropped",
    "inbound_too_large",
    "inbound_ignored",
    "busy_unanswered",
    "results_unsent",
    "rejected_events",
    "telemetry_errors",
    "connects",
    "failures",
)
# How often the drain loop looks for events that became unsynced below the
# ones it sent, as `nightbox sync resend` makes them from another process.
_RESEND_CHECK_S = 5.0
# A repeated connect failure is logged again after this many seconds.
_REPEAT_LOG_S = 60.0
_SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
_LOGIN_REJECTED = {"Bad user name or password", "Not authorized"}
# Room in paho's in-flight limit for the messages besides events: the state,
# command and "busy" results, telemetry and the availability. Each of these
# tasks waits for its PUBACK, but a publish that timed out may still be in
# flight, and paho 2.2 queues a publish over its limit instead of failing it.
_OTHER_INFLIGHT = 4


def effective_window(window: int, receive_maximum: int | None) -> int:
    """Return how many events to keep in flight with a broker.

    MQTT 5 forbids a client more QoS 1 messages waiting for their PUBACK
    than the Receive Maximum in the server's CONNACK (mosquitto sends its
    max_inflight_messages), so a smaller Receive Maximum lowers ``window``
    and leaves room for the service's other messages.
    """
    if receive_maximum is None or window + _OTHER_INFLIGHT <= receive_maximum:
        return window
    return max(1, receive_maximum - _OTHER_INFLIGHT)


class PublishRejectedError(NightboxError):
    """A PUBLISH that the upstream broker rejected with a failure PUBACK."""


class SyncService:
    """Forwards the outbox upstream and serves the fleet's commands and bundles.

    ``management`` handles commands and bundles and provides telemetry.
    Without it, every command and bundle gets a result with the reason
    ``unavailable``.
    """

    def __init__(
        self,
        config: SiteConfig,
        store: Store,
        local_bus: Bus,
        clock: Clock,
        *,
        management: Management | None = None,
    ) -> None:
        if config.sync is None:
            raise ConfigError(
                f"site {config.site_id!r} has no [sync] section, so the box has "
                "no upstream broker; add one to forward events"
            )

        self._sync = config.sync
        self._box_id = config.box_id
        self._site = config.site_id
        self._store = store
        self._local_bus = local_bus
        self._clock = clock
        self._management = management
        self._telemetry_interval_s = config.fleet.telemetry_interval_s

        self._topics = Topics(config.site_id)
        self._src = f"box/{config.box_id}"
        self._client_id = f"{config.site_id}-box-{config.box_id}"
        self._availability = self._topics.availability("box", config.box_id)
        self._state_topic = self._topics.sync_state(config.box_id)
        self._event_topics: dict[str, str] = {}
        self._inbound_topics = InboundTopics(self._topics, config.box_id)

        # Set by commits and PUBACKs: the drain loop may have work.
        self._ready = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._inbound = InboundQueue(_INBOUND_QUEUE, _INBOUND_QUEUE_BYTES)
        self._busy: asyncio.Queue[tuple[Inbound, dict[str, Any]]] = asyncio.Queue(
            _BUSY_QUEUE
        )
        self._drop_log = LimitedLog(_LOGGER, _DROP_LOG_INTERVAL_S)

        # Message ids of events waiting for their PUBACK, and the failure
        # reason codes that the broker returned for some of them.
        self._event_mids: set[int] = set()
        self._rejected: dict[int, ReasonCode] = {}
        # PUBACKs awaited one by one, by message id (see _publish_acknowledged).
        self._waiters: dict[int, asyncio.Future[ReasonCode]] = {}
        self._client: aiomqtt.Client | None = None
        self._state_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Set while no connect attempt is under way (see stop()).
        self._attempt_over = asyncio.Event()
        self._attempt_over.set()
        self._last_logged: tuple[str, float] = ("", 0.0)
        self._clip_uploader: ClipUploader | None = None
        # Set while the drain has no event in flight or waiting: clip chunks
        # go only then.
        self._events_idle = asyncio.Event()
        self._clips_attached = asyncio.Event()
        self._assets: AssetDelivery | None = None

        self.connected = False
        # Events in flight at once: sync.window, or less when the broker's
        # CONNACK sets a smaller MQTT 5 Receive Maximum.
        self.window = config.sync.window
        self.sent = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.counts: Counter[str] = Counter()

        store.on_commit(self._on_commit)
        local_bus.on_connect(self._on_local_connect)

    def state(self) -> dict[str, Any]:
        """Return the sync state, as published on ``tele/sync``.

        ``backlog`` counts the events that wait for the upstream broker,
        ``sent`` the events acknowledged since the service started,
        ``last_success`` the box's time of the last acknowledgement, and
        ``counts`` what happened since the service started, by name.
        """
        state: dict[str, Any] = {
            "connected": self.connected,
            "backlog": self._store.unsynced_count(),
            "sent": self.sent,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "broker": str(self._sync.broker),
            "counts": {name: self.counts[name] for name in _STATE_COUNTS},
        }
        if self._clip_uploader is not None:
            state["clips"] = self._clip_uploader.state()
        return state

    def attach_clip_uploads(self, source: ClipUploads) -> None:
        """Upload the clips that ``source`` queues, after the events.

        Call it once, before or after :meth:`start`.
        """
        if self._clip_uploader is not None:
            raise RuntimeError("clip uploads are attached to the sync service already")
        self._clip_uploader = ClipUploader(
            source, self._topics, self._box_id, self._src
        )
        self._clips_attached.set()

    def attach_asset_delivery(self, delivery: AssetDelivery) -> None:
        """Fetch the asset blobs that ``delivery`` requests while connected.

        Call it once, before :meth:`start`.
        """
        if self._assets is not None:
            raise RuntimeError("asset delivery is attached to the sync service already")
        self._assets = delivery

    async def start(self) -> None:
        """Connect upstream in the background, so the box runs on while it cannot."""
        self._state_task = asyncio.create_task(
            self._report_state_forever(), name="sync-state"
        )
        self._tasks = [
            asyncio.create_task(self._handle_inbound_forever(), name="sync-inbound"),
            asyncio.create_task(self._answer_busy_forever(), name="sync-busy"),
            asyncio.create_task(self._run(), name="sync-upstream"),
        ]
        self._state_changed.set()
        _LOGGER.info(
            "Sync of box %s to %s started with %d events waiting",
            self._box_id,
            self._sync.broker,
            self._store.unsynced_count(),
        )

    async def stop(self) -> None:
        """Publish ``offline`` and the last state upstream, then disconnect.

        Unacknowledged events stay in the outbox and are sent after the next
        start.
        """
        # The last state goes out from here, so the periodic one stops first.
        await cancel_and_wait(self._state_task)
        client = self._client
        self.connected = False
        await self._publish_state()
        if client is not None:
            # A clean disconnect sends no last will, so offline goes first.
            with contextlib.suppress(aiomqtt.MqttError, PublishRejectedError):
                await self._publish_acknowledged(
                    client, self._availability, b"offline", retain=True, timeout_s=2.0
                )
        # aiomqtt 2.x cannot clean up a client cancelled while it connects
        # (see Bus.close), so a connect attempt is let finish first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempt_over.wait(), _CONNECT_TIMEOUT_S + 1)
        for task in reversed(self._tasks):
            await cancel_and_wait(task)
        self._tasks = []
        _LOGGER.info(
            "Sync of box %s stopped after %d events sent", self._box_id, self.sent
        )

    def _on_commit(self, _events: list[OutboxEvent]) -> None:
        self._ready.set()
        self._state_changed.set()

    async def _on_local_connect(self) -> None:
        self._state_changed.set()

    async def _run(self) -> None:
        delay_s = _RETRY_INITIAL_S
        while True:
            login: UpstreamLogin | None = None
            connects = self.counts["connects"]
            try:
                login = read_login(self._sync.credentials_file)
                tls = (
                    client_tls_context(self._sync.ca_file)
                    if self._sync.broker.tls
                    else None
                )
                await self._session(login, tls)
                message = f"the connection to {self._sync.broker} ended"
            except (ConfigError, PublishRejectedError, ClipRejectedError) as err:
                message = str(err)
            except aiomqtt.MqttError as err:
                lost = self.counts["connects"] > connects
                message = self._describe(err, login, lost=lost)
            if self.counts["connects"] > connects:
                delay_s = _RETRY_INITIAL_S
            self._fail(message, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self._sync.retry_max_s)

    def _fail(self, message: str, delay_s: float) -> None:
        self.counts["failures"] += 1
        self.connected = False
        self.last_error = message
        self._state_changed.set()
        now = time.monotonic()
        last_message, last_at = self._last_logged
        if message != last_message or now - last_at >= _REPEAT_LOG_S:
            self._last_logged = (message, now)
            _LOGGER.warning(
                "Sync of box %s: %s; retrying in %.1f s", self._box_id, message, delay_s
            )

    def _describe(
        self, err: aiomqtt.MqttError, login: UpstreamLogin | None, *, lost: bool
    ) -> str:
        """Return the reason of a failed or lost connection for the state."""
        broker = self._sync.broker
        if isinstance(err, MqttConnectError):
            reason = str(err.rc)
            if login is not None and reason in _LOGIN_REJECTED:
                return (
                    f"upstream broker {broker} rejected the login of "
                    f"{login.username!r} ({reason}); check the account in "
                    f"{self._sync.credentials_file}"
                )
            return f"upstream broker {broker} refused the connection ({reason})"

        if lost:
            return f"lost the connection to upstream broker {broker} ({err})"

        # aiomqtt turns connect errors into MqttError(str(error)) "from None",
        # which keeps the original error as the context.
        cause = err.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            ca = self._sync.ca_file or "the system's CA certificates"
            return (
                f"the TLS certificate of upstream broker {broker} failed "
                f"verification ({cause.verify_message}); check that sync.ca_file "
                f"({ca}) is the fleet broker's CA certificate"
            )
        if isinstance(cause, ssl.SSLError):
            return f"TLS with upstream broker {broker} failed ({cause.reason})"

        detail = (
            (cause.strerror or str(cause)) if isinstance(cause, OSError) else str(err)
        )
        if not detail:
            # paho reports a connection closed before the CONNACK without a
            # message, as when a plain mqtt:// client reaches a TLS listener.
            return (
                f"upstream broker {broker} closed the connection during the MQTT "
                "handshake; check sync.broker: a TLS port needs mqtts://, and "
                "the port may be wrong"
            )
        if isinstance(cause, OSError):
            return f"cannot reach upstream broker {broker} ({detail})"
        return f"cannot connect to upstream broker {broker} ({detail})"

    async def _session(self, login: UpstreamLogin, tls: ssl.SSLContext | None) -> None:
        """Connect, serve until the connection fails, and raise why it did."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = _SESSION_EXPIRY_S
        client = aiomqtt.Client(
            self._sync.broker.host,
            self._sync.broker.port,
            username=login.username,
            password=login.password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self._availability, b"offline", qos=1, retain=True),
            # The broker keeps the session, so commands sent while the box
            # was offline arrive when it connects.
            clean_start=False,
            properties=properties,
            keepalive=_KEEPALIVE_S,
            timeout=_CONNECT_TIMEOUT_S,
            tls_context=tls,
            max_inflight_messages=self._sync.window + _OTHER_INFLIGHT,
            socket_options=_SOCKET_OPTIONS,
        )
        self._watch_connack(client)
        self._attempt_over.clear()
        try:
            async with client:
                self._attempt_over.set()
                await self._serve(client)
        finally:
            self._attempt_over.set()
            self._client = None
            self._event_mids.clear()
            self._rejected.clear()
            self._events_idle.clear()
            # aiomqtt keeps why the connection ended in a future that only
            # its message iterator reads. Reading it here stops asyncio from
            # logging "Future exception was never retrieved" when the drain
            # noticed the loss first.
            disconnected = client._disconnected
            if disconnected.done() and not disconnected.cancelled():
                disconnected.exception()
            if self.connected:
                self.connected = False
                self._state_changed.set()

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._watch_acknowledgements(client)
        # Retained bundles are sent only for a new subscription, not again
        # on every reconnect of the kept session.
        options = SubscribeOptions(
            qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
        )
        for topic_filter in self._inbound_topics.filters:
            await client.subscribe(topic_filter, options=options)

        # The retained availability is in the same ACL namespace as the
        # events, so an account of another box fails here, before any event
        # goes out. mosquitto 2.0.11 acknowledges the first PUBLISH that its
        # ACL denies with PUBACK "Not authorized" and, as observed, closes
        # the connection at the next one, so only one rejection is seen.
        await self._publish_acknowledged(
            client, self._availability, b"online", retain=True
        )

        self._client = client
        self.connected = True
        self.counts["connects"] += 1
        if self._store.unsynced_count() == 0:
            self.last_error = None
        self._state_changed.set()
        _LOGGER.info(
            "Sync of box %s connected to %s with a window of %d events",
            self._box_id,
            self._sync.broker,
            self.window,
        )

        tasks = [
            asyncio.create_task(self._drain(client), name="sync-drain"),
            asyncio.create_task(self._receive(client), name="sync-receive"),
        ]
        if self._management is not None:
            tasks.append(
                asyncio.create_task(self._send_telemetry(client), name="sync-telemetry")
            )
        tasks.append(asyncio.create_task(self._upload_clips(client), name="sync-clips"))
        if self._assets is not None:
            tasks.append(
                asyncio.create_task(self._assets.follow(client), name="sync-assets")
            )
        try:
            done, _pending = await asyncio.wait(
                tasks, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in tasks:
                if not task.done():
                    await cancel_and_wait(task)
        for task in done:
            task.result()

    def _watch_connack(self, client: aiomqtt.Client) -> None:
        """Fit the window under the Receive Maximum of the broker's CONNACK.

        paho does not enforce the Receive Maximum, and it rejects a change of
        its own limit once connected, so the drain loop keeps to the window.
        aiomqtt's handler (``Client._on_connect``) runs after this one.
        """
        paho = client._client
        forward = client._on_connect

        def on_connect(
            paho_client: mqtt.Client,
            userdata: Any,
            flags: mqtt.ConnectFlags,
            reason_code: ReasonCode,
            properties: Properties | None = None,
        ) -> None:
            maximum = getattr(properties, "ReceiveMaximum", None)
            self.window = effective_window(self._sync.window, maximum)
            forward(paho_client, userdata, flags, reason_code, properties)

        paho.on_connect = on_connect

    def _watch_acknowledgements(self, client: aiomqtt.Client) -> None:
        """Wake the drain loop on every PUBACK, and pass reason codes on.

        aiomqtt's own handler (``Client._on_publish``) still runs after it,
        for the publishes that aiomqtt made and waits on.
        """
        paho = client._client
        forward = client._on_publish
        ready = self._ready

        def on_publish(
            paho_client: mqtt.Client,
            userdata: Any,
            mid: int,
            reason_code: ReasonCode,
            properties: Properties,
        ) -> None:
            if reason_code.is_failure and mid in self._event_mids:
                self._rejected[mid] = reason_code
            waiter = self._waiters.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(reason_code)
            if self._clip_uploader is not None:
                self._clip_uploader.acknowledge(mid, reason_code)
            forward(paho_client, userdata, mid, reason_code, properties)
            ready.set()

        paho.on_publish = on_publish

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish unsynced events in order and mark each after its PUBACK.

        Events go straight to paho (aiomqtt's Client._client), as in
        Bus.publish_batch: aiomqtt's publish would wait on an event per
        message, which costs more than the publish itself. Every 5 s the
        loop also looks for events marked unsynced below the ones it sent
        (``nightbox sync resend`` in another process) and starts again at
        the lowest once the events in flight are acknowledged.
        """
        paho = client._client
        window = self.window
        inflight: deque[tuple[OutboxEvent, mqtt.MQTTMessageInfo]] = deque()
        after_seq = 0
        ready = self._ready
        loop = asyncio.get_running_loop()
        next_check = loop.time() + _RESEND_CHECK_S
        rewind = False
        while True:
            ready.clear()
            self._mark_acknowledged(inflight)
            if loop.time() >= next_check:
                next_check = loop.time() + _RESEND_CHECK_S
                rewind = rewind or self._unsynced_below(inflight, after_seq)
            if rewind and not inflight:
                # Start again at the lowest unsynced event, in seq order.
                after_seq = 0
                rewind = False
                _LOGGER.info(
                    "Sync of box %s is sending events again that were marked unsynced",
                    self._box_id,
                )
            # Clip chunks in flight share the window, so events and chunks
            # together stay under the broker's Receive Maximum.
            room = 0 if rewind else window - len(inflight) - self._chunks_in_flight()
            if room > 0:
                events = self._store.unsynced(room, after_seq)
                for event in events:
                    info = paho.publish(
                        self._event_topic(event.type),
                        event_payload(event, self._src),
                        1,
                        False,
                        None,
                    )
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        raise aiomqtt.MqttCodeError(
                            info.rc, f"could not publish event {event.id}"
                        )
                    self._event_mids.add(info.mid)
                    inflight.append((event, info))
                if events:
                    after_seq = events[-1].seq
            if room > 0 and not inflight:
                self._events_idle.set()
            else:
                self._events_idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), _RESEND_CHECK_S)

    async def _upload_clips(self, client: aiomqtt.Client) -> None:
        await self._clips_attached.wait()
        uploader = self._clip_uploader
        if uploader is not None:
            await uploader.run(client._client, self._events_idle, self.window)

    def _chunks_in_flight(self) -> int:
        uploader = self._clip_uploader
        return 0 if uploader is None else uploader.inflight

    def _unsynced_below(
        self, inflight: deque[tuple[OutboxEvent, mqtt.MQTTMessageInfo]], after_seq: int
    ) -> bool:
        """Return whether an unsynced event lies below those sent or in flight."""
        lowest = self._store.lowest_unsynced_seq()
        if lowest is None:
            return False
        if inflight:
            return lowest < inflight[0][0].seq
        return lowest <= after_seq

    def _mark_acknowledged(
        self, inflight: deque[tuple[OutboxEvent, mqtt.MQTTMessageInfo]]
    ) -> None:
        """Mark the events at the head of ``inflight`` whose PUBACK arrived.

        Raises PublishRejectedError at the first event that the broker rejected,
        after marking the ones before it.
        """
        acknowledged: list[int] = []
        rejected: tuple[OutboxEvent, ReasonCode] | None = None
        while inflight:
            event, info = inflight[0]
            if not info.is_published():
                break
            inflight.popleft()
            self._event_mids.discard(info.mid)
            reason = self._rejected.pop(info.mid, None)
            if reason is not None:
                rejected = (event, reason)
                break
            acknowledged.append(event.seq)
        if acknowledged:
            self._store.mark_synced(acknowledged)
            self.sent += len(acknowledged)
            self.last_success = self._clock.now()
            self.last_error = None
            self._state_changed.set()
        if rejected is not None:
            event, reason = rejected
            self.counts["rejected_events"] += 1
            raise PublishRejectedError(
                f"upstream broker {self._sync.broker} rejected event {event.id} "
                f"({event.type}, seq {event.seq}) with {reason!s}; check that the "
                f"account in {self._sync.credentials_file} is box "
                f"{self._site}/{self._box_id}'s "
                f"({upstream_box_username(self._site, self._box_id)})"
            )

    def _event_topic(self, event_type: str) -> str:
        topic = self._event_topics.get(event_type)
        if topic is None:
            topic = self._topics.upstream_event(self._box_id, event_type)
            self._event_topics[event_type] = topic
        return topic

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Queue commands and bundles; raise MqttError when the connection ends.

        A payload over its type's limit, or one that does not fit in the
        queue, is dropped here, before anything parses it.
        """
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload
            # Blob chunks go to the asset cache, which checks them itself.
            if (
                self._assets is not None
                and isinstance(payload, bytes | bytearray)
                and self._assets.offer(topic, bytes(payload))
            ):
                continue
            inbound = self._inbound_topics.parse(topic)
            if inbound is None or not isinstance(payload, bytes | bytearray):
                self.counts["inbound_ignored"] += 1
                # The state is published at most once a second, however
                # many messages are dropped.
                self._state_changed.set()
                self._drop_log.warning(
                    "ignored",
                    "Sync of box %s ignored a message on %s",
                    self._box_id,
                    topic,
                )
                continue
            payload = bytes(payload)
            limit = max_payload_bytes(inbound)
            if len(payload) > limit:
                self.counts["inbound_too_large"] += 1
                self._state_changed.set()
                self._drop_log.warning(
                    "too-large",
                    "Sync of box %s dropped %s %r of %d bytes, over the limit of "
                    "%d bytes",
                    self._box_id,
                    inbound.kind,
                    inbound.name[:40],
                    len(payload),
                    limit,
                )
                continue
            if not self._inbound.offer(inbound, payload):
                self._drop(inbound, payload)

    def _drop(self, inbound: Inbound, payload: bytes) -> None:
        """Count and log a message that did not fit, and queue its ``busy`` result."""
        self.counts["inbound_dropped"] += 1
        self._state_changed.set()
        waiting, waiting_bytes = len(self._inbound), self._inbound.bytes
        self._drop_log.warning(
            "dropped",
            "Sync of box %s dropped %s %r because %d commands and bundles "
            "(%d bytes) are waiting already",
            self._box_id,
            inbound.kind,
            inbound.name[:40],
            waiting,
            waiting_bytes,
        )
        result = busy_rejection(inbound, payload, waiting, waiting_bytes)
        if result is None:
            if inbound.kind == "command":
                self.counts["busy_unanswered"] += 1
            return
        try:
            self._busy.put_nowait((inbound, result))
        except asyncio.QueueFull:
            self.counts["busy_unanswered"] += 1

    async def _handle_inbound_forever(self) -> None:
        while True:
            inbound, payload = await self._inbound.get()
            self.counts[f"{inbound.kind}s"] += 1
            result = await handle_inbound(self._management, inbound, payload)
            await self._publish_result(inbound, result)

    async def _answer_busy_forever(self) -> None:
        # A task of its own, so that a slow command does not delay the
        # results that report the full queue.
        while True:
            inbound, result = await self._busy.get()
            await self._publish_result(inbound, result)

    async def _publish_result(self, inbound: Inbound, result: dict[str, Any]) -> None:
        client = self._client
        topic = self._topics.command_result(self._box_id)
        payload = envelope.encode(self._src, {"data": result})
        try:
            if client is None:
                raise aiomqtt.MqttError("not connected")
            await self._publish_acknowledged(client, topic, payload)
        except (aiomqtt.MqttError, PublishRejectedError) as err:
            self.counts["results_unsent"] += 1
            self._drop_log.warning(
                "result-unsent",
                "Sync of box %s could not send the result of %s %r (%s)",
                self._box_id,
                inbound.kind,
                inbound.name[:40],
                err,
            )

    async def _send_telemetry(self, client: aiomqtt.Client) -> None:
        management = self._management
        if management is None:
            return
        topic = self._topics.telemetry(self._box_id)
        while True:
            try:
                data = management.telemetry()
            except Exception:
                self.counts["telemetry_errors"] += 1
                _LOGGER.exception("Remote management failed to build telemetry")
            else:
                payload = envelope.encode(self._src, {"data": data})
                await self._publish_acknowledged(client, topic, payload, retain=True)
            await asyncio.sleep(self._telemetry_interval_s)

    async def _report_state_forever(self) -> None:
        while True:
            await self._state_changed.wait()
            self._state_changed.clear()
            await self._publish_state()
            await asyncio.sleep(_STATE_INTERVAL_S)

    async def _publish_state(self) -> None:
        """Publish the retained state on the local bus and, if connected, upstream."""
        payload = envelope.encode(self._src, {"data": self.state()})
        if self._local_bus.connected.is_set():
            try:
                await self._local_bus.publish(
                    self._state_topic,
                    payload,
                    retain=True,
                    timeout_s=_PUBLISH_TIMEOUT_S,
                )
            except (aiomqtt.MqttError, TimeoutError) as err:
                _LOGGER.warning("Could not publish the sync state locally: %s", err)
        client = self._client
        if client is not None:
            try:
                await self._publish_acknowledged(
                    client, self._state_topic, payload, retain=True
                )
            except (aiomqtt.MqttError, PublishRejectedError) as err:
                _LOGGER.warning("Could not publish the sync state upstream: %s", err)

    async def _publish_acknowledged(
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        timeout_s: float = _PUBLISH_TIMEOUT_S,
    ) -> None:
        """Publish one message at QoS 1 and return once the broker accepted it.

        Raises PublishRejectedError when the PUBACK carries a failure reason
        code (aiomqtt's publish ignores it), and aiomqtt.MqttError when the
        message cannot be sent or no PUBACK arrives within ``timeout_s``.
        """
        info = client._client.publish(topic, payload, 1, retain, None)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish on {topic}")
        waiter: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._waiters[info.mid] = waiter
        try:
            reason = await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError as err:
            raise aiomqtt.MqttError(
                f"no PUBACK for the message on {topic} within {timeout_s} s"
            ) from err
        finally:
            self._waiters.pop(info.mid, None)
        if reason.is_failure:
            raise PublishRejectedError(
                f"upstream broker {self._sync.broker} rejected the message on "
                f"{topic} ({reason!s}); check that the account in "
                f"{self._sync.credentials_file} is box {self._site}/{self._box_id}'s "
                f"({upstream_box_username(self._site, self._box_id)})"
            )
