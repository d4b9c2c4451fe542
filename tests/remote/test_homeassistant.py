"""Home Assistant MQTT discovery of the box's sensors, through the real broker.

The test logs in with the site's ``homeassistant`` account, as Home
Assistant would, so it also checks that the ACL lets that account read the
discovery configs, the telemetry and the box's availability.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import ClientFactory
from management_site import (
    BOX_ID,
    DROP_ID,
    DROP_QUANTITY,
    TIMEOUT_S,
    config_path_fixture,  # noqa: F401
    management_box,  # noqa: F401
    management_site_config,  # noqa: F401
    operator_key_fixture,  # noqa: F401
)

from appliance.bus.client import Bus, Incoming
from appliance.commerce.config import WalletConfig
from appliance.config import SiteConfig
from appliance.remote.homeassistant import discovery_messages, sensors
from appliance.runtime import Box

NODE = "nightbox-test-box-1"
CONFIGS = f"homeassistant/sensor/{NODE}/+/config"
SENSORS = {
    "guests_in",
    "checkouts",
    "kits_issued",
    "kits_left",
    "sales",
    "sync_backlog",
    "readers_online",
    "drop_tee_drop_stock",
}
# The value template forms that discovery_messages writes.
_PATH = re.compile(r"\{\{ \(?value_json((?:\.\w+|\[\"[^\"]+\"\])+)(?: / (\d+)\))? \}\}")


def template_value(template: str, message: dict[str, Any]) -> Any:
    """Evaluate one of the box's value templates against a telemetry message."""
    match = _PATH.fullmatch(template)
    assert match is not None, template
    value: Any = message
    for name in re.findall(r"\.(\w+)|\[\"([^\"]+)\"\]", match.group(1)):
        value = value[name[0] or name[1]]
    return value / int(match.group(2)) if match.group(2) else value


class HomeAssistant:
    """The homeassistant account's client: every message it received, in order."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.messages: list[Incoming] = []
        self._arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        self.messages.append(incoming)
        self._arrived.set()

    def mark(self) -> int:
        """Return the current position, so a later wait skips earlier messages."""
        return len(self.messages)

    async def configs(self, since: int = 0) -> dict[str, Incoming]:
        """Wait for a full set of discovery configs from ``since`` on, by topic."""
        configs: dict[str, Incoming] = {}
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for incoming in self.messages[since:]:
                    if incoming.topic.endswith("/config"):
                        configs.setdefault(incoming.topic, incoming)
                if len(configs) == len(SENSORS):
                    return configs
                self._arrived.clear()
                await self._arrived.wait()

    async def first_on(self, topic: str) -> Incoming:
        """Wait for the first message on ``topic``."""
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for incoming in self.messages:
                    if incoming.topic == topic:
                        return incoming
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def home_assistant(
    make_client: ClientFactory, *topic_filters: str
) -> AsyncIterator[HomeAssistant]:
    """Connect as Home Assistant with ``topic_filters`` subscribed from the start."""
    async with make_client(
        "homeassistant", "homeassistant", "ha", announce=False, wait=False
    ) as bus:
        home = HomeAssistant(bus)
        for topic_filter in topic_filters:
            bus.subscribe(topic_filter, home.on_message)
        await asyncio.wait_for(bus.connected.wait(), TIMEOUT_S)
        yield home


async def published_configs(make_client: ClientFactory) -> dict[str, Incoming]:
    """Wait until the box has published its configs; return them as received."""
    async with home_assistant(make_client, CONFIGS) as home:
        return await home.configs()


async def test_discovery_configs_retained(box: Box, make_client: ClientFactory) -> None:
    await published_configs(make_client)
    async with home_assistant(make_client, CONFIGS) as home:
        configs = await home.configs()

    expected_topics = {f"homeassistant/sensor/{NODE}/{name}/config" for name in SENSORS}
    assert set(configs) == expected_topics
    for incoming in configs.values():
        assert incoming.retain is True
        message = orjson.loads(incoming.payload)
        object_id = incoming.topic.split("/")[3]
        assert message["unique_id"] == f"{NODE}-{object_id}"
        assert message["state_topic"] == f"nightbox/test/box/{BOX_ID}/tele/state"
        assert message["availability_topic"] == (
            f"nightbox/test/box/{BOX_ID}/availability"
        )
        assert message["payload_available"] == "online"
        assert message["payload_not_available"] == "offline"
        assert message["device"] == {
            "identifiers": [NODE],
            "name": "Nightbox Test venue box-1",
            "model": "Nightbox edge box",
            "manufacturer": "Nightbox",
            "sw_version": "0.1.0",
        }
        assert message["name"]
        assert message["value_template"].startswith("{{ ")


async def test_discovery_fields_per_sensor(
    box: Box, make_client: ClientFactory
) -> None:
    configs = await published_configs(make_client)

    def config(name: str) -> dict[str, Any]:
        payload = configs[f"homeassistant/sensor/{NODE}/{name}/config"].payload
        result: dict[str, Any] = orjson.loads(payload)
        return result

    sales = config("sales")
    assert sales["device_class"] == "monetary"
    assert sales["unit_of_measurement"] == "EUR"
    assert sales["state_class"] == "total"
    assert sales["value_template"] == "{{ (value_json.data.sales_minor / 100) }}"
    guests = config("guests_in")
    assert guests["unit_of_measurement"] == "guests"
    assert guests["state_class"] == "measurement"
    assert "device_class" not in guests
    drop = config("drop_tee_drop_stock")
    assert drop["value_template"] == '{{ value_json.data.drop_stock["tee-drop"] }}'
    assert drop["unit_of_measurement"] == "units"


async def test_templates_read_telemetry(box: Box, make_client: ClientFactory) -> None:
    telemetry_topic = box.bus.topics.telemetry(BOX_ID)
    async with home_assistant(make_client, CONFIGS, telemetry_topic) as home:
        configs = await home.configs()
        state = await home.first_on(telemetry_topic)

    telemetry = orjson.loads(state.payload)
    values = {
        incoming.topic.split("/")[3]: template_value(
            orjson.loads(incoming.payload)["value_template"], telemetry
        )
        for incoming in configs.values()
    }
    assert values == {
        "guests_in": 0,
        "checkouts": 0,
        "kits_issued": 0,
        "kits_left": 5,
        "sales": 0,
        "sync_backlog": telemetry["data"]["sync_backlog"],
        "readers_online": 0,
        "drop_tee_drop_stock": DROP_QUANTITY,
    }


async def test_republished_on_home_assistant_online(
    box: Box, make_client: ClientFactory
) -> None:
    await published_configs(make_client)
    async with home_assistant(make_client, CONFIGS) as home:
        retained = await home.configs()
        published_before = box.management.discovery.published
        mark = home.mark()
        await home.bus.publish("homeassistant/status", b"offline")
        await home.bus.publish("homeassistant/status", b"online")
        republished = await home.configs(since=mark)

    assert all(incoming.retain for incoming in retained.values())
    assert set(republished) == set(retained)
    # A message sent to an existing subscription is not marked retained.
    assert not any(incoming.retain for incoming in republished.values())
    assert box.management.discovery.published == published_before + 1
    assert {topic: incoming.payload for topic, incoming in republished.items()} == {
        topic: incoming.payload for topic, incoming in retained.items()
    }


async def test_other_status_payloads_ignored(
    box: Box, make_client: ClientFactory
) -> None:
    await published_configs(make_client)
    async with home_assistant(make_client, CONFIGS) as home:
        await home.configs()
        published_before = box.management.discovery.published
        for payload in (b"\xff\xfe", b"online!", b"", b"offline"):
            await home.bus.publish("homeassistant/status", payload)
        mark = home.mark()
        await home.bus.publish("homeassistant/status", b" online\n")
        republished = await home.configs(since=mark)

    assert len(republished) == len(SENSORS)
    assert box.management.discovery.published == published_before + 1
    assert box.bus.stats.handler_errors == 0


@pytest.mark.parametrize(
    ("currency", "template"),
    [
        ("EUR", "{{ (value_json.data.sales_minor / 100) }}"),
        ("JPY", "{{ value_json.data.sales_minor }}"),
        ("KWD", "{{ (value_json.data.sales_minor / 1000) }}"),
    ],
)
def test_sales_template_by_currency(
    site_config: SiteConfig, currency: str, template: str
) -> None:
    commerce = site_config.commerce
    config = site_config.__class__(
        **{
            name: getattr(site_config, name)
            for name in site_config.__slots__
            if name != "commerce"
        },
        commerce=commerce.__class__(
            **{
                name: getattr(commerce, name)
                for name in commerce.__slots__
                if name != "wallet"
            },
            wallet=WalletConfig(currency=currency),
        ),
    )

    messages = discovery_messages(
        config, state_topic="state", availability_topic="availability", version="1"
    )
    sales = messages[f"homeassistant/sensor/{NODE}/sales/config"]

    assert sales["value_template"] == template
    assert sales["unit_of_measurement"] == currency


def test_one_sensor_per_drop(site_config: SiteConfig) -> None:
    names = [sensor.object_id for sensor in sensors(site_config)]

    assert names.count("drop_tee_drop_stock") == 1
    assert len(names) == len(SENSORS)
    assert {sensor.name for sensor in sensors(site_config)} >= {f"Drop {DROP_ID} stock"}
