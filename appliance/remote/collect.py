"""The upstream collector: events of every box of a fleet into PostgreSQL.

The collector subscribes on the fleet's broker to ``events/#``,
``availability`` and ``tele/+`` of every box, of one site or of all, and
writes each batch of what has arrived in one PostgreSQL transaction.

Delivery is at least once. The collector keeps an MQTT 5 persistent session
(a fixed client id, Clean Start false, a long Session Expiry Interval), so
the broker queues events while it is away. It sends each PUBACK only after
the message's transaction has committed. While PostgreSQL is down it
keeps its batch, acknowledges nothing and retries with back-off; the broker
stops sending once Receive Maximum messages are unacknowledged. Events are
inserted idempotently on their id, so a redelivered event changes nothing.

Two threads share the work. The network thread owns the paho client: it
connects, runs paho's loop and sends the PUBACKs that the writer queues,
so only one thread ever writes to the socket. The writer thread parses
messages, writes batches and queues the PUBACKs.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import socket
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.bus.url import BrokerUrl
from appliance.errors import ConfigError, NightboxError
from appliance.remote._collect_database import (
    CollectorDatabase,
    DatabaseUnavailableError,
    WriteResult,
)
from appliance.remote._collect_messages import Rejection, Row, parse_message
from provisioning.fleet_access import COLLECTOR

__all__ = [
    "BrokerLogin",
    "BrokerRejectedError",
    "Collector",
    "CollectorSettings",
    "CollectorStats",
    "DatabaseUnavailableError",
    "account_warning",
    "default_client_id",
    "load_login",
    "topic_filters",
]

_LOGGER = logging.getLogger(__name__)

# Fourteen days, the persistent_client_expiration that appliance.bus.broker
# gives the fleet mosquitto. A broker may cap the interval to its own maximum.
SESSION_EXPIRY_S = 14 * 24 * 3600
# Unacknowledged messages the broker may send before it waits for PUBACKs.
RECEIVE_MAXIMUM = 1000
# The maximum number of messages written in one transaction.
BATCH_MAX = 500
KEEPALIVE_S = 30
DEFAULT_CLIENT_ID = "nightbox-collector"
_LOOP_TIMEOUT_S = 0.05
_TAKE_TIMEOUT_S = 0.2
_BACKOFF_INITIAL_S = 0.2
_STOP_JOIN_TIMEOUT_S = 15.0
_REJECTION_LOG_INTERVAL_S = 10.0
_SUMMARY_INTERVAL_S = 60.0
# CONNACK reason codes that no retry fixes (MQTT 5 section 3.2.2.2).
_FATAL_CONNACK = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x8C: "bad authentication method",
}


class BrokerRejectedError(NightboxError, PermissionError):
    """The broker rejected the collector's login or its events subscription."""


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    """A user name and password for the broker."""

    username: str
    password: str = field(repr=False)


def load_login(path: Path) -> BrokerLogin:
    """Read ``{"username": ..., "password": ...}`` from a JSON file.

    Raises ConfigError naming the file, never its content.
    """
    expected = 'a JSON object {"username": "...", "password": "..."}'
    try:
        text = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(
            f"credentials file {path} not found; give the file with the "
            f"collector's broker login, {expected}"
        ) from err
    except OSError as err:
        raise ConfigError(
            f"cannot read credentials file {path} ({err.strerror}); make it "
            "readable by the user that runs nightbox collect"
        ) from err
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise ConfigError(
            f"credentials file {path} is not valid JSON; it must contain {expected}"
        ) from err
    if not isinstance(data, dict):
        raise ConfigError(f"credentials file {path} must contain {expected}")
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not username:
        raise ConfigError(f"credentials file {path} has no string 'username'")
    if not isinstance(password, str) or not password:
        raise ConfigError(f"credentials file {path} has no string 'password'")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _LOGGER.warning(
            "Credentials file %s is readable by other users; chmod 600 it", path
        )
    return BrokerLogin(username, password)


def account_warning(login: BrokerLogin | None) -> str | None:
    """Return a warning when ``login`` is not the fleet's collector account.

    mosquitto 2.0.11 grants a subscription that its ACL denies (its SUBACK
    reports no failure) and then delivers nothing, so a collector
    logged in as a box would run without storing anything.
    """
    if login is None or login.username == COLLECTOR:
        return None
    username = login.username
    if username.startswith("box-"):
        kind = "a box's account, which may not read any events"
    elif username.startswith("operator-"):
        kind = "an operator's account, meant for nightbox fleet"
    else:
        kind = "not the fleet's collector account"
    return (
        f"The broker login {username!r} is {kind}. An account that may not "
        "read events still gets its subscriptions accepted by mosquitto 2.0, "
        "and then nothing arrives. Use the collector's login from "
        "'nightbox fleet account --collector' unless this account was given "
        "the collector's grants."
    )


def default_client_id(group: str | None) -> str:
    """Return the client id of a collector alone or in a shared group.

    Every member of a group needs its own persistent session, so a member's
    id adds the group and this host's name.
    """
    if group is None:
        return DEFAULT_CLIENT_ID
    return f"{DEFAULT_CLIENT_ID}-{group}-{socket.gethostname()}"


def topic_filters(site: str | None, group: str | None) -> list[str]:
    """Return the subscriptions: events (shared in a group), availability, tele.

    Availability and telemetry are never shared, so every member of a group
    gets every box's state, retained values included, and keeps the whole
    ``boxes`` table. Brokers differ in whether they send retained messages
    to a shared subscription (mosquitto 2.0 does).
    """
    boxes = f"nightbox/{site or '+'}/box/+"
    events = f"{boxes}/events/#"
    if group is not None:
        events = f"$share/{group}/{events}"
    return [events, f"{boxes}/availability", f"{boxes}/tele/+"]


@dataclass(frozen=True)
class CollectorSettings:
    """Connection settings of a collector: broker, login, database, subscriptions."""

    broker: BrokerUrl
    database_url: str = field(repr=False)
    tls: ssl.SSLContext | None = None
    login: BrokerLogin | None = None
    site: str | None = None
    group: str | None = None
    client_id: str = DEFAULT_CLIENT_ID
    batch_max: int = BATCH_MAX
    # The maximum wait between retries of the broker or the database, in seconds.
    retry_max_s: float = 30.0


@dataclass
class CollectorStats:
    """Counters since the collector started."""

    received: int = 0
    events_stored: int = 0
    duplicates: int = 0
    states: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    acknowledged: int = 0
    # PUBACKs not sent because the connection they belonged to is gone. The
    # broker delivers those messages again.
    acknowledgements_dropped: int = 0
    database_failures: int = 0
    connects: int = 0
    subscriptions: int = 0


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    mid: int
    retained: bool
    # The number of the connection the message came on, the only one its
    # PUBACK may use.
    connection: int
    received_at: dt.datetime


class Collector:
    """Collects events from an MQTT 5 broker into PostgreSQL until stopped."""

    def __init__(
        self,
        settings: CollectorSettings,
        *,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = CollectorStats()
        self.filters = topic_filters(settings.site, settings.group)
        self._announce = announce
        self._database = CollectorDatabase(settings.database_url)
        self._inbox: queue.SimpleQueue[_Received] = queue.SimpleQueue()
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._writer_done = threading.Event()
        self._fatal: BrokerRejectedError | None = None
        # Owned by the network thread.
        self._connection = 0
        self._accepted = False
        self._backoff_s = _BACKOFF_INITIAL_S
        self._rejection_log: dict[str, tuple[float, int]] = {}
        self._client = self._make_client()

    def stop(self) -> None:
        """Ask the collector to stop after the batch it is writing."""
        self._stopping.set()

    def run(self) -> None:
        """Collect until :meth:`stop`, leaving uncommitted messages unacknowledged.

        Raises DatabaseUnavailableError when PostgreSQL cannot be used at
        start, and BrokerRejectedError when the broker rejects the login or
        the events subscription.
        """
        warning = account_warning(self.settings.login)
        if warning is not None:
            _LOGGER.warning("%s", warning)
        self._database.open()
        network = threading.Thread(
            target=self._network_main, name="collector-mqtt", daemon=True
        )
        network.start()
        next_summary = time.monotonic() + _SUMMARY_INTERVAL_S
        try:
            while not self._stopping.is_set():
                batch = self._take_batch()
                if batch:
                    self._process(batch)
                if time.monotonic() >= next_summary:
                    self._log_summary()
                    next_summary = time.monotonic() + _SUMMARY_INTERVAL_S
        finally:
            self._writer_done.set()
            network.join(_STOP_JOIN_TIMEOUT_S)
            self._database.close()
        self._log_summary()
        if self._fatal is not None:
            raise self._fatal

    # The writer thread.

    def _take_batch(self) -> list[_Received]:
        try:
            batch = [self._inbox.get(timeout=_TAKE_TIMEOUT_S)]
        except queue.Empty:
            return []
        while len(batch) < self.settings.batch_max:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _process(self, batch: list[_Received]) -> None:
        rows = [
            parse_message(
                message.topic,
                message.payload,
                retained=message.retained,
                received_at=message.received_at,
            )
            for message in batch
        ]
        result = self._write(rows)
        if result is None:
            return
        self._count(result)
        for message in batch:
            if message.qos > 0:
                self._acks.put((message.connection, message.mid))

    def _write(self, rows: list[Row]) -> WriteResult | None:
        """Write a batch, retrying until it commits. Return None if stopped first."""
        delay_s = _BACKOFF_INITIAL_S
        failures = 0
        while True:
            try:
                result = self._database.write(rows)
            except DatabaseUnavailableError as err:
                failures += 1
                self.stats.database_failures += 1
                _LOGGER.warning(
                    "Holding %d messages unacknowledged, so the broker keeps them, "
                    "and retrying in %.1f s (attempt %d): %s",
                    len(rows),
                    delay_s,
                    failures,
                    err,
                )
                if self._stopping.wait(delay_s):
                    _LOGGER.warning(
                        "Stopping with %d messages unacknowledged; the broker "
                        "delivers them again to the next collector with this "
                        "client id",
                        len(rows),
                    )
                    return None
                delay_s = min(delay_s * 2, self.settings.retry_max_s)
                continue
            if failures:
                _LOGGER.warning(
                    "PostgreSQL at %s is back after %d failed attempts; the "
                    "held batch is stored",
                    self._database.redacted_url,
                    failures,
                )
            return result

    def _count(self, result: WriteResult) -> None:
        self.stats.batches += 1
        self.stats.events_stored += result.events_stored
        self.stats.duplicates += result.duplicates
        self.stats.states += result.states
        for rejection in result.rejections:
            self.stats.rejected[rejection.reason] += 1
            self._log_rejection(rejection)

    def _log_rejection(self, rejection: Rejection) -> None:
        now = time.monotonic()
        last_at, suppressed = self._rejection_log.get(rejection.reason, (-math.inf, 0))
        if now - last_at < _REJECTION_LOG_INTERVAL_S:
            self._rejection_log[rejection.reason] = (last_at, suppressed + 1)
            return
        self._rejection_log[rejection.reason] = (now, 0)
        more = (
            f" ({suppressed} more with this reason since the last report)"
            if suppressed
            else ""
        )
        _LOGGER.warning(
            "Rejected a message on %s (%s): %s; stored in rejected_messages%s",
            rejection.topic,
            rejection.reason,
            rejection.detail,
            more,
        )

    def _log_summary(self) -> None:
        stats = self.stats
        _LOGGER.info(
            "Collector %s: %d messages received, %d events stored, %d duplicates, "
            "%d state updates, %d rejected, %d batches",
            self.settings.client_id,
            stats.received,
            stats.events_stored,
            stats.duplicates,
            stats.states,
            sum(stats.rejected.values()),
            stats.batches,
        )

    # The network thread.

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        login = self.settings.login
        if login is not None:
            client.username_pw_set(login.username, login.password)
        if self.settings.tls is not None:
            client.tls_set_context(self.settings.tls)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _network_main(self) -> None:
        try:
            self._network_loop()
        except Exception:
            # A bug here must not leave the writer waiting forever.
            _LOGGER.exception("The collector's MQTT thread failed; stopping")
            self._stopping.set()

    def _network_loop(self) -> None:
        broker = self.settings.broker
        while not self._stopping.is_set():
            self._connection += 1
            self._accepted = False
            try:
                self._client.connect(
                    broker.host,
                    broker.port,
                    keepalive=KEEPALIVE_S,
                    clean_start=False,
                    properties=_connect_properties(),
                )
            except OSError as err:
                _LOGGER.warning(
                    "Cannot connect to the broker at %s (%s); retrying in %.1f s",
                    broker,
                    err,
                    self._backoff_s,
                )
                self._wait_backoff()
                continue
            if self._serve():
                return
            if self._fatal is not None:
                return
            if not self._stopping.is_set():
                self._wait_backoff()

    def _serve(self) -> bool:
        """Run paho's loop on one connection, and return True after a clean stop."""
        client = self._client
        while True:
            if client.loop(timeout=_LOOP_TIMEOUT_S) != mqtt.MQTT_ERR_SUCCESS:
                return False
            self._send_acks()
            if self._writer_done.is_set():
                self._send_acks()
                client.disconnect()
                # paho writes the queued PUBACKs, then the DISCONNECT.
                while client.loop(timeout=_LOOP_TIMEOUT_S) == mqtt.MQTT_ERR_SUCCESS:
                    pass
                return True

    def _wait_backoff(self) -> None:
        self._stopping.wait(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, self.settings.retry_max_s)

    def _send_acks(self) -> None:
        while True:
            try:
                connection, mid = self._acks.get_nowait()
            except queue.Empty:
                return
            if connection == self._connection and self._accepted:
                self._client.ack(mid, 1)
                self.stats.acknowledged += 1
            else:
                self.stats.acknowledgements_dropped += 1

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        broker = self.settings.broker
        if reason_code.is_failure:
            self._on_connect_refused(reason_code)
            return
        self._accepted = True
        self._backoff_s = _BACKOFF_INITIAL_S
        self.stats.connects += 1
        _LOGGER.info(
            "Connected to %s as %s (session present: %s)",
            broker,
            self.settings.client_id,
            flags.session_present,
        )
        if self.stats.connects > 1 and not flags.session_present:
            _LOGGER.warning(
                "The broker at %s had no session for client id %s, so events "
                "published while the collector was disconnected were not "
                "queued for it; configure the broker to persist sessions",
                broker,
                self.settings.client_id,
            )
        options = SubscribeOptions(qos=1)
        client.subscribe([(topic_filter, options) for topic_filter in self.filters])

    def _on_connect_refused(self, reason_code: ReasonCode) -> None:
        broker = self.settings.broker
        name = _FATAL_CONNACK.get(reason_code.value)
        if name is not None and self.stats.connects == 0:
            login = self.settings.login
            if login is None:
                self._fail(
                    f"the broker at {broker} refused a connection without a "
                    f"login ({name}); give --credentials with the collector's "
                    "account"
                )
                return
            self._fail(
                f"the broker at {broker} rejected the login of user "
                f"{login.username!r} as client id {self.settings.client_id!r}: "
                f"{name}; check --credentials and the broker's accounts"
            )
            return
        _LOGGER.error(
            "The broker at %s rejected the connection (%s); retrying in %.1f s",
            broker,
            reason_code,
            self._backoff_s,
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for topic_filter, reason_code in zip(self.filters, reason_codes, strict=False):
            if not reason_code.is_failure:
                continue
            if topic_filter == self.filters[0]:
                self._fail(
                    f"the broker at {self.settings.broker} rejected the "
                    f"subscription to {topic_filter} ({reason_code}); the "
                    "account must be allowed to read every box's events/#"
                )
                return
            _LOGGER.error(
                "The broker at %s rejected the subscription to %s (%s); the "
                "boxes table misses that state",
                self.settings.broker,
                topic_filter,
                reason_code,
            )
        self.stats.subscriptions += 1
        if self.stats.subscriptions == 1 and self._announce is not None:
            scope = (
                "every site"
                if self.settings.site is None
                else f"site {self.settings.site}"
            )
            self._announce(
                f"Collecting the events of {scope} from {self.settings.broker} "
                f"into {self._database.redacted_url} as client id "
                f"{self.settings.client_id}"
            )

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        self.stats.received += 1
        self._inbox.put(
            _Received(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=message.qos,
                mid=message.mid,
                retained=bool(message.retain),
                connection=self._connection,
                received_at=dt.datetime.now(dt.UTC),
            )
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_accepted = self._accepted
        self._accepted = False
        if self._stopping.is_set() or not was_accepted:
            return
        _LOGGER.warning(
            "Lost the connection to the broker at %s (%s); reconnecting in %.1f s",
            self.settings.broker,
            reason_code,
            self._backoff_s,
        )

    def _fail(self, message: str) -> None:
        # run() raises the error, and its caller reports it, so it is not
        # logged here as well.
        self._fatal = BrokerRejectedError(message)
        self._stopping.set()


def _connect_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    return properties
