"""The box: its store, bus connection and services, started and stopped together."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance.analytics.wellness import WellnessNotes
from appliance.assets.cache import AssetCache, night_items
from appliance.bus.client import Bus, BusSettings
from appliance.checkout import CheckoutService
from appliance.clock import Clock
from appliance.commerce._pricing import Pricing
from appliance.commerce.figures import CreatorFigures
from appliance.commerce.offers import PartnerOffers
from appliance.config import SiteConfig
from appliance.console.service import ConsoleService
from appliance.drops.service import DropService
from appliance.kits import KitService
from appliance.outbox import OutboxPublisher
from appliance.portal.service import Portal
from appliance.readers import (
    ClockBeacon,
    FirmwareOffer,
    SerialBridge,
    find_firmware_source,
)
from appliance.remote.commands import RemoteManagement
from appliance.remote.sync import SyncService
from appliance.requests import RequestServer
from appliance.store import Store
from appliance.studio._bus_api import serve_studio
from appliance.studio.service import Studio
from appliance.tokens import box_tokens
from appliance.wallet.service import WalletService
from appliance.wristbands import EidResolver, SiteBands
from provisioning import SiteCredentials
from provisioning.site_access import box_username

_LOGGER = logging.getLogger(__name__)

_STATUS_INTERVAL_S = 1.0
# A status that cannot be built is logged at most this often, in seconds.
_STATUS_ERROR_LOG_INTERVAL_S = 60.0


def tune_garbage_collector() -> None:
    """Set up the process's garbage collector for a night of streaming sightings.

    Start-up objects live until the process ends, so gc.freeze moves them
    out of every later collection, and a first-generation threshold of
    20,000 (CPython's default is 700) stops each sightings batch from
    triggering a collection. Call it once, after start-up, in a process that
    runs a box.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def site_bands(config: SiteConfig) -> SiteBands:
    """Build the band matcher of a site from its configuration."""
    resolver = None
    keyed = [band for band in config.bands if band.eid_identity_key is not None]
    if keyed:
        resolver = EidResolver()
        for band, key in ((band, band.eid_identity_key) for band in keyed):
            if key is None:
                continue
            resolver.register(
                band.id,
                key,
                band.eid_rotation_exponent,
                band.eid_clock_offset_s,
            )
    aliases = {alias: band.id for band in config.bands for alias in band.aliases}
    return SiteBands(
        ibeacon_uuid=config.ibeacon_uuid,
        altbeacon_prefix=config.altbeacon_prefix,
        eddystone_namespace=config.eddystone_namespace,
        eid_resolver=resolver,
        aliases=aliases,
    )


class Box:
    """Every service of one box, as an async context manager.

    ``host`` and ``port`` name the broker; the box logs in with its own
    generated account from ``credentials``.
    """

    def __init__(
        self,
        config: SiteConfig,
        clock: Clock,
        credentials: SiteCredentials,
        host: str,
        port: int,
        *,
        broker_kind: str = "external",
        health_interval_s: float = 0.5,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.broker_kind = broker_kind
        account = credentials.account(box_username(config.box_id))
        self.bus = Bus(
            BusSettings(
                host=host,
                port=port,
                username=account.username,
                password=account.password,
                kind="box",
                device_id=config.box_id,
                site=config.site_id,
            )
        )
        self.store = Store(config.data_dir / "nightbox.sqlite3", clock)
        self.tokens = box_tokens(config, self.store, clock)
        self.requests = RequestServer(self.bus, self.store, clock, self.tokens)
        bands = site_bands(config)
        self.checkouts = CheckoutService(
            self.bus,
            self.store,
            config,
            bands,
            clock,
            health_interval_s=health_interval_s,
        )
        self.offers = PartnerOffers(self.requests, self.store, config.commerce, clock)
        self.kits = KitService(
            self.requests, self.store, config, clock, bands, self.offers
        )
        self.pricing = Pricing(config.commerce)
        self.wallet = WalletService(self.requests, config.commerce, self.pricing, clock)
        self.drops = DropService(
            self.requests,
            self.store,
            config.commerce,
            config.box_id,
            clock,
            self.pricing,
            self.wallet,
        )
        self.figures = CreatorFigures(self.bus, self.store, config.commerce, clock)
        self.outbox = OutboxPublisher(self.bus, self.store, config.box_id)
        self.clock_beacon = ClockBeacon(self.bus, clock)
        # Wi-Fi readers update their firmware from the running slot's
        # firmware/ folder, or from the reader bundle.
        self.firmware_offer = FirmwareOffer(self.bus, find_firmware_source(config))
        # Readers on USB serial get their frames published by the box.
        self.serial_bridges = [
            SerialBridge(
                self.bus,
                reader,
                self.clock_beacon,
                silence_s=config.checkout.silence_s,
            )
            for reader in config.readers
            if reader.uplink == "serial"
        ]
        self.management = RemoteManagement(self, config_path=config_path)
        # The asset cache pins tonight's items and fetches the blobs of
        # every manifest that a bundle or a USB folder brings.
        self.assets = AssetCache(
            self.store,
            config.data_dir,
            config.assets,
            clock,
            config.fleet.operator_keys,
            config.site_id,
        )
        self.assets.pin_items(night_items(config.commerce, clock.now()))
        self.management.bundles.on_assets_applied = self.assets.manifest_changed
        # Without [studio] the box has no camera.
        self.studio: Studio | None = None
        if config.studio is not None:
            self.studio = Studio(self, config.studio)
        # Without [portal] guests have no pages; service_host serves them.
        self.portal: Portal | None = None
        if config.portal is not None:
            self.portal = Portal(self)
        # Wellness notes are purged on start and every minute.
        self.wellness = WellnessNotes(self.store, clock)
        self.console = ConsoleService(self, bands, config_path)
        # Without [sync] the box stays offline and keeps its outbox.
        self.sync: SyncService | None = None
        if config.sync is not None:
            self.sync = SyncService(
                config, self.store, self.bus, clock, management=self.management
            )
            if self.studio is not None:
                self.sync.attach_clip_uploads(self.studio.clips)
            self.sync.attach_asset_delivery(self.assets.fetcher)
        self._status_task: asyncio.Task[None] | None = None
        self.bus.on_connect(self.publish_status)

    async def __aenter__(self) -> Box:
        await self.checkouts.start()
        await self.kits.start()
        await self.wellness.start()
        self.pricing.seed(self.store)
        self.offers.start()
        self.wallet.start()
        self.drops.start()
        self.console.start()
        await self.assets.start()
        if self.studio is not None:
            serve_studio(self, self.studio)
        await self.requests.start()
        await self.bus.__aenter__()
        await self.management.start()
        await self.outbox.start()
        if self.sync is not None:
            await self.sync.start()
        await self.figures.start()
        await self.clock_beacon.start()
        await self.firmware_offer.start()
        for bridge in self.serial_bridges:
            await bridge.start()
        if self.studio is not None:
            await self.studio.start()
        self._status_task = asyncio.create_task(
            self._publish_status_forever(), name="box-status"
        )
        _LOGGER.info(
            "Box %s of site %s started (store %s)",
            self.config.box_id,
            self.config.site_id,
            self.store.path,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Jobs report their end on the bus and in the store, so they stop first.
        await self.console.stop()
        # The portal's pages call the request server, which stops below.
        if self.portal is not None:
            await self.portal.stop()
        if self.studio is not None:
            await self.studio.stop()
        if self.sync is not None:
            await self.sync.stop()
        await self.assets.stop()
        await self.management.stop()
        for bridge in self.serial_bridges:
            await bridge.stop()
        await self.clock_beacon.stop()
        await cancel_and_wait(self._status_task)
        await self.requests.stop()
        await self.drops.stop()
        await self.figures.stop()
        await self.outbox.stop()
        await self.checkouts.stop()
        await self.wellness.stop()
        await self.bus.close()
        self.store.close()
        _LOGGER.info("Box %s stopped", self.config.box_id)

    def status(self) -> dict[str, Any]:
        """Return the box's health and counters, as published on its status topic."""
        stats = self.checkouts.stats
        readers = {
            reader.id: {
                "role": reader.role,
                "last_batch": self.checkouts.last_batch(reader.id),
            }
            for reader in self.config.readers
        }
        return {
            "broker": self.broker_kind,
            "clock": {"trusted": self.clock.trusted, "source": str(self.clock.source)},
            "now": round(self.clock.now(), 3),
            "batches": stats.batches,
            "duplicate_batches": stats.duplicate_batches,
            "sightings": stats.sightings,
            "band_sightings": stats.band_sightings,
            "checkouts": stats.checkouts,
            "repeat_crossings": stats.repeat_crossings,
            "rejected": dict(stats.rejected) | dict(self.bus.stats.rejected),
            "requests": dict(self.requests.counts),
            "kit_stock": self.kits.stock(),
            "drops": self.drops.stock(),
            "partner_codes_left": self.offers.remaining(),
            "outbox_backlog": self.outbox.backlog,
            "readers": readers,
            "readers_serial": {
                bridge.reader.id: bridge.status() for bridge in self.serial_bridges
            },
            "remote": self.management.status(),
            "sync": None if self.sync is None else self.sync.state(),
            "stream": None if self.studio is None else self.studio.state(),
            "portal": None if self.portal is None else self.portal.state(),
            "assets": self.assets.status(),
            "reader_firmware": self.firmware_offer.status(),
            "faults": [
                {"reader": fault.reader_id, "kind": fault.kind, "since": fault.since}
                for fault in self.checkouts.faults
            ],
        }

    async def publish_status(self) -> None:
        """Publish the retained status once."""
        topic = self.bus.topics.status("box", self.config.box_id)
        await self.bus.publish_json(topic, {"data": self.status()}, retain=True)

    async def _publish_status_forever(self) -> None:
        failures = 0
        logged_at: float | None = None
        while True:
            await asyncio.sleep(_STATUS_INTERVAL_S)
            if not self.bus.connected.is_set():
                continue
            try:
                await self.publish_status()
            except (aiomqtt.MqttError, TimeoutError) as err:
                _LOGGER.warning("Could not publish box status: %s", err)
            except Exception as err:  # a bug in one part must not freeze the status
                failures += 1
                now = asyncio.get_running_loop().time()
                if logged_at is None:
                    _LOGGER.exception("Could not build the box status: %s", err)
                    logged_at = now
                elif now - logged_at >= _STATUS_ERROR_LOG_INTERVAL_S:
                    _LOGGER.error(
                        "Could not build the box status: %s (%d failures so far; "
                        "the first was logged with its traceback)",
                        err,
                        failures,
                    )
                    logged_at = now
