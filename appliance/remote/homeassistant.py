"""Home Assistant MQTT discovery for the box's telemetry.

The box publishes one retained config message per sensor on
``homeassistant/sensor/<node id>/<object id>/config``. Each sensor reads its
value from the box's retained ``tele/state`` topic with a value template and
takes its availability from the box's retained ``availability`` topic, so
Home Assistant shows the figures without further setup. The configs are
published on every connect and again whenever Home Assistant announces
``online`` on ``homeassistant/status``, as it does after its own restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiomqtt
import orjson

from appliance.bus.client import Bus, Incoming
from appliance.config import SiteConfig
from appliance.currency import minor_unit_digits

_LOGGER = logging.getLogger(__name__)

# Home Assistant's default discovery prefix and its birth message topic.
DISCOVERY_PREFIX = "homeassistant"
STATUS_TOPIC = f"{DISCOVERY_PREFIX}/status"
MANUFACTURER = "Nightbox"
MODEL = "Nightbox edge box"


@dataclass(frozen=True, slots=True)
class Sensor:
    """One Home Assistant sensor read from the telemetry message."""

    object_id: str
    name: str
    # A Jinja expression over ``value_json``, the whole telemetry envelope.
    value: str
    unit: str | None = None
    state_class: str | None = "measurement"
    device_class: str | None = None
    icon: str | None = None


def node_id(site_id: str, box_id: str) -> str:
    """Return the discovery node id of a box: ``nightbox-<site>-<box>``."""
    return f"nightbox-{site_id}-{box_id}"


def sensors(config: SiteConfig) -> list[Sensor]:
    """Return the sensors of a box: counts, sales, drop stock, sync and readers."""
    currency = config.commerce.wallet.currency
    decimals = minor_unit_digits(currency)
    sales = "value_json.data.sales_minor"
    if decimals:
        sales = f"({sales} / {10**decimals})"
    result = [
        Sensor("guests_in", "Guests in", "value_json.data.guests_in", "guests"),
        Sensor(
            "checkouts",
            "Check-outs tonight",
            "value_json.data.checkouts",
            "check-outs",
        ),
        Sensor(
            "kits_issued",
            "Kits issued tonight",
            "value_json.data.kits_issued.total",
            "kits",
        ),
        Sensor("kits_left", "Kits left", "value_json.data.kits_left.total", "kits"),
        # Home Assistant accepts only the state class "total" for monetary
        # sensors. The figure falls back at the start of every night.
        Sensor(
            "sales",
            "Sales tonight",
            sales,
            currency,
            state_class="total",
            device_class="monetary",
        ),
        Sensor(
            "sync_backlog",
            "Sync backlog",
            "value_json.data.sync_backlog",
            "events",
        ),
        Sensor(
            "readers_online",
            "Readers online",
            "value_json.data.readers_online",
            "readers",
        ),
    ]
    for drop in config.commerce.drops:
        result.append(
            Sensor(
                f"drop_{drop.id.replace('-', '_')}_stock",
                f"Drop {drop.id} stock",
                f"value_json.data.drop_stock[{orjson.dumps(drop.id).decode()}]",
                "units",
            )
        )
    return result


def discovery_messages(
    config: SiteConfig, *, state_topic: str, availability_topic: str, version: str
) -> dict[str, dict[str, Any]]:
    """Return the discovery config of every sensor, by config topic."""
    node = node_id(config.site_id, config.box_id)
    device = {
        "identifiers": [node],
        "name": f"Nightbox {config.site_name} {config.box_id}",
        "model": MODEL,
        "manufacturer": MANUFACTURER,
        "sw_version": version,
    }
    messages: dict[str, dict[str, Any]] = {}
    for sensor in sensors(config):
        message: dict[str, Any] = {
            "name": sensor.name,
            "unique_id": f"{node}-{sensor.object_id}",
            "state_topic": state_topic,
            "value_template": f"{{{{ {sensor.value} }}}}",
            "availability_topic": availability_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }
        optional = {
            "unit_of_measurement": sensor.unit,
            "state_class": sensor.state_class,
            "device_class": sensor.device_class,
            "icon": sensor.icon,
        }
        message.update({key: value for key, value in optional.items() if value})
        topic = f"{DISCOVERY_PREFIX}/sensor/{node}/{sensor.object_id}/config"
        messages[topic] = message
    return messages


class HomeAssistantDiscovery:
    """The publisher of the discovery configs, on connect and on HA's birth message."""

    def __init__(self, bus: Bus, config: SiteConfig, *, version: str) -> None:
        self._bus = bus
        self.messages = discovery_messages(
            config,
            state_topic=bus.topics.telemetry(config.box_id),
            availability_topic=bus.topics.availability("box", config.box_id),
            version=version,
        )
        self.published = 0
        self._running = False

    def start(self) -> None:
        """Subscribe to Home Assistant's status and publish on every connect."""
        self._running = True
        self._bus.subscribe(STATUS_TOPIC, self._on_status)
        self._bus.on_connect(self.publish)

    def stop(self) -> None:
        """Stop publishing. The retained configs stay on the broker."""
        self._running = False

    async def publish(self) -> None:
        """Publish every discovery config, retained."""
        if not self._running:
            return
        try:
            for topic, message in self.messages.items():
                await self._bus.publish(topic, orjson.dumps(message), retain=True)
        except (aiomqtt.MqttError, TimeoutError) as err:
            # The next connect publishes them again.
            _LOGGER.warning("Could not publish Home Assistant discovery: %s", err)
            return
        self.published += 1
        _LOGGER.info(
            "Published %d Home Assistant discovery configs", len(self.messages)
        )

    async def _on_status(self, incoming: Incoming) -> None:
        if incoming.payload.strip() == b"online":
            await self.publish()
