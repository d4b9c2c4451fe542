"""The health check after a switch: the box must report the new version on the bus.

The updater logs in to the box's broker as the site's ``operator`` account,
whose clear password the box keeps in ``<data_dir>/secrets/broker.json``
(readable by root, and the updater runs as root). That account reads the
box's retained telemetry ``nightbox/<site>/box/<box>/tele/state``, which
carries ``software_version()`` in ``data.version``, and its availability.

The watch starts before the restart, so the telemetry retained by the old
process is known and never taken for the new one's. Telemetry whose
``uptime_s`` is longer than the time since the restart also comes from the
old process. The box is healthy when,
within the timeout, it publishes telemetry with the expected version and
then stays ``online`` for :data:`SETTLE_S` seconds: a process that dies
right after its first publish leaves its last will, ``offline``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from appliance.bus.topics import Topics
from appliance.config import SiteConfig
from appliance.errors import ConfigError
from provisioning.site_access import OPERATOR

_LOGGER = logging.getLogger(__name__)

# How long the box must stay online after its first telemetry. The box
# starts its portal and studio after it publishes telemetry, and a failure
# there stops the process within a second or two.
SETTLE_S = 5.0
_KEEPALIVE_S = 10
# A broker on loopback replies within milliseconds. One that is down is
# retried while the box restarts.
_SUBSCRIBE_WAIT_S = 5.0
_POLL_S = 0.2
# Telemetry rounds uptime_s to 0.1 s.
_UPTIME_ROUNDING_S = 0.1
# How long the broker gets to deliver retained messages after the SUBACK.
_RETAINED_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of a health check: ``ok``, and the reason when it failed."""

    ok: bool
    reason: str
    seconds: float


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    """The box's broker address and the account that the health check logs in with."""

    host: str
    port: int
    username: str
    password: str

    def __repr__(self) -> str:
        return f"BrokerLogin({self.host}:{self.port}, {self.username}, <hidden>)"


def broker_login(config: SiteConfig) -> BrokerLogin:
    """Return the broker address and operator account of the site ``config``.

    Raises ConfigError when the broker has no fixed port (``broker.port =
    0`` picks a new port at each start) or the credentials file has no
    operator account yet.
    """
    if config.broker.port == 0:
        raise ConfigError(
            "the health check needs the box's broker port, but broker.port is 0 "
            "(a new port at every start); set broker.port, such as 1883"
        )
    path = config.data_dir / "secrets" / "broker.json"
    try:
        accounts = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(
            f"no broker credentials at {path}; start the box once with "
            "'nightbox run --config FILE', which creates them"
        ) from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read broker credentials {path}: {err}") from err
    password = accounts.get(OPERATOR) if isinstance(accounts, dict) else None
    if not isinstance(password, str):
        raise ConfigError(
            f"{path} has no {OPERATOR!r} account; start the box once with "
            "'nightbox run --config FILE', which creates it"
        )
    host = config.broker.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return BrokerLogin(host, config.broker.port, OPERATOR, password)


class HealthWatch:
    """Telemetry and availability of one box, collected from before a restart on."""

    def __init__(self, config: SiteConfig, login: BrokerLogin) -> None:
        topics = Topics(config.site_id)
        self._telemetry_topic = topics.telemetry(config.box_id)
        self._availability_topic = topics.availability("box", config.box_id)
        self._login = login
        self._messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self._stale: set[bytes] = set()
        self._restarted_at = time.monotonic()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"nightbox-updater-{config.box_id}",
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(login.username, login.password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)

    def start(self, wait_s: float) -> None:
        """Connect and note the telemetry that the running box has retained."""
        # connect_async retries in the network thread, so a broker that is
        # down now (one the box starts itself) is reached once it is back.
        self._client.connect_async(
            self._login.host, self._login.port, keepalive=_KEEPALIVE_S
        )
        self._client.loop_start()
        if not self._subscribed.wait(timeout=wait_s):
            _LOGGER.warning(
                "The health check could not subscribe at %s:%s within %g s; it "
                "keeps trying while the box restarts",
                self._login.host,
                self._login.port,
                wait_s,
            )
            return
        # The broker sends retained messages right after the SUBACK.
        deadline = time.monotonic() + _RETAINED_WAIT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                topic, payload = self._messages.get(timeout=remaining)
            except queue.Empty:
                break
            if topic == self._telemetry_topic:
                self._stale.add(payload)

    def restarting(self) -> None:
        """Mark the moment of the restart: later telemetry is the new process's.

        Messages received so far came from the process being replaced, so
        they are dropped.
        """
        self._restarted_at = time.monotonic()
        while True:
            try:
                self._messages.get_nowait()
            except queue.Empty:
                break

    def wait_healthy(
        self, version: str, timeout_s: float, settle_s: float = SETTLE_S
    ) -> HealthResult:
        """Wait until the box reports ``version`` and stays online for ``settle_s``.

        Returns a failed result when ``timeout_s`` after the restart passes
        first, or when the box goes offline after reporting the version.
        """
        deadline = self._restarted_at + timeout_s
        seen_version: str | None = None
        healthy_since: float | None = None
        online = False
        while True:
            now = time.monotonic()
            if healthy_since is not None and now - healthy_since >= settle_s:
                return HealthResult(True, "", now - self._restarted_at)
            if now >= deadline:
                return HealthResult(
                    False,
                    _timeout_reason(
                        version, seen_version, healthy_since, timeout_s, settle_s
                    ),
                    now - self._restarted_at,
                )
            try:
                topic, payload = self._messages.get(
                    timeout=min(_POLL_S, deadline - now)
                )
            except queue.Empty:
                continue
            if topic == self._availability_topic:
                online = payload.strip() == b"online"
                if not online and healthy_since is not None:
                    return HealthResult(
                        False,
                        f"version {version} reported itself and then went offline "
                        "(its process stopped); the box's journal has the error",
                        time.monotonic() - self._restarted_at,
                    )
                continue
            if payload in self._stale:
                continue
            reported = _fresh_version(payload, time.monotonic() - self._restarted_at)
            if reported is None:
                continue
            seen_version = reported
            if reported == version and healthy_since is None:
                _LOGGER.info(
                    "The box reports version %s; checking it stays up", version
                )
                healthy_since = time.monotonic()

    def close(self) -> None:
        """Disconnect from the broker."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            _LOGGER.warning("The health check's broker login failed: %s", reason_code)
            return
        client.subscribe([(self._telemetry_topic, 1), (self._availability_topic, 1)])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: Any,
        properties: Any,
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        self._messages.put((message.topic, bytes(message.payload)))


@contextlib.contextmanager
def watch_box(config: SiteConfig, login: BrokerLogin) -> Iterator[HealthWatch]:
    """Watch the box's telemetry from now on; stop watching on exit."""
    watch = HealthWatch(config, login)
    watch.start(wait_s=_SUBSCRIBE_WAIT_S)
    try:
        yield watch
    finally:
        watch.close()


def _fresh_version(payload: bytes, since_restart_s: float) -> str | None:
    """Return the version in telemetry sent by a process started after the restart.

    A process started after the restart has an ``uptime_s`` of at most the
    time since the restart. The replaced process ran for longer, so its
    telemetry, delivered late or retained, is ignored (None).
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, dict):
        return None
    version = data.get("version")
    uptime_s = data.get("uptime_s")
    if not isinstance(version, str) or not isinstance(uptime_s, int | float):
        return None
    if uptime_s > since_restart_s + _UPTIME_ROUNDING_S:
        return None
    return version


def _timeout_reason(
    version: str,
    seen: str | None,
    healthy_since: float | None,
    timeout_s: float,
    settle_s: float,
) -> str:
    if healthy_since is not None:
        return (
            f"version {version} reported itself but did not stay up for "
            f"{settle_s:g} s within the {timeout_s:g} s health timeout"
        )
    if seen is not None:
        return (
            f"within {timeout_s:g} s the box reported version {seen}, never "
            f"{version}; the new version did not start, so the box's journal "
            "has the error"
        )
    return (
        f"the box sent no telemetry within {timeout_s:g} s after the restart; "
        "the new version did not start, so the box's journal has the error"
    )
