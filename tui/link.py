"""The terminal UI's connection to a box: its bus client and the live state it keeps.

:class:`ConsoleLink` logs in to the box's broker as terminal ``console``,
subscribes to what the screens show (events, statuses, availability, creator
figures, health, telemetry and the box's console jobs) and
keeps the latest of each in :class:`LiveState`. Screens never talk to the
broker themselves: they read ``link.state``, register with :meth:`watch` to
hear what changed, and send requests with :meth:`ConsoleLink.request`.
The bus client reconnects with back-off by itself; after every connect the
link asks the box for ``console/overview`` again, so a UI that was offline
catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance._toml_values import identifier
from appliance.bus import envelope
from appliance.bus.client import Bus, BusSettings, Incoming
from appliance.bus.url import parse_broker_url
from appliance.errors import ConfigError, PayloadError, RequestError

_LOGGER = logging.getLogger(__name__)

CONSOLE_ID = "console"
CONSOLE_USERNAME = "terminal-console"
# Expected publishing periods in seconds; a value older than three periods
# is shown as stale.
_EXPECTED_PERIOD_S = {"box_status": 1.0, "telemetry": 10.0}
_STALE_PERIODS = 3
# The overview holds the exits per minute and the top items, which no
# message on the bus carries, so it is asked for again at this interval.
OVERVIEW_REFRESH_S = 15.0
# While the box does not answer, the overview is asked for this often, so the
# console notices within seconds when the box starts.
OVERVIEW_RETRY_S = 5.0
_EVENTS_KEPT = 200
# CONNACK reason codes of a refused login: MQTT 5 uses 134 (bad user name or
# password) and 135 (not authorized), MQTT 3.1.1 uses 4 and 5.
_LOGIN_REFUSALS = {
    134: "bad username or password",
    135: "not authorized",
    4: "bad username or password",
    5: "not authorized",
}
LOGIN_FILE_FIX = "make the login file again with 'nightbox console login-file'"


@dataclass(frozen=True)
class LinkSettings:
    """Where the box's broker is and how the console logs in to it."""

    host: str
    port: int
    site: str
    box: str
    username: str
    password: str = field(repr=False)
    device_id: str = CONSOLE_ID
    # What to do when the broker refuses the login, for the console's message.
    login_fix: str = LOGIN_FILE_FIX
    # What to do while no broker answers and the console has never
    # connected; None shows only the address it connects to.
    start_fix: str | None = None

    @classmethod
    def from_login_file(cls, path: Path) -> LinkSettings:
        """Read a login file (``nightbox console login-file`` or the demo's).

        Raises ConfigError naming the file and what is wrong with it.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(
                f"cannot read login file {path}: {err.strerror}; create one with "
                "'nightbox console login-file --config FILE --output FILE'"
            ) from err
        try:
            document = json.loads(text)
        except ValueError as err:
            raise ConfigError(
                f"login file {path} is not valid JSON ({err}); create it again with "
                "'nightbox console login-file'"
            ) from err
        if not isinstance(document, dict):
            raise ConfigError(f"login file {path} must contain a JSON object")
        values = {}
        for key in ("broker", "site", "box", "username", "password"):
            value = document.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"login file {path} has no valid {key!r}; create it again with "
                    "'nightbox console login-file'"
                )
            values[key] = value
        for key in ("site", "box"):
            try:
                identifier(values, key)
            except ConfigError as err:
                raise ConfigError(
                    f"login file {path}: {err}; create it again with "
                    "'nightbox console login-file'"
                ) from err
        try:
            url = parse_broker_url(values["broker"])
        except ConfigError as err:
            raise ConfigError(f"login file {path}: {err}") from err
        if url.tls:
            raise ConfigError(
                f"login file {path} names {values['broker']}, but the console "
                "connects to the box's own broker without TLS; give mqtt://host:port"
            )
        return cls(
            host=url.host,
            port=url.port,
            site=values["site"],
            box=values["box"],
            username=values["username"],
            password=values["password"],
        )

    def bus_settings(self) -> BusSettings:
        """Return the bus client settings of the console terminal."""
        return BusSettings(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            kind="terminal",
            device_id=self.device_id,
            site=self.site,
        )


@dataclass(frozen=True)
class Stamped:
    """A value from the bus and the monotonic time it was received."""

    value: dict[str, Any]
    received: float


@dataclass
class ReaderLive:
    """The last status and availability of one reader on the bus."""

    status: dict[str, Any] | None = None
    availability: str | None = None


@dataclass
class LiveState:
    """The latest values the console has received from the box."""

    box_status: Stamped | None = None
    telemetry: Stamped | None = None
    sync: Stamped | None = None
    overview: Stamped | None = None
    health: Stamped | None = None
    box_availability: str | None = None
    readers: dict[str, ReaderLive] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: deque[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=_EVENTS_KEPT)
    )
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Monotonic time at which the link went down; None while it is up.
    offline_since: float | None = None

    def is_stale(self, source: str, now: float | None = None) -> bool:
        """Return whether the value of ``source`` may no longer be true.

        Every value is stale while the link is down or before it first
        arrives. Box status and telemetry are also stale when older than
        three of their publishing periods (1 s and 10 s).
        """
        if self.offline_since is not None:
            return True
        stamped = self._stamped(source)
        if stamped is None:
            return True
        period_s = _EXPECTED_PERIOD_S.get(source)
        if period_s is None:
            return False
        current = time.monotonic() if now is None else now
        return current - stamped.received > _STALE_PERIODS * period_s

    def _stamped(self, source: str) -> Stamped | None:
        values: dict[str, Stamped | None] = {
            "box_status": self.box_status,
            "telemetry": self.telemetry,
            "sync": self.sync,
            "overview": self.overview,
            "health": self.health,
        }
        if source not in values:
            raise ValueError(
                f"unknown live source {source!r}; use one of {sorted(values)}"
            )
        return values[source]

    def box_time(self, at: float | None = None) -> float | None:
        """Return the box's Unix time at monotonic time ``at`` (default now).

        Counted from the ``now`` of the last box status, so it follows the
        box's clock, not this computer's. None before the first status.
        """
        status = self.box_status
        if status is None:
            return None
        now = status.value.get("now")
        if not isinstance(now, int | float):
            return None
        moment = time.monotonic() if at is None else at
        return float(now) + max(0.0, moment - status.received)

    def status_time(self) -> float | None:
        """Return the ``now`` of the last box status: the box's own time."""
        status = self.box_status
        if status is None:
            return None
        now = status.value.get("now")
        return float(now) if isinstance(now, int | float) else None


Watcher = Callable[[str], None]


class ConsoleLink:
    """The console terminal's bus connection to one box, with its live state."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.state = LiveState(offline_since=time.monotonic())
        self._bus = Bus(settings.bus_settings())
        self._watchers: list[Watcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        # Set while the box sends no reply to the overview request although the
        # broker is connected, because the box is not running or is another one.
        self._box_silent = False
        prefix = self._bus.topics.prefix
        self._prefix = prefix
        self._box_prefix = f"{prefix}/box/{settings.box}/"
        self._bus.on_connect(self._on_connect)

    @property
    def online(self) -> bool:
        """Whether the link is connected to the box's broker now."""
        return self._bus.connected.is_set()

    @property
    def address(self) -> str:
        """``host:port`` of the broker, for messages."""
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def login_refusal(self) -> str | None:
        """The broker's reason for refusing the console's login, or None."""
        error = self._bus.last_error
        if self.online or not isinstance(error, aiomqtt.MqttCodeError):
            return None
        code = (
            error.rc if isinstance(error.rc, int) else getattr(error.rc, "value", None)
        )
        return _LOGIN_REFUSALS.get(code) if isinstance(code, int) else None

    @property
    def problem(self) -> str | None:
        """A one-line message saying why the console shows nothing live, or None.

        Covers what a plain ``OFFLINE`` would hide: a broker that refuses the
        login, a connected broker whose box does not answer, and (with
        ``LinkSettings.start_fix``) a box that has not been started yet.
        """
        settings = self.settings
        refusal = self.login_refusal
        if refusal is not None:
            return (
                f"the broker refused the console's login: {refusal}; "
                f"{settings.login_fix}"
            )
        if self.online:
            if self._box_silent:
                return (
                    f"no reply from box {settings.box} of site {settings.site}; "
                    "is it running?"
                )
            return None
        never_connected = self.state.box_status is None
        if never_connected and settings.start_fix is not None:
            return f"no broker answers at {self.address}; {settings.start_fix}"
        return None

    async def start(self) -> None:
        """Start connecting; return at once and keep reconnecting in the background."""
        if self._started:
            return
        self._started = True
        topics = self._bus.topics
        prefix = self._prefix
        subscriptions = (
            (topics.all_events, self._on_event),
            (f"{prefix}/+/+/status", self._on_status),
            (f"{prefix}/+/+/availability", self._on_availability),
            (f"{prefix}/creators/+/figures", self._on_figures),
            (topics.health, self._on_health),
            (f"{prefix}/box/+/tele/+", self._on_telemetry),
            (f"{self._box_prefix}console/#", self._on_console),
        )
        for topic_filter, handler in subscriptions:
            self._bus.subscribe(topic_filter, handler)
        await self._bus.__aenter__()
        self._tasks.append(
            asyncio.create_task(self._watch_connection(), name="console-link")
        )
        self._tasks.append(
            asyncio.create_task(self._refresh_overview_forever(), name="overview")
        )

    async def stop(self) -> None:
        """Disconnect and stop the background tasks."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self._started:
            await self._bus.close()
            self._started = False

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(source)`` whenever something changes; return an unsubscribe.

        Sources: ``link``, ``box_status``, ``telemetry``, ``sync``, ``overview``,
        ``health``, ``reader:<id>``, ``event:<type>``, ``figures:<creator>``
        and ``job:<job>``. Callbacks run on the event loop and must not block.
        Raw sightings batches are not followed: they arrive about a hundred
        times a second in a busy night, and screens ask the box for the bands
        it heard (``console/nearby``) instead.
        """
        self._watchers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._watchers.remove(callback)

        return unsubscribe

    async def request(
        self,
        service: str,
        action: str,
        data: dict[str, Any],
        *,
        token: str | None = None,
        mutating: bool = False,
        timeout_s: float = 5.0,
    ) -> dict[str, Any]:
        """Send a request to the box and return its reply's ``data``.

        A mutating request gets a fresh ``idempotency_key`` unless it has
        one. Raises RequestError with the box's refusal code, ``offline``
        when the link is down and ``timeout`` when no reply comes in time.
        """
        if not self.online:
            raise RequestError(
                "offline",
                f"the box's broker at {self.address} is not connected; "
                "the console keeps reconnecting, try again in a moment",
            )
        body = dict(data)
        if mutating and "idempotency_key" not in body:
            body["idempotency_key"] = str(uuid.uuid4())
        return await self._bus.request(
            self._bus.topics.api(service, action),
            body,
            timeout_s=timeout_s,
            token=token,
        )

    async def refresh_overview(self) -> dict[str, Any] | None:
        """Ask the box for ``console/overview`` and keep it; None when that fails."""
        try:
            overview = await self.request("console", "overview", {})
        except RequestError as err:
            _LOGGER.warning("Could not get the console overview: %s", err)
            if err.code == "timeout" and self.online and not self._box_silent:
                self._box_silent = True
                self.notify("link")
            return None
        self.state.overview = Stamped(overview, time.monotonic())
        if self._box_silent:
            self._box_silent = False
            self.notify("link")
        self.notify("overview")
        return overview

    async def refresh_jobs(self) -> None:
        """Ask the box for the last message of each job, to catch up after a gap."""
        try:
            reply = await self.request("console", "jobs", {})
        except RequestError as err:
            _LOGGER.warning("Could not get the console jobs: %s", err)
            return
        jobs = reply.get("jobs")
        if not isinstance(jobs, list):
            return
        for job in jobs:
            if isinstance(job, dict) and isinstance(job.get("job"), str):
                self.state.jobs[job["job"]] = job
                self.notify(f"job:{job['job']}")

    def notify(self, source: str) -> None:
        """Call every watcher with ``source``, as when a message changed it."""
        for callback in list(self._watchers):
            try:
                callback(source)
            except Exception:
                # One broken screen must not stop the others from updating.
                _LOGGER.exception("A watcher of %s failed", source)

    async def _on_connect(self) -> None:
        await self.refresh_overview()
        await self.refresh_jobs()

    async def _watch_connection(self) -> None:
        """Follow the bus client's connection and login errors into the live state.

        Bus offers no event for a lost connection or a refused login, so both
        are polled.
        """
        online = False
        shown_problem: str | None = None
        while True:
            if self.online != online:
                online = self.online
                if online:
                    self.state.offline_since = None
                    self._box_silent = False
                    _LOGGER.info(
                        "Console connected to the box's broker at %s", self.address
                    )
                else:
                    self.state.offline_since = time.monotonic()
                    _LOGGER.warning("Console lost the box's broker at %s", self.address)
                self.notify("link")
            problem = self.problem
            if problem != shown_problem:
                shown_problem = problem
                if problem is not None:
                    _LOGGER.warning("Console: %s", problem)
                self.notify("link")
            await asyncio.sleep(0.2)

    async def _refresh_overview_forever(self) -> None:
        while True:
            silent = self._box_silent or self.state.overview is None
            await asyncio.sleep(OVERVIEW_RETRY_S if silent else OVERVIEW_REFRESH_S)
            if self.online:
                await self.refresh_overview()

    def _decode(self, incoming: Incoming) -> envelope.Envelope | None:
        try:
            return envelope.decode(incoming.payload)
        except PayloadError as err:
            self._bus.reject(incoming, str(err), "invalid-envelope")
            return None

    def _device(self, topic: str) -> tuple[str, str] | None:
        """Return ``(kind, id)`` of a ``nightbox/<site>/<kind>/<id>/...`` topic."""
        parts = topic.split("/")
        if len(parts) < 5:
            return None
        return parts[2], parts[3]

    def _reader(self, reader_id: str) -> ReaderLive:
        reader = self.state.readers.get(reader_id)
        if reader is None:
            reader = self.state.readers[reader_id] = ReaderLive()
        return reader

    async def _on_event(self, incoming: Incoming) -> None:
        message = self._decode(incoming)
        if message is None:
            return
        event_type = message.body.get("type")
        if not isinstance(event_type, str):
            event_type = incoming.topic.rsplit("/", 1)[-1]
        self.state.events.append((event_type, message.data))
        self.notify(f"event:{event_type}")

    async def _on_status(self, incoming: Incoming) -> None:
        device = self._device(incoming.topic)
        message = self._decode(incoming)
        if device is None or message is None:
            return
        kind, device_id = device
        if kind == "box" and device_id == self.settings.box:
            self.state.box_status = Stamped(message.data, time.monotonic())
            self.notify("box_status")
        elif kind == "reader":
            self._reader(device_id).status = message.data
            self.notify(f"reader:{device_id}")

    async def _on_availability(self, incoming: Incoming) -> None:
        device = self._device(incoming.topic)
        if device is None:
            return
        kind, device_id = device
        text = incoming.payload.decode("utf-8", "replace").strip()[:16]
        if kind == "box" and device_id == self.settings.box:
            self.state.box_availability = text
            self.notify("box_status")
        elif kind == "reader":
            self._reader(device_id).availability = text
            self.notify(f"reader:{device_id}")

    async def _on_figures(self, incoming: Incoming) -> None:
        message = self._decode(incoming)
        if message is None:
            return
        creator = incoming.topic.split("/")[-2]
        self.state.figures[creator] = message.data
        self.notify(f"figures:{creator}")

    async def _on_health(self, incoming: Incoming) -> None:
        message = self._decode(incoming)
        if message is None:
            return
        self.state.health = Stamped(message.data, time.monotonic())
        self.notify("health")

    async def _on_telemetry(self, incoming: Incoming) -> None:
        if not incoming.topic.startswith(self._box_prefix):
            return  # another box of the site
        message = self._decode(incoming)
        if message is None:
            return
        name = incoming.topic.rsplit("/", 1)[-1]
        stamped = Stamped(message.data, time.monotonic())
        if name == "state":
            self.state.telemetry = stamped
            self.notify("telemetry")
        elif name == "sync":
            self.state.sync = stamped
            self.notify("sync")

    async def _on_console(self, incoming: Incoming) -> None:
        parts = incoming.topic.removeprefix(self._box_prefix).split("/")
        if len(parts) != 3 or parts[:2] != ["console", "jobs"]:
            return
        message = self._decode(incoming)
        if message is None:
            return
        job = parts[2]
        self.state.jobs[job] = message.data
        self.notify(f"job:{job}")
