"""``nightbox demo``: a whole simulated night on a real broker, scored.

The box runs its real services against the broker. Simulated readers,
a kit station and an opt-in desk are ordinary bus clients with their own
credentials. The night's outcome is scored against the simulator's ground
truth. The simulated readers wait for the box to keep up, so the same seed
gives the same night on a fast or a slow machine. The box also serves the
guest portal on loopback, with the tee's sample 3D model preloaded
(``_portal.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle, start_broker
from appliance.bus.client import Bus, BusSettings, Incoming
from appliance.clock import ManualClock
from appliance.config import BrokerMode, SiteConfig
from appliance.console.pin import PinFile, generate_pin, pin_path
from appliance.errors import PayloadError, RequestError
from appliance.remote.config import SyncConfig
from appliance.runtime import Box
from appliance.sightings import BatchBuilder
from appliance.sim._economy import (
    BAR,
    MERCH,
    EconomyTally,
    Purchase,
    Terminal,
    plan_purchases,
    run_purchases,
)
from appliance.sim._portal import (
    PortalGuest,
    choose_portal_guest,
    demo_portal_site,
    free_loopback_port,
    local_time,
    write_portal_file,
)
from appliance.sim._site import KIT_STATION, demo_config, exit_reader_id
from appliance.sim._site_file import SITE_FILE_NAME, write_site_file
from appliance.sim._world import Guest, NightPlan
from appliance.studio.config import StudioConfig
from appliance.studio.service import Studio
from appliance.wallet._ledger import ledger_check
from provisioning import SiteCredentials
from provisioning.secret_file import write_secret_file
from provisioning.site_access import (
    CONSOLE,
    DESK,
    OBSERVER,
    ReaderGrant,
    reader_username,
    site_policy,
    terminal_username,
)

_LOGGER = logging.getLogger(__name__)
# Free ports tried for the portal before the demo gives up.
_PORTAL_BIND_ATTEMPTS = 5

# Thursday 28 May 2026, 20:26:40 UTC: a fixed evening, so seeds replay exactly.
NIGHT_START_S = 1_780_000_000.0
_DRAIN_TIMEOUT_S = 60.0
# The box deletes a contact only on the guest's request (``nightbox guest
# erase``), so the text promises no time limit.
_CONSENT_TEXT = (
    "Send me one follow-up offer after tonight. My email address or wallet id "
    "is kept for that offer until I ask the staff to delete it."
)
# Exit readers report twice a second, so a guest walking through a door
# without stopping still yields several samples within two metres.
BATCH_INTERVAL_S = 0.5
# One exit reader's scan stalls this long mid-night, to show the health fault.
_STALL_S = 20.0
# The demo's studio: the simulated camera at a size that a laptop encodes
# in real time next to the night, served on loopback only, on a free port.
DEMO_STUDIO = StudioConfig(
    camera="simulator",
    width=640,
    height=360,
    fps=15,
    bitrate_kbps=800,
    keyframe_interval_s=1.0,
    preset="ultrafast",
    audio="tone",
    clip_seconds=10.0,
    clips_keep=10,
    http_host="127.0.0.1",
    http_port=0,
)
DEMO_VIEWER = "demo-viewer"
# How far the box may lag behind the simulated readers, in batches per
# reader; well inside the silence timeout so lag never looks like silence.
_MAX_LAG_BATCHES = 4


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Options of ``nightbox demo``."""

    guests: int = 200
    exits: int = 2
    seed: int = 1
    speed: float = 120.0
    duration_s: float = 3600.0
    headless: bool = False
    broker_mode: BrokerMode = "auto"
    data_dir: Path | None = None
    stall: bool = True
    # Forward the night's events to a fleet broker, as a box with [sync] does.
    sync: SyncConfig | None = None
    # Awaited with the box still running once the night is over, e.g. to
    # bring an upstream broker back and wait for the backlog to drain.
    after_night: Callable[[Box], Awaitable[None]] | None = None
    # The terminal console's login file, written once the box is up, and
    # its admin PIN; a random PIN when only the file is given.
    console_file: Path | None = None
    console_pin: str | None = None
    # Run the camera studio with the simulated camera (DEMO_STUDIO).
    studio: bool = True
    # Serve the guest portal on a free loopback port, with the tee's sample
    # model preloaded into the asset cache from a signed folder.
    portal: bool = True
    # Once the portal is up, write its address and the guest a browser plays
    # to this file (mode 0600); removed when the demo ends. Needs the portal.
    portal_file: Path | None = None


@dataclass
class _Tally:
    sightings: int = 0
    batches: int = 0
    kits_issued: int = 0
    kits_refused: Counter[str] = field(default_factory=Counter)
    coupons_issued: int = 0
    optins: int = 0
    replayed_answers: int = 0
    checkouts: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    event_ids: set[str] = field(default_factory=set)
    faults_raised: int = 0
    economy: EconomyTally = field(default_factory=EconomyTally)
    stream: dict[str, Any] | None = None


def _settings(
    credentials: SiteCredentials,
    broker: BrokerHandle,
    username: str,
    kind: str,
    device: str,
    site: str,
) -> BusSettings:
    account = credentials.account(username)
    return BusSettings(
        broker.host, broker.port, account.username, account.password, kind, device, site
    )


async def run_demo(
    options: DemoOptions, progress: TextIO | None = sys.stderr
) -> dict[str, Any]:
    """Run a simulated night and return its scored results.

    Cancelling the task stops the broker and removes the temporary folder
    before the CancelledError propagates.
    """
    if options.guests < 1 or options.exits < 1 or not 0 < options.speed < math.inf:
        raise ValueError(
            "guests and exits must be at least 1 and speed a finite number above 0"
        )
    if options.portal_file is not None and not options.portal:
        raise ValueError("a portal file needs the portal; set portal=True")
    started = time.monotonic()
    plan = NightPlan(
        options.guests, options.exits, options.seed, NIGHT_START_S, options.duration_s
    )
    with contextlib.ExitStack() as stack:
        data_dir = options.data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="nightbox-demo-"))
        )
        _LOGGER.info("Demo data folder: %s", data_dir)
        config = demo_config(plan, data_dir, options.broker_mode)
        if options.sync is not None:
            config = replace(config, sync=options.sync)
        if options.studio:
            config = replace(config, studio=DEMO_STUDIO)
        portal_guest = None
        if options.portal_file is not None:
            portal_guest = choose_portal_guest(
                plan,
                config.commerce,
                plan_purchases(plan, config.commerce),
                _kit_stock(config),
            )
        if options.portal:
            config = demo_portal_site(config, plan, _CONSENT_TEXT)
        night = config.commerce.night_of(plan.start_s)
        _say(progress, f"Night: {night}")
        if options.data_dir is not None:
            site_file = write_site_file(config, night)
            _say(
                progress,
                f"Site file: {site_file} (for --config of nightbox report, portal "
                "and guest erase)",
            )
        credentials = SiteCredentials(data_dir / "secrets" / "broker.json")
        policy = site_policy(
            config.site_id,
            config.box_id,
            [ReaderGrant(reader.id, reader.role) for reader in config.readers],
            config.commerce.terminals,
        )
        broker = await start_broker(
            config.broker, data_dir / "run", credentials, policy
        )
        _say(progress, f"Broker: {broker.description}")
        try:
            tally = await _run_night(
                plan, config, credentials, broker, options, portal_guest, progress
            )
        finally:
            await broker.stop()
    return _score(plan, tally, broker.kind, options, time.monotonic() - started)


async def _run_night(
    plan: NightPlan,
    config: SiteConfig,
    credentials: SiteCredentials,
    broker: BrokerHandle,
    options: DemoOptions,
    portal_guest: PortalGuest | None,
    progress: TextIO | None,
) -> _Tally:
    clock = ManualClock(plan.start_s)
    tally = _Tally()
    site = config.site_id

    def client(username: str, kind: str, device: str, announce: bool = True) -> Bus:
        return Bus(
            _settings(credentials, broker, username, kind, device, site),
            announce=announce,
        )

    box = Box(
        config,
        clock,
        credentials,
        broker.host,
        broker.port,
        broker_kind=broker.kind,
        health_interval_s=0.02,
    )
    readers = [
        client(reader_username(exit_reader_id(i)), "reader", exit_reader_id(i))
        for i in range(plan.exits)
    ]
    kit_station = client(reader_username(KIT_STATION), "reader", KIT_STATION)
    desk = client(terminal_username(DESK), "terminal", DESK)
    bar = client(terminal_username(BAR), "terminal", BAR)
    merch = client(terminal_username(MERCH), "terminal", MERCH)
    observer = client(OBSERVER, "observer", "demo", announce=False)

    async def on_event(incoming: Incoming) -> None:
        _record_event(tally, incoming)

    observer.subscribe(observer.topics.all_events, on_event)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(box)
        terminals = (desk, bar, merch)
        for bus in (*readers, kit_station, *terminals, observer):
            await stack.enter_async_context(bus)
        # asyncio.timeout, not wait_for: when Ctrl-C or SIGTERM cancels the
        # night here, the gather's cancellation is then awaited, so asyncio
        # logs no "exception was never retrieved".
        async with asyncio.timeout(15):
            await asyncio.gather(
                *(
                    bus.connected.wait()
                    for bus in (box.bus, *readers, kit_station, *terminals, observer)
                )
            )
        # Terminals act only with an edge token, which the box issues.
        lifetime = min(24 * 3600.0, plan.duration_s + 3600.0)
        scopes = {
            DESK: ["optin:register"],
            BAR: ["wallet:topup", "pos:charge", "drops:claim"],
            MERCH: ["drops:claim"],
        }
        signed = {
            name: Terminal(bus, box.tokens.issue(name, scopes[name], lifetime).token)
            for name, bus in ((DESK, desk), (BAR, bar), (MERCH, merch))
        }
        if options.console_file is not None:
            stack.enter_context(
                _console_login(options, config, credentials, broker, progress)
            )
        if box.studio is not None:
            await _announce_stream(box, box.studio, lifetime, progress)
        if box.portal is not None:
            url = await _announce_portal(box, progress)
            if options.portal_file is not None and portal_guest is not None:
                stack.enter_context(
                    _portal_file(box, url, portal_guest, plan, options, progress)
                )
        await _tick_loop(
            plan, box, clock, readers, kit_station, signed, tally, options, progress
        )
        if box.studio is not None:
            tally.stream = await _finish_stream(box.studio)
        await _drain(box, tally)
        if options.after_night is not None:
            await options.after_night(box)
        tally.economy.ledger_ok = ledger_check(box.store).ok
    return tally


async def _tick_loop(
    plan: NightPlan,
    box: Box,
    clock: ManualClock,
    readers: list[Bus],
    kit_station: Bus,
    terminals: dict[str, Terminal],
    tally: _Tally,
    options: DemoOptions,
    progress: TextIO | None,
) -> None:
    builders = [
        BatchBuilder(exit_reader_id(i), boot=f"sim{i}") for i in range(plan.exits)
    ]
    actions = _scheduled_actions(plan)
    purchases = plan_purchases(plan, box.config.commerce)
    stall_from = (
        plan.start_s + plan.duration_s / 2 if options.stall and plan.exits > 1 else None
    )
    wall_start = time.monotonic()
    t = plan.start_s
    next_report = t + 300.0
    while t < plan.end_s:
        t += BATCH_INTERVAL_S
        clock.advance_to(t)
        publishes = []
        for index, bus in enumerate(readers):
            stalled = (
                stall_from is not None
                and index == 1
                and stall_from <= t < stall_from + _STALL_S
            )
            heard = [] if stalled else plan.hear(index, t, BATCH_INTERVAL_S)
            for address, rssi, data, moment in heard:
                builders[index].add(address, rssi, data, moment)
            if not stalled:
                builders[index].count_heard(plan.background_adverts(index, t))
            batch = builders[index].take(t)
            tally.sightings += len(batch["sightings"])
            tally.batches += 1
            publishes.append(
                bus.publish_json(
                    bus.topics.sightings(bus.settings.device_id), {"data": batch}
                )
            )
        await asyncio.gather(*publishes)
        while actions and actions[0][0] <= t:
            _when, kind, guest = actions.pop(0)
            if kind == "optin":
                await _opt_in(terminals[DESK], guest, tally)
            else:
                await _visit_kit_station(kit_station, guest, tally)
        due: list[Purchase] = []
        while purchases and purchases[0].at <= t:
            due.append(purchases.pop(0))
        if due:
            await run_purchases(due, terminals[BAR], terminals[MERCH], tally.economy)
        await _keep_pace(box, tally, wall_start, (t - plan.start_s) / options.speed)
        if progress is not None and not options.headless and t >= next_report:
            next_report += 300.0
            _say(progress, _progress_line(plan, box, tally, t))


@contextlib.contextmanager
def _console_login(
    options: DemoOptions,
    config: SiteConfig,
    credentials: SiteCredentials,
    broker: BrokerHandle,
    progress: TextIO | None,
) -> Iterator[None]:
    """Set the console PIN and write the console's login file until the night ends.

    The file has the shape of ``nightbox console login-file`` plus ``pin``
    and the demo's ``pid``, with mode 0600, written atomically.
    """
    path = options.console_file
    if path is None:
        yield
        return
    pin = options.console_pin or generate_pin()
    PinFile(pin_path(config.data_dir)).set(pin)
    login = {
        "broker": f"mqtt://{broker.host}:{broker.port}",
        "site": config.site_id,
        "box": config.box_id,
        "username": terminal_username(CONSOLE),
        "password": credentials.account(terminal_username(CONSOLE)).password,
        "pin": pin,
        "pid": os.getpid(),
    }
    write_secret_file(path, json.dumps(login, indent=2).encode() + b"\n")
    # The demo's PIN is a throwaway that the person running it needs.
    _say(progress, f"Console login file: {path} (admin PIN {pin})")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


async def _announce_stream(
    box: Box, studio: Studio, lifetime_s: float, progress: TextIO | None
) -> None:
    """Serve the stream on loopback and print its URL with a fresh viewer token."""
    http = await studio.serve_http()
    token = box.tokens.issue(DEMO_VIEWER, ["stream:view"], lifetime_s).token
    # The viewer token is a throwaway for the person running the demo.
    _say(
        progress,
        f"Stream: http://{studio.config.http_host}:{http.port}/stream/live.m3u8"
        f"?token={token}",
    )


async def _announce_portal(box: Box, progress: TextIO | None) -> str:
    """Serve the guest portal on loopback, print its address and return it.

    The port was chosen free before the box started, so another process may
    have taken it since. Then the portal moves to another free port, and
    the site file, when the demo wrote one, names the new port.
    """
    portal = box.portal
    assert portal is not None
    for attempt in range(_PORTAL_BIND_ATTEMPTS):
        try:
            http = await portal.serve_http()
            break
        except OSError as err:
            if err.errno != errno.EADDRINUSE or attempt + 1 == _PORTAL_BIND_ATTEMPTS:
                raise
            port = free_loopback_port()
            _LOGGER.info("Portal port was taken; moving the portal to %d", port)
            portal.config = replace(
                portal.config, port=port, public_url=f"http://127.0.0.1:{port}"
            )
            if (box.config.data_dir / SITE_FILE_NAME).exists():
                write_site_file(
                    replace(box.config, portal=portal.config),
                    box.config.commerce.night_of(box.clock.now()),
                )
    url = f"http://127.0.0.1:{http.port}"
    _say(progress, f"Portal: {url}/")
    return url


@contextlib.contextmanager
def _portal_file(
    box: Box,
    url: str,
    portal_guest: PortalGuest,
    plan: NightPlan,
    options: DemoOptions,
    progress: TextIO | None,
) -> Iterator[None]:
    """Write the portal file for a browser until the demo ends."""
    assert box.portal is not None and options.portal_file is not None
    path = options.portal_file
    timezone = box.config.commerce.timezone
    write_portal_file(
        path,
        url=url,
        portal_guest=portal_guest,
        band_code=box.portal.band_code(portal_guest.guest.band.band_id),
        plan=plan,
        speed=options.speed,
        pid=os.getpid(),
        timezone=timezone,
    )
    drop = portal_guest.drop
    _say(
        progress,
        f"Portal file: {path} (drop {drop.id} is open from "
        f"{local_time(drop.starts_at, timezone)} until "
        f"{local_time(drop.ends_at, timezone)} on the simulated clock)",
    )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


class NightHold:
    """Keeps the box and its portal running after the night (``--hold``).

    Pass it as ``DemoOptions.after_night``. While it holds, Ctrl-C releases
    it, and the caller's SIGTERM handler calls ``release`` when ``holding``
    is true. The night's results follow once it is released.
    """

    def __init__(self, progress: TextIO | None) -> None:
        self.holding = False
        self._released = asyncio.Event()
        self._progress = progress

    async def __call__(self, box: Box) -> None:
        """Wait until ``release`` is called, with the box still running."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.release)
        self.holding = True
        _say(
            self._progress,
            "The night is over; the box and its portal keep running until Ctrl-C "
            "or SIGTERM. The simulated clock stays at the night's end, so a drop "
            "that ends later, such as tee-late, stays open.",
        )
        await self._released.wait()

    def release(self) -> None:
        """End the hold, so the demo stops the box and returns its results."""
        self._released.set()


async def _finish_stream(studio: Studio) -> dict[str, Any]:
    """Write the clip of the set that ended with the night; return stream figures."""
    studio.check_set_end()
    await studio.wait_for_clips()
    state = studio.state()
    latest = studio.clips.latest()
    return {
        "clips": state["clips"],
        "set_end_clip": latest is not None and latest.trigger == "set-end",
        "segments_written": state["segments_written"],
        "source": state["source"],
    }


def stream_summary(stream: dict[str, Any] | None) -> str:
    """Return the studio's line of the demo's plain-text summary.

    ``stream`` is the ``stream`` entry of the demo's results, None when the
    night ran without a studio.
    """
    if stream is None:
        return "Studio: not run."
    set_end = "written" if stream["set_end_clip"] else "not written"
    return (
        f"Studio: HLS segments written {stream['segments_written']}, "
        f"clips {stream['clips']}; set-end clip {set_end}."
    )


def _kit_stock(config: SiteConfig) -> int:
    return sum(
        reader.kit_stock for reader in config.readers if reader.id == KIT_STATION
    )


def _scheduled_actions(plan: NightPlan) -> list[tuple[float, str, Guest]]:
    actions: list[tuple[float, str, Guest]] = []
    for guest in plan.guests:
        if guest.opt_in is not None:
            actions.append((guest.arrive_s + 60.0, "optin", guest))
        if guest.kit_visit_s is not None:
            actions.append((guest.kit_visit_s, "kit", guest))
    actions.sort(key=lambda item: (item[0], item[2].band.index))
    return actions


async def _keep_pace(
    box: Box, tally: _Tally, wall_start: float, target_s: float
) -> None:
    # Let the box fall at most a few batches per reader behind the night,
    # then let the wall clock catch up with the requested speed.
    allowed_lag = _MAX_LAG_BATCHES * len(box.config.readers)
    # Polling the box's counters keeps the services free of demo hooks.
    processed = box.checkouts.stats
    while processed.batches + processed.duplicate_batches < tally.batches - allowed_lag:  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    delay = wall_start + target_s - time.monotonic()
    await asyncio.sleep(max(0.0, delay))


async def _opt_in(desk: Terminal, guest: Guest, tally: _Tally) -> None:
    contact = guest.opt_in or ""
    data: dict[str, Any] = {
        "band": guest.band.band_id,
        "consent": True,
        "consent_text": _CONSENT_TEXT,
        "idempotency_key": str(uuid.UUID(int=guest.band.index + 1)),
    }
    if "@" in contact:
        data["email"] = contact
    else:
        data["wallet_id"] = contact
    try:
        await desk.request("optin", "register", data)
        tally.optins += 1
    except RequestError as err:
        _LOGGER.warning("Opt-in of band %s failed: %s", guest.band.band_id, err)


async def _visit_kit_station(station: Bus, guest: Guest, tally: _Tally) -> None:
    topic = station.topics.api("kits", "issue")
    key = str(uuid.UUID(int=(1 << 64) + guest.band.index))
    # The kit reader sends the advert it heard; the box resolves the band.
    data = {
        "adv": guest.band.identity_advert(guest.kit_visit_s or 0.0).hex(),
        "station": KIT_STATION,
        "idempotency_key": key,
    }
    attempts = (
        2 if guest.retries_same_key else 1
    )  # a lost reply, retried with the same key
    for attempt in range(attempts):
        try:
            reply = await station.request(topic, data, timeout_s=5)
            if attempt == 0:
                tally.kits_issued += 1
                tally.coupons_issued += reply.get("coupon") is not None
            else:
                tally.replayed_answers += 1
        except RequestError as err:
            if attempt == 0:
                tally.kits_refused[err.code] += 1
    if guest.asks_twice:
        data = dict(
            data, idempotency_key=str(uuid.UUID(int=(2 << 64) + guest.band.index))
        )
        try:
            await station.request(topic, data, timeout_s=5)
            tally.kits_issued += 1
        except RequestError as err:
            tally.kits_refused[err.code] += 1


def _record_event(tally: _Tally, incoming: Incoming) -> None:
    try:
        message = envelope.decode(incoming.payload)
    except PayloadError:
        return
    if message.id in tally.event_ids:
        return  # a QoS 1 duplicate
    tally.event_ids.add(message.id)
    event_type = message.body.get("type")
    if event_type == "checkout":
        band = str(message.data.get("band"))
        seen_at = message.data.get("seen_at")
        seen = float(seen_at) if isinstance(seen_at, int | float) else 0.0
        tally.checkouts.setdefault(band, []).append(
            (str(message.data.get("reader")), seen)
        )
    elif event_type == "fault_raised":
        tally.faults_raised += 1


async def _drain(box: Box, tally: _Tally) -> None:
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        processed = box.checkouts.stats.batches + box.checkouts.stats.duplicate_batches
        received = sum(len(readers) for readers in tally.checkouts.values())
        if (
            processed >= tally.batches
            and box.outbox.backlog == 0
            and received >= box.checkouts.stats.checkouts
        ):
            return
        await asyncio.sleep(0.02)
    _LOGGER.warning("The box did not finish processing within %s s", _DRAIN_TIMEOUT_S)


def _score(
    plan: NightPlan, tally: _Tally, broker: str, options: DemoOptions, elapsed_s: float
) -> dict[str, Any]:
    # A check-out is right when it names the guest's exit within seconds of
    # the moment they walked through it; any other check-out is false.
    missed = duplicate = false = 0
    for guest in plan.guests:
        checkouts = tally.checkouts.get(guest.band.band_id, [])
        right = [
            (reader, seen_at)
            for reader, seen_at in checkouts
            if guest.leave_s is not None
            and reader == exit_reader_id(guest.exit_index)
            and guest.leave_s - 15.0 <= seen_at <= guest.leave_s + guest.pause_s + 10.0
        ]
        false += len(checkouts) - len(right)
        duplicate += max(0, len(right) - 1)
        missed += guest.leave_s is not None and not right
    unknown = set(tally.checkouts) - {guest.band.band_id for guest in plan.guests}
    false += sum(len(tally.checkouts[band]) for band in unknown)
    return {
        "guests": len(plan.guests),
        "left": sum(1 for guest in plan.guests if guest.leave_s is not None),
        "checkouts": sum(len(checkouts) for checkouts in tally.checkouts.values()),
        "duplicate_checkouts": duplicate,
        "missed_checkouts": missed,
        "false_checkouts": false,
        "kits_issued": tally.kits_issued,
        "kits_refused": sum(tally.kits_refused.values()),
        "kits_refused_by_reason": dict(sorted(tally.kits_refused.items())),
        "coupons_issued": tally.coupons_issued,
        "optins": tally.optins,
        "replayed_answers": tally.replayed_answers,
        "sightings": tally.sightings,
        "batches": tally.batches,
        "faults_raised": tally.faults_raised,
        "topups": tally.economy.topups,
        "topped_up": tally.economy.topped_up,
        "charges": tally.economy.charges,
        "charged": tally.economy.charged,
        "drop_sold": tally.economy.drop_sold,
        "ledger_ok": tally.economy.ledger_ok,
        "economy_refused_by_reason": dict(sorted(tally.economy.refused.items())),
        "broker": broker,
        "stream": tally.stream,
        "seed": options.seed,
        "exits": options.exits,
        "speed": options.speed,
        "elapsed_s": round(elapsed_s, 2),
    }


def _progress_line(plan: NightPlan, box: Box, tally: _Tally, t: float) -> str:
    minutes = int((t - plan.start_s) // 60)
    inside = sum(
        1
        for g in plan.guests
        if g.arrive_s <= t and (g.leave_s is None or g.leave_s > t)
    )
    stock = sum(station["remaining"] for station in box.kits.stock().values())
    return (
        f"[{minutes:3d} min] inside {inside:4d}  "
        f"check-outs {box.checkouts.stats.checkouts:4d}  "
        f"kits {tally.kits_issued:4d} (stock {stock})  "
        f"coupons {tally.coupons_issued:4d}  "
        f"faults raised {tally.faults_raised} (open {len(box.checkouts.faults)})"
    )


def _say(stream: TextIO | None, line: str) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)
