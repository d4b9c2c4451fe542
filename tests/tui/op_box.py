"""A running box with a small known site, for the operations screens' tests.

The site has two readers (exit ``exit-1``, kit station ``kit-1`` with 5
kits), a catalogue in EUR (beer at 4.50, open-price merch, a tee), the
creator Maya (code ``MAYA``) with a set playing, a live drop ``tee-drop``
of 20 tees, the terminals ``bar-1`` and ``merch-1``, and an admin PIN
generated for the run. The box runs on a real mosquitto for the whole test
module; tests import ``op_box_fixture`` (``# noqa: F401``) and get an :class:`OpBox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import make_site_config
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from appliance.bus.broker import BrokerHandle, find_mosquitto, start_broker
from appliance.bus.client import Bus, BusSettings
from appliance.clock import SystemClock, TimeSource
from appliance.commerce.config import (
    CommerceConfig,
    Creator,
    DropConfig,
    Item,
    SetSlot,
    WalletConfig,
)
from appliance.config import BrokerConfig, ReaderConfig, SiteConfig
from appliance.console.pin import PinFile, generate_pin, pin_path
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy
from tui.app import NightboxApp
from tui.link import LinkSettings
from tui.screens.pin import PinScreen

TERMINALS = ("bar-1", "merch-1")
SIZE = (80, 24)


def op_site_config(data_dir: Path, now: float) -> SiteConfig:
    """Return the operations test site around Unix time ``now``."""
    commerce = CommerceConfig(
        wallet=WalletConfig(
            currency="EUR",
            max_topup=50_000,
            max_charge=20_000,
            night_topup_limit=60_000,
            night_spend_limit=30_000,
        ),
        items=(
            Item("beer", "Beer", price=450),
            Item("merch", "Merch"),
            Item("tee", "Drop tee", price=3500),
        ),
        creators=(Creator("maya", "Maya", "MAYA"),),
        sets=(SetSlot("set-maya", "maya", now - 3600, now + 3600),),
        drops=(
            DropConfig(
                "tee-drop",
                "tee",
                price=3500,
                quantity=20,
                starts_at=now - 60,
                ends_at=now + 3600,
                per_guest_limit=2,
                creator="maya",
            ),
        ),
        terminals=TERMINALS,
    )
    return make_site_config(
        data_dir,
        readers=(
            ReaderConfig("exit-1", "exit", zone="main-door"),
            ReaderConfig("kit-1", "kit", kit_stock=5, zone="cloakroom"),
        ),
        commerce=commerce,
    )


@dataclass
class OpBox:
    """The running box, its broker, its credentials and the run's admin PIN."""

    config: SiteConfig
    credentials: SiteCredentials
    broker: BrokerHandle
    box: Box
    pin: str

    def wrong_pin(self) -> str:
        """Return a valid PIN that is not this box's."""
        while True:
            candidate = generate_pin()
            if candidate != self.pin:
                return candidate

    def link_settings(self) -> LinkSettings:
        """Return the console's login on this box's broker."""
        account = self.credentials.account("terminal-console")
        return LinkSettings(
            host=self.broker.host,
            port=self.broker.port,
            site=self.config.site_id,
            box=self.config.box_id,
            username=account.username,
            password=account.password,
        )

    def app(self) -> NightboxApp:
        """Return a console app for this box, not yet running."""
        return NightboxApp(self.link_settings())

    def token(self, subject: str, *scopes: str) -> str:
        """Return an edge token for terminal ``subject`` lasting an hour."""
        return self.box.tokens.issue(subject, scopes, 3600.0).token

    @contextlib.asynccontextmanager
    async def client(
        self, username: str, kind: str, device_id: str
    ) -> AsyncIterator[Bus]:
        """Connect a bus client with the generated password of ``username``."""
        account = self.credentials.account(username)
        settings = BusSettings(
            self.broker.host,
            self.broker.port,
            username,
            account.password,
            kind,
            device_id,
            self.config.site_id,
        )
        async with Bus(settings) as bus:
            await asyncio.wait_for(bus.connected.wait(), timeout=10)
            yield bus


async def terminal_call(
    bus: Bus, token: str, service: str, action: str, **data: Any
) -> dict[str, Any]:
    """Send a terminal's request with a fresh idempotency key; return its data."""
    data.setdefault("idempotency_key", uuid.uuid4().hex)
    return await bus.request(
        bus.topics.api(service, action), data, timeout_s=5.0, token=token
    )


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float = 10.0,
) -> None:
    """Wait until ``condition()`` is true; fail naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(name="op_box", scope="module", loop_scope="module")
async def op_box_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[OpBox]:
    """The operations test site's box on its own mosquitto, for one test module."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    config = op_site_config(tmp_path_factory.mktemp("op") / "box", time.time())
    credentials = SiteCredentials(config.data_dir / "secrets" / "broker.json")
    pin = generate_pin()
    PinFile(pin_path(config.data_dir)).set(pin)
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
        config.commerce.terminals,
    )
    broker = await start_broker(
        BrokerConfig(mode="mosquitto"), config.data_dir / "run", credentials, policy
    )
    try:
        async with Box(
            config,
            SystemClock(TimeSource.NTP),
            credentials,
            broker.host,
            broker.port,
            broker_kind=broker.kind,
            health_interval_s=0.05,
        ) as box:
            await asyncio.wait_for(box.bus.connected.wait(), timeout=10)
            yield OpBox(config, credentials, broker, box, pin)
    finally:
        await broker.stop()


def text_of(widget: Static) -> str:
    """Return the plain text that a Static shows."""
    content = widget.content
    return content.plain if isinstance(content, Text) else str(content)


def message_of(app: NightboxApp) -> str:
    """Return the current screen's message line."""
    return text_of(app.screen.query_one("#message", Static))


def table_rows(table: DataTable[Any]) -> dict[str, list[str]]:
    """Return the rows of ``table`` by row key, each cell as plain text."""
    rows = {}
    for row_key in table.rows:
        cells = table.get_row(row_key)
        rows[str(row_key.value)] = [
            cell.plain if isinstance(cell, Text) else str(cell) for cell in cells
        ]
    return rows


async def start_console(app: NightboxApp, pilot: Pilot[None], key: str) -> None:
    """Wait until the console has the box's overview and status, then press ``key``."""
    await wait_until(
        lambda: (
            app.link.state.overview is not None
            and app.link.state.box_status is not None
        ),
        "the console's first overview and box status",
    )
    await pilot.press(key)
    await pilot.pause()


async def enter_pin(app: NightboxApp, pilot: Pilot[None], pin: str) -> None:
    """Wait for the PIN modal and type ``pin`` into it."""
    await wait_until(lambda: isinstance(app.screen, PinScreen), "the PIN modal")
    await pilot.press(*pin, "enter")


async def unlock(app: NightboxApp, pilot: Pilot[None], pin: str) -> None:
    """Type the right ``pin`` and wait until the console holds the admin token."""
    await enter_pin(app, pilot, pin)
    await wait_until(lambda: app.session.unlocked, "the admin token")
    await wait_until(
        lambda: not isinstance(app.screen, PinScreen), "the modal to close"
    )
