"""``console/system``, ``console/jobs`` and the refusals of ``reader-provision``."""

from __future__ import annotations

import datetime
import logging
import socket
import zoneinfo

import pytest

from appliance.clock import ManualClock
from appliance.config import SiteConfig
from appliance.console._logs import LogRing
from appliance.runtime import Box
from tests.conftest import ClientFactory
from tests.console.console_site import call, console_client, refused, set_pin, unlock

PROVISION = {"port": "/dev/ttyUSB7", "role": "exit", "zone": "back-door"}


async def test_system_reply_needs_no_token(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    async with console_client(make_client) as console:
        system = await call(console, "system")

    assert system["clock"] == {"trusted": True, "source": "ntp"}
    assert system["broker"] == "mosquitto"
    assert system["uptime_s"] >= 0
    assert system["updates"]["available"] is False
    assert system["updates"]["note"]
    names = [interface["name"] for interface in system["network"]]
    assert names == [name for _index, name in socket.if_nameindex()]
    loopback = next(i for i in system["network"] if i["name"] == "lo")
    assert loopback["kind"] == "loopback"
    assert "logs" not in system


async def test_logs_reply(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    logging.getLogger("appliance.test").info("a line for the console %d", 42)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        logs = await call(console, "logs", token=admin)

    lines = logs["lines"]
    assert isinstance(logs["now"], float)
    assert any(
        "INFO appliance.test a line for the console 42" in line for line in lines
    )
    assert any("Console unlocked" in line for line in lines)
    assert len(lines) <= 200
    assert not any(admin in line for line in lines)


async def test_log_ring_keeps_last_200(box: Box) -> None:
    for index in range(250):
        logging.getLogger("appliance.test").warning("line %d", index)

    lines = box.console.logs.lines()
    assert len(lines) == 200
    assert lines[-1].endswith("WARNING appliance.test line 249")
    assert lines[0].endswith("WARNING appliance.test line 50")


def test_log_ring_stamps_box_time() -> None:
    # A box clock far from this computer's, in the site's time zone
    # (UTC+2 in May).
    start = datetime.datetime(2026, 5, 28, 21, 5, 9, tzinfo=datetime.UTC)
    clock = ManualClock(start.timestamp())
    ring = LogRing(clock.now, zoneinfo.ZoneInfo("Europe/Berlin"))
    logger = logging.getLogger("appliance.test.ring")
    logger.addHandler(ring)
    try:
        logger.warning("first")
        clock.advance_to(start.timestamp() + 61)
        logger.warning("second")
    finally:
        logger.removeHandler(ring)

    assert ring.lines() == [
        "23:05:09 WARNING appliance.test.ring first",
        "23:06:10 WARNING appliance.test.ring second",
    ]


async def test_reader_provision_without_site_file(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(
            console, "reader-provision", PROVISION, token=admin, mutating=True
        )
        jobs = await call(console, "jobs")

    assert error.code == "no-site-file"
    assert "nightbox run --config" in error.message
    assert jobs == {"jobs": []}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"port": ""}, "'port'"),
        ({"role": "bar"}, "'role'"),
        ({"zone": "Back Door"}, "'zone'"),
        ({"id": "Exit 3"}, "'id'"),
        ({"uplink": "lora"}, "'uplink'"),
        ({"kit_stock": -1}, "'kit_stock'"),
    ],
)
async def test_reader_provision_invalid(
    box: Box,
    site_config: SiteConfig,
    make_client: ClientFactory,
    changes: dict[str, object],
    named: str,
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        admin = await unlock(console)
        error = await refused(
            console,
            "reader-provision",
            {**PROVISION, **changes},
            token=admin,
            mutating=True,
        )

    assert error.code == "invalid-request"
    assert named in error.message
