"""``nightbox reader list``: the site's readers and their status on the box's broker.

Each reader publishes a retained ``status`` and ``availability`` (readers
on a serial uplink through the box's bridge), and the box publishes its
retained status with the open reader faults. This module logs in as the
site's ``observer`` account, which may read exactly those topics, and
collects the retained messages.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.bus import envelope
from appliance.bus.url import BrokerUrl
from appliance.config import ReaderConfig, SiteConfig
from appliance.errors import PayloadError
from appliance.remote.fleet_client import FleetClient, FleetError, Login
from provisioning.readers.registration import credentials_path
from provisioning.site_access import OBSERVER

_LOGGER = logging.getLogger(__name__)

# MQTT marks no end of the retained messages, so the broker gets this long
# after the SUBACK to send them. On loopback they arrive within milliseconds.
RETAINED_WAIT_S = 1.0
CONNECT_TIMEOUT_S = 5.0
ONLINE = "online"
OFFLINE = "offline"
NEVER_SEEN = "never seen"
# The reader published a status, but the broker has no availability of it.
NO_AVAILABILITY = "no availability"
UNKNOWN = "unknown"
# Fields of a reader's status data shown by `reader list`, in table order.
STATUS_FIELDS = (
    "fw",
    "uptime_s",
    "heap_free",
    "scan_per_min",
    "reconnects",
    "last_error",
    "ring_used",
    "ring_dropped",
    "clock_synced",
    "update",
)
# "listener <port> <host>" in the mosquitto.conf that `nightbox run` writes.
_LISTENER = re.compile(r"^listener (\d{1,5}) (\S+)$", re.M)
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(slots=True)
class ReaderView:
    """One reader as the site file and the broker describe it."""

    reader: str
    role: str
    zone: str
    uplink: str
    configured: bool = True
    state: str = UNKNOWN
    status: dict[str, Any] = field(default_factory=dict)
    status_at: float | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the view as a JSON-ready dictionary."""
        return {
            "reader": self.reader,
            "role": self.role,
            "zone": self.zone,
            "uplink": self.uplink,
            "configured": self.configured,
            "state": self.state,
            "status": {name: self.status.get(name) for name in STATUS_FIELDS},
            "status_at": self.status_at,
            "faults": self.faults,
        }


@dataclass(slots=True)
class ReaderSurvey:
    """Every reader, and whether the box's broker could be asked about them."""

    broker: str | None
    box_reachable: bool
    box_state: str
    problem: str | None
    readers: list[ReaderView]
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the survey as a JSON-ready dictionary."""
        return {
            "broker": self.broker,
            "box_reachable": self.box_reachable,
            "box": self.box_state,
            "problem": self.problem,
            "readers": [reader.to_json() for reader in self.readers],
            "unreadable": self.unreadable,
        }


def broker_address(config: SiteConfig) -> BrokerUrl | None:
    """Return where the box's broker listens, or None when that is unknown.

    With ``broker.port = 0`` the box picks a free port at every start, and
    the only record of it is the mosquitto.conf the box wrote in
    ``<data_dir>/run``.
    """
    host, port = config.broker.host, config.broker.port
    if port == 0:
        try:
            text = (config.data_dir / "run" / "mosquitto.conf").read_text()
        except OSError:
            return None
        match = _LISTENER.search(text)
        if match is None:
            return None
        port, host = int(match.group(1)), match.group(2)
    return BrokerUrl("mqtt", _WILDCARD_HOSTS.get(host, host), port)


def survey_readers(
    config: SiteConfig, *, wait_s: float = RETAINED_WAIT_S
) -> ReaderSurvey:
    """List the site's readers with their retained status from the box's broker.

    A broker that cannot be reached or used is reported in ``problem``,
    and the configured readers are still listed, with state ``unknown``.
    """
    views = {reader.id: _configured_view(reader) for reader in config.readers}
    survey = ReaderSurvey(None, False, UNKNOWN, None, [])
    url = broker_address(config)
    if url is None:
        survey.problem = (
            "the box's broker port is unknown: broker.port is 0, so the box "
            "picks one at start, and no started box recorded it in "
            f"{config.data_dir / 'run'}; start the box or set broker.port"
        )
    else:
        survey.broker = str(url)
        try:
            _collect(config, url, views, survey, wait_s)
        except (FleetError, ValueError) as err:
            survey.problem = f"the box does not seem to run: {err}"
    survey.readers = sorted(
        views.values(), key=lambda view: (not view.configured, view.reader)
    )
    return survey


def _configured_view(reader: ReaderConfig) -> ReaderView:
    return ReaderView(reader.id, reader.role, reader.zone, reader.uplink)


def _collect(
    config: SiteConfig,
    url: BrokerUrl,
    views: dict[str, ReaderView],
    survey: ReaderSurvey,
    wait_s: float,
) -> None:
    login = _observer_login(config)
    root = f"nightbox/{config.site_id}"
    box_root = f"{root}/box/{config.box_id}"
    with FleetClient(url, login, timeout_s=CONNECT_TIMEOUT_S) as client:
        client.subscribe(
            [
                f"{root}/reader/+/status",
                f"{root}/reader/+/availability",
                f"{box_root}/status",
                f"{box_root}/availability",
            ]
        )
        survey.box_reachable = True
        for message in client.messages_until(time.monotonic() + wait_s):
            if not message.payload:
                continue
            try:
                _apply(message.topic, message.payload, root, box_root, views, survey)
            except PayloadError as err:
                survey.unreadable.append(f"{message.topic}: {err}")
    for view in views.values():
        # A reader retains its availability on every connect, so a status
        # without one comes from an unusual client or a cleared topic.
        if view.state == UNKNOWN:
            view.state = NO_AVAILABILITY if view.status else NEVER_SEEN


def _observer_login(config: SiteConfig) -> Login:
    """Return the observer's login without creating any account.

    SiteCredentials.account would generate a missing password and write the
    file, which a listing must not do.
    """
    path = credentials_path(config)
    try:
        accounts = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(
            f"no broker credentials in {path}, so no box has run with this "
            "data folder yet"
        ) from err
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read broker credentials {path}: {err}") from err
    password = accounts.get(OBSERVER) if isinstance(accounts, dict) else None
    if not isinstance(password, str):
        raise ValueError(
            f"{path} has no {OBSERVER!r} account; start the box once with "
            "'nightbox run' to create it"
        )
    return Login(OBSERVER, password)


def _apply(
    topic: str,
    payload: bytes,
    root: str,
    box_root: str,
    views: dict[str, ReaderView],
    survey: ReaderSurvey,
) -> None:
    if topic == f"{box_root}/availability":
        survey.box_state = _availability(payload)
        return
    if topic == f"{box_root}/status":
        _apply_faults(envelope.decode(payload).data, views)
        return
    parts = topic.removeprefix(f"{root}/reader/").split("/")
    if len(parts) != 2:
        return
    reader_id, suffix = parts
    view = views.get(reader_id)
    if view is None:
        view = ReaderView(reader_id, "", "", "", configured=False)
        views[reader_id] = view
    if suffix == "availability":
        view.state = _availability(payload)
    elif suffix == "status":
        decoded = envelope.decode(payload)
        view.status = dict(decoded.data)
        view.status_at = decoded.ts


def _availability(payload: bytes) -> str:
    text = payload.decode("utf-8", errors="replace").strip()
    if text not in (ONLINE, OFFLINE):
        raise PayloadError(
            f"availability must be 'online' or 'offline', not {text!r:.40}"
        )
    return text


def _apply_faults(data: dict[str, Any], views: dict[str, ReaderView]) -> None:
    faults = data.get("faults")
    if not isinstance(faults, list):
        return
    for fault in faults:
        if not isinstance(fault, dict):
            continue
        view = views.get(str(fault.get("reader")))
        if view is not None:
            view.faults.append({"kind": fault.get("kind"), "since": fault.get("since")})
