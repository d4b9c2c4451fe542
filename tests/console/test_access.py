"""The console account's grants, enforced by a real mosquitto.

aiomqtt ignores a PUBACK's reason code, so publishes use paho-mqtt, which
reports it: mosquitto 2.0 answers a denied QoS 1 publish with reason 135
(Not authorized). A denied subscription delivers nothing, so each read
check publishes the denied message first and an allowed one after it; once
the allowed one arrives, the denied one would have arrived before it.
"""

from __future__ import annotations

import asyncio

import pytest

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Incoming
from provisioning import SiteCredentials
from tests.conftest import ClientFactory
from tests.console.console_site import CONSOLE_USER, console_client
from tests.paho_publish import REASON_SUCCESS, publish_with_paho

NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16
ROOT = "nightbox/test"
READABLE = [
    f"{ROOT}/events/checkout",
    f"{ROOT}/box/box-1/status",
    f"{ROOT}/box/box-1/availability",
    f"{ROOT}/reader/exit-1/status",
    f"{ROOT}/reader/exit-1/sightings",
    f"{ROOT}/terminal/desk/availability",
    f"{ROOT}/creators/maya/figures",
    f"{ROOT}/box/health",
    f"{ROOT}/box/box-1/tele/state",
    f"{ROOT}/box/box-1/console/jobs/0123abcd",
    f"{ROOT}/terminal/console/reply",
]
UNREADABLE = [
    f"{ROOT}/terminal/desk/reply",
    f"{ROOT}/reader/kit-1/reply",
    f"{ROOT}/terminal/desk/api/wallet/charge",
    f"{ROOT}/reader/kit-1/api/kits/issue",
    f"{ROOT}/box/box-1/cmnd/restart",
    f"{ROOT}/box/box-2/console/jobs/0123abcd",
]
UNWRITABLE = [
    f"{ROOT}/terminal/desk/api/wallet/charge",
    f"{ROOT}/terminal/desk/status",
    f"{ROOT}/reader/exit-1/sightings",
    f"{ROOT}/box/box-1/status",
    f"{ROOT}/box/box-1/cmnd/restart",
    f"{ROOT}/box/box-1/console/jobs/0123abcd",
    f"{ROOT}/events/checkout",
]
WRITABLE = [
    f"{ROOT}/terminal/console/api/console/overview",
    f"{ROOT}/terminal/console/status",
    f"{ROOT}/terminal/console/availability",
]


async def publish_as_console(
    broker: BrokerHandle, credentials: SiteCredentials, topic: str
) -> int:
    password = credentials.account(CONSOLE_USER).password
    result = await publish_with_paho(broker, CONSOLE_USER, password, topic, b"{}")
    assert result.connack == REASON_SUCCESS
    assert result.puback is not None
    return result.puback


async def received_by_console(
    make_client: ClientFactory, topic: str, barrier: str
) -> bool:
    """Publish on ``topic`` and ``barrier`` as the box; return if ``topic`` arrived."""
    arrived: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        await arrived.put(incoming.topic)

    async with (
        console_client(make_client) as console,
        make_client("box-box-1", "box", "box-1", announce=False) as box,
    ):
        console.subscribe(topic, on_message)
        console.subscribe(barrier, on_message)
        await asyncio.sleep(0.3)
        await box.publish(topic, b"{}")
        await box.publish(barrier, b"{}")
        topics = [await asyncio.wait_for(arrived.get(), 10)]
        if topics[0] != barrier:
            topics.append(await asyncio.wait_for(arrived.get(), 10))
    return topic in topics


@pytest.mark.parametrize("topic", READABLE)
async def test_console_reads(
    mosquitto: BrokerHandle, make_client: ClientFactory, topic: str
) -> None:
    barrier = f"{ROOT}/events/barrier"

    assert await received_by_console(make_client, topic, barrier)


@pytest.mark.parametrize("topic", UNREADABLE)
async def test_console_cannot_read(
    mosquitto: BrokerHandle, make_client: ClientFactory, topic: str
) -> None:
    barrier = f"{ROOT}/events/barrier"

    assert not await received_by_console(make_client, topic, barrier)


@pytest.mark.parametrize("topic", UNWRITABLE)
async def test_console_cannot_publish(
    mosquitto: BrokerHandle, credentials: SiteCredentials, topic: str
) -> None:
    assert await publish_as_console(mosquitto, credentials, topic) == NOT_AUTHORIZED


@pytest.mark.parametrize("topic", WRITABLE)
async def test_console_publishes_own_topics(
    mosquitto: BrokerHandle, credentials: SiteCredentials, topic: str
) -> None:
    code = await publish_as_console(mosquitto, credentials, topic)

    assert code in (REASON_SUCCESS, NO_MATCHING_SUBSCRIBERS)
