"""The operator's MQTT side of ``nightbox fleet``: list, send, bundle and tail.

It works against the fleet's upstream broker and equally against one box's
local broker, because both carry the same ``nightbox/<site>/box/<box>/``
topics: retained ``availability`` and ``tele/state`` and ``tele/sync``,
``cmnd/<name>``, ``bundle/<type>`` and ``stat/result``.

:class:`FleetClient` is a synchronous paho client with its network loop in a
thread, because each command is a short exchange with a clear end: connect,
subscribe, publish at QoS 1, wait for a matching message, disconnect. Errors
of the connection are raised as :class:`FleetConnectionError` naming the
broker and the cause; the password is never part of a message or a log.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance.bus import envelope
from appliance.bus.topics import ROOT
from appliance.bus.url import BrokerUrl, client_tls_context, is_loopback
from appliance.errors import NightboxError, PayloadError

_LOGGER = logging.getLogger(__name__)

# Seconds between keepalive pings. A session lasts seconds, or hours for tail.
_KEEPALIVE_S = 30
# How long a retained message may take to follow the SUBACK of its
# subscription before the topic is taken as having none, in seconds.
RETAINED_WAIT_S = 2.0
# The availability payloads that Bus publishes (retained, and as last will).
ONLINE = "online"
OFFLINE = "offline"


# The maximum length of a telemetry string, in characters. Ids, a currency
# and a version are short, and a box's last sync error is one line.
MAX_SHORT_TEXT = 64
MAX_MESSAGE_TEXT = 500


def printable(text: str) -> str:
    """Return ``text`` with every non-printable character escaped.

    Boxes control what they publish, so a terminal must never receive their
    control characters (C0, DEL, C1) or format characters such as the bidi
    override U+202E. Each such character becomes a Python escape like
    ``\\x1b`` or ``\\u202e``; printable characters, spaces included, stay.
    """
    if text.isprintable():
        return text
    escaped = []
    for character in text:
        if character.isprintable():
            escaped.append(character)
        else:
            escaped.append(ascii(character)[1:-1])
    return "".join(escaped)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_short_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_SHORT_TEXT


def _is_kits_issued(value: Any) -> bool:
    """Check a count, or ``{"total": count, "stations": {id: count}}``."""
    if _is_count(value):
        return True
    if not isinstance(value, dict) or not _is_count(value.get("total")):
        return False
    stations = value.get("stations")
    return isinstance(stations, dict) and all(
        _is_short_text(station) and _is_count(count)
        for station, count in stations.items()
    )


def _is_optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _is_message(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_MESSAGE_TEXT


# The type check of each field of tele/state, tele/sync and stat/result that
# list and tail print. A field that fails it is shown as invalid.
STATE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "guests_in": _is_count,
    "checkouts": _is_count,
    "kits_issued": _is_kits_issued,
    "sales_minor": _is_integer,
    "currency": _is_short_text,
    "sync_backlog": _is_count,
    "readers_online": _is_count,
    "readers": _is_count,
    "uptime_s": _is_seconds,
    "version": _is_short_text,
}
SYNC_FIELDS: dict[str, Callable[[Any], bool]] = {
    "connected": lambda value: isinstance(value, bool),
    "backlog": _is_count,
    "sent": _is_count,
    "last_success": _is_optional(_is_seconds),
    "last_error": _is_optional(_is_message),
}
RESULT_FIELDS: dict[str, Callable[[Any], bool]] = {
    "kind": _is_short_text,
    "type": _is_short_text,
    "nonce": _is_short_text,
    "ok": lambda value: isinstance(value, bool),
    "reason": _is_short_text,
}


class InvalidValue:
    """The value of a field that has the wrong type for its name."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID = InvalidValue()


def checked_field(
    data: Mapping[str, Any], key: str, checks: Mapping[str, Callable[[Any], bool]]
) -> Any:
    """Return ``data[key]``, None when it is missing, or INVALID when mistyped."""
    if key not in data:
        return None
    value = data[key]
    return value if checks[key](value) else INVALID


class FleetError(NightboxError):
    """A failed fleet operation, whose message names the value and what to do."""


class FleetConnectionError(FleetError, ConnectionError):
    """The broker could not be reached, rejected the login or dropped the link."""


@dataclass(frozen=True, slots=True)
class Login:
    """A broker username and its password, read from a credentials file."""

    username: str
    password: str = field(repr=False)


def load_login(path: Path) -> Login:
    """Read ``{"username": ..., "password": ...}`` from ``path``.

    Raises FleetError naming the file and the missing or invalid field. The
    message never quotes the file's content, which contains the password.
    """
    hint = (
        'it must be a JSON object {"username": ..., "password": ...} like the '
        "file `nightbox fleet account` writes"
    )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FleetError(
            f"cannot read credentials file {path} ({err.strerror}); {hint}"
        ) from err
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise FleetError(f"credentials file {path} is not valid JSON; {hint}") from err
    if not isinstance(document, dict):
        raise FleetError(f"credentials file {path} is not a JSON object; {hint}")
    for name in ("username", "password"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise FleetError(
                f"credentials file {path} has no non-empty string {name!r}; {hint}"
            )
    return Login(document["username"], document["password"])


def readable_by_others(path: Path) -> bool:
    """Return whether the mode of ``path`` grants any access to group or others."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False


def check_transport(broker: BrokerUrl, ca_file: Path | None) -> None:
    """Raise FleetError unless ``broker`` is TLS or on loopback.

    Plain ``mqtt://`` would send the password and signed documents in clear
    text over the network, so it is accepted for this machine only.
    """
    if not broker.tls and not is_loopback(broker.host):
        raise FleetError(
            f"broker {broker} is not encrypted and not on this machine; use "
            f"mqtts://{broker.host}:<port> (plain mqtt:// is only for loopback)"
        )
    if not broker.tls and ca_file is not None:
        raise FleetError(
            f"--ca {ca_file} is given for broker {broker}, which does not use "
            "TLS; use an mqtts:// URL or leave out --ca"
        )


@dataclass(frozen=True, slots=True)
class Message:
    """A message as the broker delivered it."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class BoxTopic:
    """A topic of one box, split into its site, box and suffix."""

    site: str
    box: str
    suffix: str


def parse_box_topic(topic: str) -> BoxTopic | None:
    """Split ``nightbox/<site>/box/<box>/<suffix>``, or return None for other topics."""
    parts = topic.split("/", 4)
    if len(parts) != 5 or parts[0] != ROOT or parts[2] != "box":
        return None
    return BoxTopic(parts[1], parts[3], parts[4])


def box_filter(site: str | None, box: str | None, suffix: str) -> str:
    """Return the topic filter of ``suffix`` for one box, one site or every site."""
    return f"{ROOT}/{site or '+'}/box/{box or '+'}/{suffix}"


class FleetClient:
    """One MQTT 5 session of the operator, used as a context manager.

    The session is clean (nothing is kept on the broker after it ends) and
    does not reconnect: a lost connection raises FleetConnectionError from
    the next call, because its subscriptions would be gone.
    """

    def __init__(
        self,
        broker: BrokerUrl,
        login: Login,
        *,
        ca_file: Path | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.broker = broker
        self._login = login
        self._timeout_s = timeout_s
        self._messages: queue.Queue[Message] = queue.Queue()
        self._state = threading.Condition()
        self._connack: ReasonCode | None = None
        self._disconnect: str | None = None
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        self._started = False
        client_id = f"nightbox-fleet-{secrets.token_hex(6)}"
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self._client.username_pw_set(login.username, login.password)
        self._client.connect_timeout = timeout_s
        if broker.tls:
            self._client.tls_set_context(client_tls_context(ca_file))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    def __enter__(self) -> FleetClient:
        try:
            self.connect()
        except BaseException:
            # __exit__ does not run when __enter__ raises, and paho's network
            # thread may already run after a rejected login.
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Callbacks run on paho's network thread, so they only record and notify.

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._state:
            self._connack = reason_code
            self._state.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._state:
            self._disconnect = str(reason_code)
            self._state.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        with self._state:
            self._subacks[mid] = reason_codes
            self._state.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._state:
            self._pubacks[mid] = reason_code
            self._state.notify_all()

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        self._messages.put(
            Message(message.topic, bytes(message.payload), message.retain)
        )

    def connect(self) -> None:
        """Connect and log in, or raise FleetConnectionError naming the cause."""
        host, port = self.broker.host, self.broker.port
        try:
            self._client.connect(host, port, keepalive=_KEEPALIVE_S, clean_start=True)
        except ssl.SSLCertVerificationError as err:
            raise self._error(
                f"the TLS certificate was rejected ({err.verify_message}); pass "
                "--ca with the CA certificate (PEM) that signed the broker's "
                "certificate, and use the host name the certificate names"
            ) from err
        except ssl.SSLError as err:
            raise self._error(
                f"the TLS handshake failed ({err.reason or err}); check that the "
                "port is the broker's TLS listener"
            ) from err
        except ConnectionRefusedError as err:
            raise self._error(
                "the connection was refused; check that the broker runs and "
                "listens on that port"
            ) from err
        except socket.gaierror as err:
            raise self._error(
                f"the host name was not found ({err.strerror}); check the URL"
            ) from err
        except TimeoutError as err:
            raise self._error(
                f"no connection within {self._timeout_s:g} s; check the host, "
                "the port and any firewall between"
            ) from err
        except OSError as err:
            raise self._error(f"{err.strerror or err}") from err
        self._client.loop_start()
        self._started = True
        self._wait(lambda: self._connack is not None, "the login")
        connack = self._connack
        if connack is None or connack.is_failure:
            raise self._error(
                f"the broker rejected the login of {self._login.username!r} "
                f"({connack}); check the username and password in the "
                "credentials file and that the broker has this account"
            )
        _LOGGER.info("Connected to %s as %s", self.broker, self._login.username)

    def _error(self, cause: str) -> FleetConnectionError:
        return FleetConnectionError(f"cannot use broker {self.broker}: {cause}")

    def _wait(self, done: Callable[[], bool], step: str) -> None:
        """Wait until ``done()`` is true, or raise on disconnect or timeout."""
        deadline = time.monotonic() + self._timeout_s
        with self._state:
            while not done():
                if self._disconnect is not None:
                    raise self._lost(step)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._error(
                        f"no acknowledgement of {step} within {self._timeout_s:g} s"
                    )
                self._state.wait(remaining)

    def _lost(self, step: str) -> FleetConnectionError:
        if self._connack is None:
            return self._error(
                f"the broker closed the connection before {step} "
                f"({self._disconnect}); if the port is a TLS listener, use "
                f"mqtts://{self.broker.host}:{self.broker.port}"
            )
        return self._error(
            f"the connection was lost during {step} ({self._disconnect})"
        )

    def subscribe(self, topic_filters: Iterable[str]) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK.

        Raises FleetError naming each filter the account may not read.
        """
        filters = list(topic_filters)
        options = [(topic, SubscribeOptions(qos=1)) for topic in filters]
        result, mid = self._client.subscribe(options)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise self._lost("the subscription")
        self._wait(lambda: mid in self._subacks, "the subscription")
        with self._state:
            codes = self._subacks.pop(mid)
        denied = [
            f"{topic} ({code})"
            for topic, code in zip(filters, codes, strict=False)
            if code.is_failure
        ]
        if denied:
            raise FleetError(
                f"broker {self.broker} does not let {self._login.username!r} read "
                f"{', '.join(denied)}; use an operator account"
            )

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK.

        Raises FleetError when the PUBACK carries a failure, as mosquitto 2
        sends "Not authorized" to an MQTT 5 client for a message its ACL
        denies. A successful PUBACK proves the broker took the message, not
        that a box received it.
        """
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise self._lost("the publish")
        mid = info.mid
        self._wait(lambda: mid in self._pubacks, "the publish")
        with self._state:
            code = self._pubacks.pop(mid)
        if code.is_failure:
            raise FleetError(
                f"broker {self.broker} rejected the message on {topic} ({code}); "
                f"check that {self._login.username!r} is an operator account"
            )

    def receive(self, timeout_s: float) -> Message | None:
        """Return the next message, or None when none came within ``timeout_s``.

        Raises FleetConnectionError once the connection is lost and every
        message received before is taken.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            try:
                # Short waits, so a lost connection is noticed soon.
                remaining = deadline - time.monotonic()
                return self._messages.get(timeout=max(min(remaining, 0.2), 0.0))
            except queue.Empty:
                pass
            with self._state:
                if self._disconnect is not None:
                    raise self._lost("the wait for messages")
            if time.monotonic() >= deadline:
                return None

    def messages_until(self, deadline: float) -> Iterator[Message]:
        """Yield messages until the monotonic time ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            message = self.receive(remaining)
            if message is None:
                return
            yield message

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        if not self._started:
            return
        self._started = False
        with self._state:
            connected = self._disconnect is None
        if connected:
            self._client.disconnect()
        self._client.loop_stop()


@dataclass(slots=True)
class BoxView:
    """The retained availability, telemetry and sync state of one box."""

    site: str
    box: str
    availability: str | None = None
    telemetry_at: float | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    sync_at: float | None = None
    sync: dict[str, Any] = field(default_factory=dict)

    def state_field(self, key: str) -> Any:
        """Return a tele/state field: its value, None when missing, or INVALID."""
        return checked_field(self.telemetry, key, STATE_FIELDS)

    def sync_backlog(self) -> Any:
        """Return the box's backlog: a count, None when unknown, or INVALID.

        tele/state comes every telemetry interval and tele/sync on each
        change of the sync state, so the one with the newer ``ts`` wins.
        """
        from_state = self.state_field("sync_backlog")
        from_sync = checked_field(self.sync, "backlog", SYNC_FIELDS)
        if from_sync is None:
            return from_state
        if from_state is None:
            return from_sync
        sync_is_newer = self.sync_at is not None and (
            self.telemetry_at is None or self.sync_at > self.telemetry_at
        )
        return from_sync if sync_is_newer else from_state

    def to_json(self) -> dict[str, Any]:
        """Return the row that ``nightbox fleet list --json`` prints.

        A field with the wrong type is null and named in ``invalid``.
        """
        row: dict[str, Any] = {
            "site": self.site,
            "box": self.box,
            "availability": self.availability,
            "telemetry_at": self.telemetry_at,
            "guests_in": self.state_field("guests_in"),
            "sync_backlog": self.sync_backlog(),
            "readers_online": self.state_field("readers_online"),
            "readers": self.state_field("readers"),
        }
        invalid = sorted(key for key, value in row.items() if value is INVALID)
        for key in invalid:
            row[key] = None
        row["invalid"] = invalid
        return row


@dataclass(slots=True)
class Survey:
    """The boxes a ``list`` saw and the retained messages it could not read."""

    boxes: list[BoxView]
    unreadable: list[str]


SURVEY_SUFFIXES = ("availability", "tele/state", "tele/sync")


def survey_boxes(client: FleetClient, site: str | None, wait_s: float) -> Survey:
    """Collect the retained availability and telemetry of every box.

    MQTT has no marker for the end of the retained messages, so the broker is
    given ``wait_s`` seconds after the SUBACK to send them.
    """
    client.subscribe(box_filter(site, None, suffix) for suffix in SURVEY_SUFFIXES)
    views: dict[tuple[str, str], BoxView] = {}
    unreadable: list[str] = []
    for message in client.messages_until(time.monotonic() + wait_s):
        parsed = parse_box_topic(message.topic)
        if parsed is None or not message.payload:
            continue
        key = (parsed.site, parsed.box)
        view = views.get(key) or BoxView(parsed.site, parsed.box)
        try:
            apply_message(view, parsed.suffix, message.payload)
        except PayloadError as err:
            unreadable.append(f"{message.topic}: {err}")
            continue
        views[key] = view
    return Survey(sorted(views.values(), key=lambda v: (v.site, v.box)), unreadable)


def apply_message(view: BoxView, suffix: str, payload: bytes) -> None:
    """Update ``view`` from one message, or raise PayloadError when it is invalid."""
    if suffix == "availability":
        view.availability = read_availability(payload)
        return
    decoded = envelope.decode(payload)
    if suffix == "tele/state":
        view.telemetry = decoded.data
        view.telemetry_at = decoded.ts
    elif suffix == "tele/sync":
        view.sync = decoded.data
        view.sync_at = decoded.ts


def read_availability(payload: bytes) -> str:
    """Return ``online`` or ``offline``, or raise PayloadError for anything else."""
    text = payload.decode("utf-8", errors="replace").strip()
    if text not in (ONLINE, OFFLINE):
        raise PayloadError(
            f"availability must be 'online' or 'offline', not {text!r:.40}"
        )
    return text


def await_availability(client: FleetClient, topic: str, wait_s: float) -> str | None:
    """Return the retained availability on ``topic``, or None when there is none.

    ``topic`` must already be subscribed. Messages on other topics are
    dropped, so call it before publishing a document whose result matters.
    """
    for message in client.messages_until(time.monotonic() + wait_s):
        if message.topic != topic or not message.payload:
            continue
        try:
            return read_availability(message.payload)
        except PayloadError as err:
            _LOGGER.warning("Ignored availability on %s: %s", topic, err)
    return None


def collect_availability(
    client: FleetClient, site: str, wait_s: float
) -> dict[str, str]:
    """Return the retained availability of every box of ``site`` by box id.

    ``nightbox/<site>/box/+/availability`` must already be subscribed. The
    broker is given ``wait_s`` seconds, because no message marks the last
    retained one.
    """
    states: dict[str, str] = {}
    for message in client.messages_until(time.monotonic() + wait_s):
        parsed = parse_box_topic(message.topic)
        if parsed is None or parsed.site != site or parsed.suffix != "availability":
            continue
        if not message.payload:
            continue
        try:
            states[parsed.box] = read_availability(message.payload)
        except PayloadError as err:
            _LOGGER.warning(
                "Ignored availability on %s: %s", printable(message.topic), err
            )
    return states


def await_results(
    client: FleetClient, site: str, nonce: str, boxes: set[str], deadline: float
) -> dict[str, dict[str, Any]]:
    """Collect the result ``data`` of each of ``boxes`` whose ``nonce`` matches.

    Returns when every box sent its result, or at the monotonic time
    ``deadline``. A box missing from the returned dict sent no result. The
    ``stat/result`` topics must already be subscribed. Results of other
    documents and unreadable messages are skipped, because several operators
    may manage the same box.
    """
    results: dict[str, dict[str, Any]] = {}
    if not boxes:
        return results
    for message in client.messages_until(deadline):
        parsed = parse_box_topic(message.topic)
        if parsed is None or parsed.site != site or parsed.suffix != "stat/result":
            continue
        if parsed.box not in boxes or parsed.box in results:
            continue
        try:
            data = envelope.decode(message.payload).data
        except PayloadError as err:
            _LOGGER.warning("Ignored a result on %s: %s", printable(message.topic), err)
            continue
        if data.get("nonce") != nonce:
            continue
        results[parsed.box] = data
        if len(results) == len(boxes):
            break
    return results
