"""``nightbox rehearse --demo``: a simulated box and readers to rehearse against.

The box runs its real services on a real broker, as in ``nightbox demo``.
Two exit readers and a kit station are ordinary bus clients with their own
accounts that publish a batch twice a second, and the box's own scanner is
the simulator, fed the same radio. ``DemoFaults`` breaks one part on
purpose, so the rehearsal can be seen to catch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from appliance._tasks import cancel_and_wait
from appliance.bus.broker import start_broker
from appliance.bus.client import Bus, BusSettings
from appliance.clock import SystemClock, TimeSource
from appliance.config import BrokerConfig, BrokerMode, ReaderConfig, SiteConfig
from appliance.rehearse._target import Target
from appliance.runtime import Box
from appliance.sightings import BatchBuilder, ScannerService
from appliance.sim._adverts import ibeacon
from appliance.sim._bands import SITE_UUID
from appliance.studio.config import StudioConfig
from hardware.camera import SimulatedCamera
from hardware.scanner import SimulatedScanner
from provisioning import AccessPolicy, SiteCredentials
from provisioning.acl import Access, AclRule
from provisioning.site_access import ReaderGrant, reader_username, site_policy

_LOGGER = logging.getLogger(__name__)

# Readers batch twice a second, as the demo night's exit readers do.
BATCH_INTERVAL_S = 0.5
# Guests near the readers: far enough away that no guest is checked out.
_BANDS = 12
_FAR_RSSI_DBM = -88
_CONNECT_TIMEOUT_S = 15.0

# The studio as a venue box runs it: the product's default camera, encoder,
# HLS and clip settings, the simulator in real time, and the simulator's test
# tone standing in for a venue's microphone. Only the HTTP server, which
# listens on loopback at a free port, and the clips kept differ.
DEMO_STUDIO = dataclasses.replace(
    StudioConfig(camera="simulator"),
    audio="tone",
    # A rehearsal writes one clip into a temporary folder, so keeping few
    # spares its storage check from asking for gigabytes there.
    clips_keep=5,
    http_host="127.0.0.1",
    http_port=0,
)

FAULTS = ("reader-silent", "scan-stalled", "camera", "acl-open", "clock-untrusted")


@dataclass(frozen=True, slots=True)
class DemoFaults:
    """Parts of the simulated box that are broken on purpose.

    ``reader_silent``: exit reader 2 sends no batch. ``scan_stalled``: the
    kit station's batches report no adverts. ``camera``: the simulated
    camera fails with this message once the studio runs. ``acl_open``: the
    broker lets reader accounts publish anywhere. ``clock_untrusted``: the
    box's clock is not vouched for.
    """

    reader_silent: bool = False
    scan_stalled: bool = False
    camera: str | None = None
    acl_open: bool = False
    clock_untrusted: bool = False

    @classmethod
    def from_names(cls, names: list[str]) -> DemoFaults:
        """Return the faults named as ``--demo-fault`` takes them (see FAULTS)."""
        unknown = sorted(set(names) - set(FAULTS))
        if unknown:
            raise ValueError(
                f"unknown demo fault {unknown[0]!r}; use one of {', '.join(FAULTS)}"
            )
        return cls(
            reader_silent="reader-silent" in names,
            scan_stalled="scan-stalled" in names,
            camera="simulated camera failure" if "camera" in names else None,
            acl_open="acl-open" in names,
            clock_untrusted="clock-untrusted" in names,
        )


def demo_site(
    data_dir: Path, broker_mode: BrokerMode, faults: DemoFaults
) -> SiteConfig:
    """Return the demo site: two exits, a kit station, a scanner and a studio."""
    return SiteConfig(
        site_id="rehearsal",
        site_name="Nightbox rehearsal demo",
        box_id="box-1",
        data_dir=data_dir,
        ibeacon_uuid=SITE_UUID,
        readers=(
            ReaderConfig("exit-1", "exit"),
            ReaderConfig("exit-2", "exit"),
            ReaderConfig("kit-1", "kit", kit_stock=20),
            # The box's own scanner reports as a reader named after the box.
            ReaderConfig("box-1", "exit"),
        ),
        broker=BrokerConfig(mode=broker_mode),
        scanner="simulator",
        clock_trusted=not faults.clock_untrusted,
        studio=DEMO_STUDIO,
    )


def _policy(config: SiteConfig, faults: DemoFaults) -> AccessPolicy:
    grants = [ReaderGrant(reader.id, reader.role) for reader in config.readers]
    policy = site_policy(
        config.site_id, config.box_id, grants, config.commerce.terminals
    )
    if not faults.acl_open:
        return policy
    # A broker with a careless ACL: every reader may write the whole site.
    everything = AclRule(Access.READWRITE, f"nightbox/{config.site_id}/#")
    rules = {name: policy.rules_for(name) for name in policy.usernames}
    for grant in grants:
        name = reader_username(grant.reader_id)
        rules[name] = (*rules[name], everything)
    return AccessPolicy(rules)


class _Radio:
    """Adverts of a few bands far from every reader, heard with some loss."""

    def __init__(self, seed: int = 7) -> None:
        self._random = random.Random(seed)
        self._adverts = [
            (f"c0:ff:ee:00:00:{index:02x}", ibeacon(SITE_UUID, 1, index, -59))
            for index in range(1, _BANDS + 1)
        ]

    def heard(self) -> list[tuple[str, int, bytes]]:
        return [
            (address, _FAR_RSSI_DBM + self._random.randint(-4, 4), data)
            for address, data in self._adverts
            if self._random.random() < 0.75
        ]


async def _run_readers(
    readers: list[Bus],
    scanner: SimulatedScanner,
    clock: SystemClock,
    faults: DemoFaults,
) -> None:
    radio = _Radio()
    builders = {
        bus.settings.device_id: BatchBuilder(bus.settings.device_id) for bus in readers
    }
    while True:
        await asyncio.sleep(BATCH_INTERVAL_S)
        now = clock.now()
        for address, rssi, data in radio.heard():
            scanner.hear(address, rssi, data, now)
        for bus in readers:
            reader_id = bus.settings.device_id
            if faults.reader_silent and reader_id == "exit-2":
                continue
            builder = builders[reader_id]
            if not (faults.scan_stalled and reader_id == "kit-1"):
                for address, rssi, data in radio.heard():
                    builder.add(address, rssi, data, now)
            batch = builder.take(now)
            try:
                await bus.publish_json(bus.topics.sightings(reader_id), {"data": batch})
            except aiomqtt.MqttError as err:
                # The reader's bus reconnects by itself. The batch is lost, as
                # a real reader's would be after its replay ring.
                _LOGGER.warning("Demo reader %s lost a batch: %s", reader_id, err)


@contextlib.asynccontextmanager
async def demo_box(
    faults: DemoFaults = DemoFaults(), broker_mode: BrokerMode = "auto"
) -> AsyncIterator[Target]:
    """Start a broker, a box and its readers, and yield it as a rehearsal target.

    Everything stops and the temporary folder is removed on exit.
    """
    with tempfile.TemporaryDirectory(prefix="nightbox-rehearsal-") as folder:
        data_dir = Path(folder)
        config = demo_site(data_dir, broker_mode, faults)
        credentials = SiteCredentials(data_dir / "secrets" / "broker.json")
        policy = _policy(config, faults)
        broker = await start_broker(
            config.broker, data_dir / "run", credentials, policy
        )
        try:
            source = (
                TimeSource.UNTRUSTED if faults.clock_untrusted else TimeSource.OPERATOR
            )
            clock = SystemClock(source)
            box = Box(
                config,
                clock,
                credentials,
                broker.host,
                broker.port,
                broker_kind=broker.kind,
            )
            readers = [
                Bus(
                    BusSettings(
                        broker.host,
                        broker.port,
                        reader_username(reader.id),
                        credentials.account(reader_username(reader.id)).password,
                        "reader",
                        reader.id,
                        config.site_id,
                    )
                )
                for reader in config.readers
                if reader.id != config.box_id
            ]
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(box)
                scanner = SimulatedScanner()
                scanner_service = ScannerService(
                    box.bus, scanner, config.box_id, clock, interval_s=BATCH_INTERVAL_S
                )
                await scanner_service.start()
                stack.push_async_callback(scanner_service.stop)
                for bus in readers:
                    await stack.enter_async_context(bus)
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    for bus in (box.bus, *readers):
                        await bus.connected.wait()
                studio_url = await _serve_studio(box, faults)
                radio = asyncio.create_task(
                    _run_readers(readers, scanner, clock, faults),
                    name="rehearsal-radio",
                )
                try:
                    yield Target(
                        description=f"the demo box ({broker.description})",
                        config=config,
                        host=broker.host,
                        port=broker.port,
                        accounts={
                            name: credentials.account(name).password
                            for name in policy.usernames
                        },
                        tokens=box.tokens,
                        store=box.store,
                        studio_url=studio_url,
                    )
                finally:
                    await cancel_and_wait(radio)
        finally:
            await broker.stop()


async def _serve_studio(box: Box, faults: DemoFaults) -> str | None:
    """Serve the demo studio over HTTP, and break its camera when requested."""
    studio = box.studio
    if studio is None:
        return None
    http = await studio.serve_http()
    if faults.camera is not None:
        camera = studio.camera
        if not isinstance(camera, SimulatedCamera):
            raise TypeError(
                f"the demo studio's camera is {camera.name}, not the simulator"
            )
        camera.fail(faults.camera)
    return f"http://127.0.0.1:{http.port}"
