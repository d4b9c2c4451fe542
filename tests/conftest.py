"""Shared fixtures: a site, a real mosquitto on loopback, a running box, clients.

mosquitto is started by the tests themselves on a free loopback port, with
the site's generated passwords and ACLs, exactly as ``nightbox run`` starts
it. ``make test`` installs mosquitto when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.bus.broker import BrokerHandle, find_mosquitto, start_broker
from appliance.bus.client import Bus, BusSettings
from appliance.clock import SystemClock, TimeSource
from appliance.config import BrokerConfig, ReaderConfig, SiteConfig
from appliance.runtime import Box
from appliance.sim._adverts import ibeacon
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy

SITE_UUID = bytes.fromhex("426c7565436861726d426561636f6e73")

ClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[Bus]]


def make_site_config(data_dir: Path, **changes: Any) -> SiteConfig:
    """Return a small test site: two exits and a kit station with 5 kits."""
    config = SiteConfig(
        site_id="test",
        site_name="Test venue",
        box_id="box-1",
        data_dir=data_dir,
        ibeacon_uuid=SITE_UUID,
        readers=(
            ReaderConfig("exit-1", "exit"),
            ReaderConfig("exit-2", "exit"),
            ReaderConfig("kit-1", "kit", kit_stock=5),
        ),
    )
    return config if not changes else _replace(config, changes)


def _replace(config: SiteConfig, changes: dict[str, Any]) -> SiteConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


@pytest.fixture
def site_config(tmp_path: Path) -> SiteConfig:
    """The test site, storing its files under a fresh temporary folder."""
    return make_site_config(tmp_path / "box")


@pytest.fixture
def credentials(site_config: SiteConfig) -> SiteCredentials:
    """The site's broker credentials, in the box's data folder."""
    return SiteCredentials(site_config.data_dir / "secrets" / "broker.json")


async def start_site_broker(
    config: SiteConfig, credentials: SiteCredentials
) -> BrokerHandle:
    """Start a private mosquitto with the site's passwords and ACLs."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
        config.commerce.terminals,
    )
    return await start_broker(
        BrokerConfig(mode="mosquitto"), config.data_dir / "run", credentials, policy
    )


@pytest.fixture
async def mosquitto(
    site_config: SiteConfig, credentials: SiteCredentials
) -> AsyncIterator[BrokerHandle]:
    """A private mosquitto with the site's passwords and ACLs."""
    broker = await start_site_broker(site_config, credentials)
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def box(
    site_config: SiteConfig, credentials: SiteCredentials, mosquitto: BrokerHandle
) -> AsyncIterator[Box]:
    """The box's services, connected to the test broker."""
    # The test machine's clock is taken as synchronised, so request deadlines
    # are judged as on a box whose clock NTP has vouched for.
    async with Box(
        site_config,
        SystemClock(TimeSource.NTP),
        credentials,
        mosquitto.host,
        mosquitto.port,
        broker_kind=mosquitto.kind,
        health_interval_s=0.05,
    ) as running:
        await asyncio.wait_for(running.bus.connected.wait(), timeout=10)
        yield running


@contextlib.asynccontextmanager
async def running_site_box(
    config: SiteConfig, *, timeout_s: float = 10.0, **box_options: Any
) -> AsyncIterator[tuple[BrokerHandle, Box]]:
    """Start a private mosquitto for ``config`` and a box on it; stop both on exit.

    ``box_options`` go to :class:`Box`. The box's clock is the system clock,
    taken as synchronised, as in the ``box`` fixture.
    """
    credentials = SiteCredentials(config.data_dir / "secrets" / "broker.json")
    broker = await start_site_broker(config, credentials)
    try:
        async with Box(
            config,
            SystemClock(TimeSource.NTP),
            credentials,
            broker.host,
            broker.port,
            broker_kind=broker.kind,
            **box_options,
        ) as box:
            await asyncio.wait_for(box.bus.connected.wait(), timeout=timeout_s)
            yield broker, box
    finally:
        await broker.stop()


TokenFactory = Callable[..., str]


@pytest.fixture
def issue_token(box: Box) -> TokenFactory:
    """Return a factory of edge tokens: ``issue_token("desk", "optin:register")``.

    Tokens last an hour unless ``ttl_s=`` sets another lifetime.
    """

    def issue(subject: str, *scopes: str, ttl_s: float = 3600.0) -> str:
        return box.tokens.issue(subject, scopes, ttl_s).token

    return issue


@pytest.fixture
def make_client(
    site_config: SiteConfig, credentials: SiteCredentials, mosquitto: BrokerHandle
) -> ClientFactory:
    """Return a factory of connected bus clients: ``async with make_client(...)``.

    ``make_client("reader-exit-1", "reader", "exit-1")`` logs in with that
    account's generated password; ``password=`` overrides it.
    """

    @contextlib.asynccontextmanager
    async def factory(
        username: str,
        kind: str,
        device_id: str,
        *,
        announce: bool = True,
        password: str | None = None,
        wait: bool = True,
    ) -> AsyncIterator[Bus]:
        account = credentials.account(username)
        settings = BusSettings(
            mosquitto.host,
            mosquitto.port,
            username,
            password if password is not None else account.password,
            kind,
            device_id,
            site_config.site_id,
        )
        async with Bus(settings, announce=announce) as bus:
            if wait:
                await asyncio.wait_for(bus.connected.wait(), timeout=10)
            yield bus

    return factory


def strong_batches(
    site_config: SiteConfig,
    reader_id: str,
    minor: int,
    boot: str,
    first_seq: int = 1,
) -> list[dict[str, Any]]:
    """Return batches that make band ib-1-<minor> cross an exit.

    Five batches 0.5 s apart, each with one sighting of 3 adverts at -50 dBm,
    well above the -66 dBm threshold for longer than the 0.5 s dwell.
    """
    advert = ibeacon(site_config.ibeacon_uuid or SITE_UUID, 1, minor, -59).hex()
    start = time.time()
    batches = []
    for index in range(5):
        t = round(start + 0.5 * index, 3)
        sighting = {
            "t": t,
            "addr": f"c4:7c:8d:6a:11:{minor:02x}",
            "rssi": -50,
            "n": 3,
            "adv": advert,
        }
        batches.append(
            {
                "reader": reader_id,
                "boot": boot,
                "seq": first_seq + index,
                "t": t,
                "heard": 3,
                "sightings": [sighting],
            }
        )
    return batches
