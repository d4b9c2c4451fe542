"""The box's scanner: backend choice, the simulator, bleak field conversion,
and the scanner service publishing batches on a real broker."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from appliance.bus import envelope
from appliance.bus.client import Incoming
from appliance.clock import SystemClock
from appliance.sightings import BatchBuilder, ScannerService
from appliance.sim import _adverts
from appliance.wristbands import SiteBands
from hardware.scanner import (
    BleakBackend,
    SimulatedScanner,
    advert_bytes_from_fields,
    create_scanner,
)

SITE_UUID = bytes.fromhex("426c7565436861726d426561636f6e73")
FEAA = "0000feaa-0000-1000-8000-00805f9b34fb"


def test_factory_picks_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIGHTBOX_SCANNER", raising=False)
    assert isinstance(create_scanner("simulator"), SimulatedScanner)
    assert isinstance(create_scanner("bleak"), BleakBackend)


def test_factory_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTBOX_SCANNER", "simulator")
    assert isinstance(create_scanner("bleak"), SimulatedScanner)


def test_factory_unknown_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIGHTBOX_SCANNER", raising=False)
    with pytest.raises(ValueError, match="unknown scanner backend 'bluetooth'"):
        create_scanner("bluetooth")


async def test_simulator_hears_only_while_scanning() -> None:
    scanner = SimulatedScanner(keep_history=True)
    assert scanner.hear("aa:bb:cc:dd:ee:01", -60, b"\x02\x01\x06") is False
    async with scanner:
        assert scanner.hear("aa:bb:cc:dd:ee:01", -60, b"\x02\x01\x06", t=5.0)
        scanner.stalled = True
        assert scanner.hear("aa:bb:cc:dd:ee:02", -61, b"\x02\x01\x06") is False
    heard = scanner.drain()
    assert [advert.address for advert in heard] == ["aa:bb:cc:dd:ee:01"]
    assert heard[0].t == 5.0
    assert len(scanner.history) == 1
    assert scanner.starts == 1


async def test_simulator_drops_oldest_when_full() -> None:
    scanner = SimulatedScanner(queue_size=2)
    await scanner.start()
    for rssi in (-70, -60, -50):
        scanner.hear("aa:bb:cc:dd:ee:01", rssi, b"\x02\x01\x06")
    assert scanner.dropped == 1
    assert [advert.rssi_dbm for advert in scanner.drain()] == [-60, -50]


def test_bleak_fields_rebuild_ibeacon() -> None:
    advert = _adverts.ibeacon(SITE_UUID, 0, 7, -59)
    payload = advert[advert.index(b"\xff\x4c\x00") + 3 :]
    raw = advert_bytes_from_fields({0x004C: payload}, {}, [], None, None)
    match = SiteBands(ibeacon_uuid=SITE_UUID).identify(raw, 0.0)
    assert getattr(match, "band_id", None) == "ib-0-7"


def test_bleak_fields_rebuild_eddystone() -> None:
    namespace = bytes.fromhex("12345678901234678901")
    frame = bytes.fromhex("00e3") + namespace + bytes.fromhex("0000000000010000")
    raw = advert_bytes_from_fields({}, {FEAA: frame}, [FEAA], -4, "band")
    match = SiteBands(eddystone_namespace=namespace).identify(raw, 0.0)
    assert getattr(match, "band_id", None) == "uid-000000000001"
    assert raw.endswith(b"\x05\x09band")


def test_bleak_fields_skip_long_uuids() -> None:
    raw = advert_bytes_from_fields(
        {}, {"6e400001-b5a3-f393-e0a9-e50e24dcca9e": b"\x01"}, [], None, None
    )
    assert raw == b""


async def test_bleak_callback_queues_advert() -> None:
    backend = BleakBackend()
    device = BLEDevice("AA:BB:CC:DD:EE:FF", "band", None)
    data = AdvertisementData(
        local_name=None,
        manufacturer_data={
            0x004C: bytes.fromhex("0215") + SITE_UUID + b"\x00\x01\x00\x02\xc5"
        },
        service_data={},
        service_uuids=[],
        tx_power=None,
        rssi=-63,
        platform_data=(),
    )
    backend._on_advert(device, data)
    (advert,) = backend.drain()
    assert advert.address == "aa:bb:cc:dd:ee:ff"
    assert advert.rssi_dbm == -63
    assert advert.data.startswith(bytes.fromhex("1aff4c000215"))


def _has_adapter() -> bool:
    return os.path.exists("/sys/class/bluetooth/hci0") and bool(
        shutil.which("bluetoothd")
    )


@pytest.mark.hardware
@pytest.mark.skipif(
    not _has_adapter(), reason="needs a Bluetooth adapter (hci0) and BlueZ"
)
async def test_bleak_scans_real_adapter() -> None:
    async with BleakBackend() as backend:
        await asyncio.sleep(5)
    assert backend.heard > 0


def test_batch_builder_aggregates_per_advert() -> None:
    builder = BatchBuilder("exit-1", boot="b1")
    builder.add("aa:bb:cc:dd:ee:01", -60, b"\x01", 10.1)
    builder.add("aa:bb:cc:dd:ee:02", -70, b"\x01", 10.4)
    builder.add("aa:bb:cc:dd:ee:03", -50, b"\x02", 10.2)
    builder.count_heard(5)
    batch = builder.take(10.5)
    assert batch["seq"] == 1
    assert batch["heard"] == 8
    first = batch["sightings"][0]
    assert first["rssi"] == -65.0
    assert first["n"] == 2
    assert first["t"] == 10.4
    assert first["addr"] == "aa:bb:cc:dd:ee:02"
    assert builder.take(11.0)["sightings"] == []


async def test_scanner_service_publishes_batches(box, make_client) -> None:  # type: ignore[no-untyped-def]
    scanner = SimulatedScanner()
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_batch(incoming: Incoming) -> None:
        await received.put(envelope.decode(incoming.payload).data)

    async with make_client("observer", "observer", "test", announce=False) as observer:
        observer.subscribe(observer.topics.sightings("box-1"), on_batch)
        await asyncio.sleep(0.2)  # the subscription goes out after connect
        service = ScannerService(
            box.bus, scanner, "box-1", SystemClock(), interval_s=0.1
        )
        await service.start()
        try:
            scanner.hear(
                "aa:bb:cc:dd:ee:01", -58, _adverts.ibeacon(SITE_UUID, 1, 2, -59)
            )
            batch = await asyncio.wait_for(_first_nonempty(received), timeout=5)
        finally:
            await service.stop()
    assert batch["reader"] == "box-1"
    sightings = batch["sightings"]
    assert isinstance(sightings, list)
    assert sightings[0]["rssi"] == -58.0
    assert scanner.scanning is False


async def _first_nonempty(queue: asyncio.Queue[dict[str, object]]) -> dict[str, object]:
    while True:
        batch = await queue.get()
        if batch.get("sightings"):
            return batch
