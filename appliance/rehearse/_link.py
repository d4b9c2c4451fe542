"""The rehearsal's own connection to the box's broker, as the terminal console.

It logs in with the console's account under a client id of its own, so a
terminal UI attached to the box stays connected. From the moment it
connects it records what the checks judge: the box's retained status,
every reader's availability and sightings batches, and the probe messages
that the broker must never deliver.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from appliance.bus import envelope
from appliance.bus.client import Bus, BusSettings, Incoming
from appliance.errors import PayloadError
from provisioning.site_access import CONSOLE, terminal_username

_LOGGER = logging.getLogger(__name__)

# The topic suffix of the probes that a reader account publishes where it
# must not. The console may read both topics, so a delivered probe shows up.
PROBE_NAME = "rehearsal-probe"


@dataclass(frozen=True, slots=True)
class _RehearsalSettings(BusSettings):
    """Bus settings whose client id carries a tag of its own."""

    client_tag: str = ""

    @property
    def client_id(self) -> str:
        """The console's client id plus the tag, unique to this rehearsal."""
        return f"{self.site}-{self.kind}-{self.device_id}-{self.client_tag}"


@dataclass(frozen=True, slots=True)
class Batch:
    """One sightings batch as the rehearsal received it."""

    received_at: float
    heard: int
    sightings: int


@dataclass
class ReaderTraffic:
    """The availability and batches of one reader since the rehearsal connected."""

    availability: str | None = None
    batches: list[Batch] = field(default_factory=list)


def console_settings(
    host: str, port: int, site: str, password: str, *, tag: str | None = None
) -> BusSettings:
    """Return the console's bus settings with a client id of the rehearsal's own."""
    return _RehearsalSettings(
        host=host,
        port=port,
        username=terminal_username(CONSOLE),
        password=password,
        kind="terminal",
        device_id=CONSOLE,
        site=site,
        client_tag=tag or f"rehearsal-{secrets.token_hex(3)}",
    )


class RehearsalLink:
    """The console's bus client and what it has heard since it connected."""

    def __init__(self, settings: BusSettings, box_id: str) -> None:
        # announce=False: the console's availability belongs to its terminal UI.
        self.bus = Bus(settings, announce=False)
        self.box_id = box_id
        self.started_at = time.monotonic()
        self.box_status: dict[str, Any] | None = None
        self.status_arrived = asyncio.Event()
        self.readers: dict[str, ReaderTraffic] = {}
        self.probes: list[str] = []
        self.rejected_payloads = 0
        topics = self.bus.topics
        self.bus.subscribe(topics.status("box", box_id), self._on_box_status)
        self.bus.subscribe(topics.all_sightings, self._on_sightings)
        self.bus.subscribe(f"{topics.prefix}/reader/+/availability", self._on_avail)
        self.bus.subscribe(self.probe_topics()[0], self._on_probe)
        self.bus.subscribe(self.probe_topics()[1], self._on_probe)

    def probe_topics(self) -> tuple[str, str]:
        """Return the topics where a reader must not publish: box telemetry, events."""
        topics = self.bus.topics
        return (
            topics.box_topic(self.box_id, f"tele/{PROBE_NAME}"),
            topics.event(PROBE_NAME),
        )

    async def __aenter__(self) -> RehearsalLink:
        await self.bus.__aenter__()
        self.started_at = time.monotonic()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.bus.close()

    def traffic(self, reader_id: str) -> ReaderTraffic:
        """Return what ``reader_id`` sent so far (empty when it sent nothing)."""
        return self.readers.setdefault(reader_id, ReaderTraffic())

    def _body(self, incoming: Incoming) -> dict[str, Any] | None:
        try:
            return envelope.decode(incoming.payload).data
        except PayloadError as err:
            self.rejected_payloads += 1
            _LOGGER.debug("Ignored an invalid payload on %s: %s", incoming.topic, err)
            return None

    async def _on_box_status(self, incoming: Incoming) -> None:
        data = self._body(incoming)
        if data is not None:
            self.box_status = data
            self.status_arrived.set()

    async def _on_sightings(self, incoming: Incoming) -> None:
        reader_id = incoming.topic.split("/")[-2]
        data = self._body(incoming)
        if data is None:
            return
        heard = data.get("heard")
        sightings = data.get("sightings")
        self.traffic(reader_id).batches.append(
            Batch(
                time.monotonic(),
                heard if isinstance(heard, int) else 0,
                len(sightings) if isinstance(sightings, list) else 0,
            )
        )

    async def _on_avail(self, incoming: Incoming) -> None:
        reader_id = incoming.topic.split("/")[-2]
        self.traffic(reader_id).availability = incoming.payload.decode(
            "utf-8", "replace"
        )

    async def _on_probe(self, incoming: Incoming) -> None:
        self.probes.append(incoming.topic)
