"""``nightbox run``: the broker, the box's services and its scanner until stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from appliance.bus.broker import start_broker
from appliance.clock import SystemClock
from appliance.config import SiteConfig
from appliance.runtime import Box, tune_garbage_collector
from appliance.sightings import ScannerService
from hardware.scanner import create_scanner
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy

_LOGGER = logging.getLogger(__name__)


def credentials_for(config: SiteConfig) -> SiteCredentials:
    """Return the box's broker credentials, kept under its data folder."""
    return SiteCredentials(config.data_dir / "secrets" / "broker.json")


async def serve_box(
    config: SiteConfig, stop: asyncio.Event, announce: Callable[[str], None]
) -> None:
    """Start the broker and every service, then run until ``stop`` is set."""
    credentials = credentials_for(config)
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
    )
    broker = await start_broker(
        config.broker, config.data_dir / "run", credentials, policy
    )
    announce(f"Broker: {broker.description}")
    try:
        async with Box(
            config,
            SystemClock(),
            credentials,
            broker.host,
            broker.port,
            broker_kind=broker.kind,
        ) as box:
            scanner_service = None
            if config.scanner != "none":
                scanner = create_scanner(config.scanner)
                scanner_service = ScannerService(
                    box.bus, scanner, config.box_id, box.clock
                )
                await scanner_service.start()
            tune_garbage_collector()
            announce(
                f"Box {config.box_id} of site {config.site_id} running; "
                f"store {box.store.path}. Stop with Ctrl-C."
            )
            await stop.wait()
            if scanner_service is not None:
                await scanner_service.stop()
    finally:
        await broker.stop()
        announce("Stopped.")
