"""Nights for the console's tests: a live demo night and a scripted, frozen one.

``demo_night`` (session scope) runs ``nightbox demo`` in a child process on
a real mosquitto, as ``nightbox tui --demo`` does, and yields the running
:class:`tui.demo.DemoNight`; its ``login`` is the console login file's
contents, with the demo's PIN. ``scripted_box`` runs a real Box on the
``mosquitto`` fixture with a :class:`ManualClock` and plays a short night of
top-ups, charges, check-outs over the last hour and kit issues, after which
the clock stops, so every figure and time on screen is the same in
every run. The box runs on an event loop of its own in a thread, so
synchronous snapshot tests (whose ``snap_compare`` runs the app's own event
loop) can use it. Test modules register the fixtures by importing
``demo_night_fixture``, ``scripted_box_fixture`` and ``scripted_site`` (the
scripted night's ``site_config``) with ``# noqa: F401``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SITE_UUID, make_site_config

from appliance.bus.broker import find_mosquitto
from appliance.bus.client import Bus, BusSettings
from appliance.clock import ManualClock
from appliance.commerce.config import CommerceConfig, Item, WalletConfig
from appliance.config import CheckoutConfig, ReaderConfig, SiteConfig
from appliance.console.pin import PinFile, generate_pin, pin_path
from appliance.runtime import Box
from appliance.sim._adverts import ibeacon
from provisioning import SiteCredentials
from tui.app import NightboxApp
from tui.demo import DemoNight, start_demo
from tui.link import LinkSettings

SIZE = (80, 24)
DEMO_SPEED = 10.0
DEMO_GUESTS = 400
# The scripted night's clock stops here: 2026-05-28 20:26:40 UTC.
NIGHT_END_S = 1_780_000_000.0
# Minutes before the end at which each band of the scripted night leaves.
# Two leave in the same minute, so one bar of the chart is twice as high.
CHECKOUT_MINUTES = {1: 48, 2: 40, 3: 25, 4: 25, 5: 12, 6: 3}
KIT_BANDS = (1, 2, 3)
_BOOT = "5c41b00t"
# (band, item, quantity, price) charged at the bar before anyone leaves.
CHARGES = (
    (1, "beer", 2, 450),
    (2, "beer", 1, 450),
    (3, "water", 1, 250),
    (4, "beer", 3, 450),
)


def scripted_site_config(data_dir: Path) -> SiteConfig:
    """Return the scripted night's site: one exit, a kit station, a bar."""
    commerce = CommerceConfig(
        wallet=WalletConfig(currency="EUR", max_topup=50_000, max_charge=20_000),
        items=(Item("beer", "Beer", price=450), Item("water", "Water", price=250)),
        terminals=("bar-1",),
    )
    return make_site_config(
        data_dir,
        site_name="Harbour Club",
        readers=(
            ReaderConfig("exit-1", "exit", zone="main door"),
            ReaderConfig("kit-1", "kit", kit_stock=10, zone="cloakroom"),
        ),
        commerce=commerce,
        # The clock jumps minutes between check-outs. Health faults raised at
        # a jump would add events (and so sync backlog) that depend on when
        # the health check happened to run.
        checkout=CheckoutConfig(silence_s=2 * 3600.0, stall_s=2 * 3600.0),
    )


@pytest.fixture(name="site_config")
def scripted_site(tmp_path: Path) -> SiteConfig:
    """The scripted night's site, replacing the shared test site."""
    return scripted_site_config(tmp_path / "box")


@pytest.fixture(scope="session", name="demo_night")
def demo_night_fixture() -> Iterator[DemoNight]:
    """A demo night in a child process on mosquitto, for the whole test session."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    night = start_demo(guests=DEMO_GUESTS, speed=DEMO_SPEED, broker="mosquitto")
    try:
        yield night
    finally:
        night.stop()


def console_settings(
    config: SiteConfig, credentials: SiteCredentials, host: str, port: int
) -> LinkSettings:
    """Return the console's login on a test box's broker."""
    account = credentials.account("terminal-console")
    return LinkSettings(
        host=host,
        port=port,
        site=config.site_id,
        box=config.box_id,
        username=account.username,
        password=account.password,
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = 15.0
) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def screen_text(app: NightboxApp) -> str:
    """Return the characters on the app's screen, one line per row."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text for strip in strips)


@dataclasses.dataclass
class ScriptedBox:
    """The frozen box of the scripted night: its site, credentials and PIN."""

    config: SiteConfig
    credentials: SiteCredentials
    host: str
    port: int
    pin: str

    def settings(self) -> LinkSettings:
        """Return the console's login on this box's broker."""
        return console_settings(self.config, self.credentials, self.host, self.port)

    def app(self) -> NightboxApp:
        """Return a console app for this box, not yet running."""
        return NightboxApp(self.settings())

    def wrong_pin(self) -> str:
        """Return a valid PIN that is not this box's."""
        while True:
            candidate = generate_pin()
            if candidate != self.pin:
                return candidate


class _BoxThread:
    """Runs the box and the scripted night on an event loop in a thread."""

    def __init__(self, scripted: ScriptedBox) -> None:
        self._scripted = scripted
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="scripted-box")

    def __enter__(self) -> _BoxThread:
        self._thread.start()
        if not self._ready.wait(timeout=60):
            pytest.fail("the scripted night did not finish within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # handed to the test's thread
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        scripted = self._scripted
        clock = ManualClock(NIGHT_END_S - 50 * 60)
        async with Box(
            scripted.config,
            clock,
            scripted.credentials,
            scripted.host,
            scripted.port,
            health_interval_s=0.05,
        ) as box:
            await asyncio.wait_for(box.bus.connected.wait(), timeout=10)
            async with _clients(scripted) as clients:
                await _play_night(box, clock, clients)
                self._ready.set()
                await self._stop.wait()


@dataclasses.dataclass
class _Clients:
    exit_reader: Bus
    kit_reader: Bus
    desk: Bus
    bar: Bus


@contextlib.asynccontextmanager
async def _clients(scripted: ScriptedBox) -> AsyncIterator[_Clients]:
    def bus(username: str, kind: str, device: str) -> Bus:
        account = scripted.credentials.account(username)
        return Bus(
            BusSettings(
                scripted.host,
                scripted.port,
                username,
                account.password,
                kind,
                device,
                scripted.config.site_id,
            )
        )

    async with (
        bus("reader-exit-1", "reader", "exit-1") as exit_reader,
        bus("reader-kit-1", "reader", "kit-1") as kit_reader,
        bus("terminal-desk", "terminal", "desk") as desk,
        bus("terminal-bar-1", "terminal", "bar-1") as bar,
    ):
        for client in (exit_reader, kit_reader, desk, bar):
            await asyncio.wait_for(client.connected.wait(), timeout=10)
        yield _Clients(exit_reader, kit_reader, desk, bar)


async def _play_night(box: Box, clock: ManualClock, clients: _Clients) -> None:
    """Top up and charge four guests, check six out over the hour, issue kits."""
    await _charge_guests(box, clients)
    last_seq = await _check_out_guests(box, clock, clients)

    # The reader's last batch, at the moment the clock stops, keeps it healthy.
    clock.advance_to(NIGHT_END_S)
    await _publish_batch(clients.exit_reader, last_seq + 1, _BOOT, NIGHT_END_S, 99, -90)
    await _settle(lambda: not box.checkouts.faults, "reader health")
    await box.publish_status()
    await box.management.publish_telemetry()


async def _charge_guests(box: Box, clients: _Clients) -> None:
    desk_token = box.tokens.issue("desk", ("wallet:topup",), 3 * 3600.0).token
    bar_token = box.tokens.issue("bar-1", ("pos:charge",), 3 * 3600.0).token
    for band, item, quantity, price in CHARGES:
        await _call(
            clients.desk,
            "wallet",
            "topup",
            desk_token,
            band=_band(band),
            amount=5000,
            currency="EUR",
            method="cash",
        )
        await _call(
            clients.bar,
            "wallet",
            "charge",
            bar_token,
            band=_band(band),
            item=item,
            quantity=quantity,
            amount=price * quantity,
            currency="EUR",
        )


async def _check_out_guests(box: Box, clock: ManualClock, clients: _Clients) -> int:
    """Check the guests out at their minutes, with kits; return the last batch seq."""
    seq = 0
    for index, (band, minutes) in enumerate(sorted(CHECKOUT_MINUTES.items())):
        start = NIGHT_END_S - minutes * 60 + index
        clock.advance_to(start + 3)
        for step in range(5):
            seq += 1
            t = start + 0.5 * step
            await _publish_batch(clients.exit_reader, seq, _BOOT, t, band, -50)
        expected = index + 1
        await _settle(
            lambda: box.checkouts.stats.checkouts == expected,  # noqa: B023
            "check-out",
        )
        if band in KIT_BANDS:
            await _call(
                clients.kit_reader,
                "kits",
                "issue",
                None,
                station="kit-1",
                band=_band(band),
            )
    return seq


def _band(number: int) -> str:
    return f"ib-1-{number}"


async def _publish_batch(
    reader: Bus, seq: int, boot: str, t: float, band: int, rssi: int
) -> None:
    advert = ibeacon(SITE_UUID, 1, band, -59).hex()
    sighting = {"t": t, "addr": f"c4:7c:8d:6a:11:{band:02x}", "rssi": rssi}
    sighting |= {"n": 3, "adv": advert}
    batch = {"reader": "exit-1", "boot": boot, "seq": seq, "t": t, "heard": 3}
    batch["sightings"] = [sighting]
    topic = reader.topics.sightings("exit-1")
    await reader.publish_json(topic, {"data": batch})


async def _call(
    bus: Bus, service: str, action: str, token: str | None, **data: Any
) -> dict[str, Any]:
    data["idempotency_key"] = uuid.uuid4().hex
    return await bus.request(
        bus.topics.api(service, action), data, timeout_s=10.0, token=token
    )


async def _settle(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the scripted night's {what} did not happen")
        await asyncio.sleep(0.02)


@pytest.fixture(name="scripted_box")
def scripted_box_fixture(
    site_config: SiteConfig, credentials: SiteCredentials, mosquitto: Any
) -> Iterator[ScriptedBox]:
    """The scripted night's box, running and frozen at its end, on ``mosquitto``."""
    pin = generate_pin()
    PinFile(pin_path(site_config.data_dir)).set(pin)
    scripted = ScriptedBox(
        site_config, credentials, mosquitto.host, mosquitto.port, pin
    )
    with _BoxThread(scripted):
        yield scripted
