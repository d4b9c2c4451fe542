"""Reader firmware updates from the box, on real MicroPython and a real mosquitto.

The reader runs firmware 1.0.0 from ``/lib`` (the repository's firmware),
with its umqtt calls relayed to the test's mosquitto under its own
account. The box (or its firmware offer alone) offers 1.1.0: the same
firmware with another version, or one that breaks. A host file keeps
the board's flash, so a run can be killed mid-download and started
again. The test watches the reader's retained status on the broker.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from appliance.bus.client import Bus, Incoming
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig
from appliance.readers.firmware_offer import FirmwareOffer, chunk_count
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.site_access import box_username

from firmware_relay import PowerCut, Rewrite, reader_files, run_relayed
from micropython_runner import FIRMWARE, Results

STATUS_TOPIC = "nightbox/test/reader/exit-1/status"
CHUNK_TOPIC = "nightbox/test/reader/exit-1/firmware/chunk"
MANIFEST_TOPIC = "nightbox/test/firmware/manifest"
NEW_VERSION = "1.1.0"
OLD_VERSION = "1.0.0"
WAIT_S = 60.0

Status = dict[str, Any]


def write_firmware(folder: Path, version: str, *, broken: bool = False) -> Path:
    """Copy the repository's firmware to ``folder`` with FW_VERSION ``version``.

    ``broken`` makes ``nbreader/app.py`` raise at import, as a release that
    never starts does.
    """
    shutil.copytree(FIRMWARE, folder, ignore=shutil.ignore_patterns(".*", "*.toml"))
    init = folder / "nbreader" / "__init__.py"
    text = init.read_text()
    assert f'FW_VERSION = "{OLD_VERSION}"' in text
    init.write_text(text.replace(OLD_VERSION, version))
    if broken:
        app = folder / "nbreader" / "app.py"
        app.write_text('raise RuntimeError("this firmware never starts")\n')
    return folder


def write_bundle(folder: Path, version: str) -> Path:
    """Write a reader bundle (format 1) with the firmware of ``version``."""
    source = write_firmware(folder.parent / "bundle-source", version)
    (folder / "lib").mkdir(parents=True)
    shutil.copy(source / "main.py", folder / "main.py")
    shutil.copytree(source / "nbreader", folder / "lib" / "nbreader")
    files = {}
    for path in sorted(folder.rglob("*.py")):
        data = path.read_bytes()
        files[path.relative_to(folder).as_posix()] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    manifest = {
        "format": 1,
        "firmware_version": version,
        "built_at": 1780000000,
        "index": "test",
        "packages": {},
        "micropython_image": None,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class ReaderStatus:
    """The reader's retained status messages, as the broker delivers them."""

    def __init__(self) -> None:
        self.seen: list[Status] = []
        self.changed = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        if incoming.payload:
            self.seen.append(json.loads(incoming.payload)["data"])
            self.changed.set()

    async def stop_when(
        self, condition: Callable[[Status], bool], stop: threading.Event
    ) -> Status | None:
        """Set ``stop`` once a status matches ``condition``; return that status."""
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    for status in self.seen:
                        if condition(status):
                            return status
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return None
        finally:
            stop.set()


@pytest.fixture
async def reader_status(make_client: Any) -> AsyncIterator[ReaderStatus]:
    watch = ReaderStatus()
    async with make_client("observer", "observer", "firmware", announce=False) as bus:
        bus.subscribe(STATUS_TOPIC, watch.on_message)
        await asyncio.sleep(0.2)
        yield watch


@pytest.fixture
async def box_bus(make_client: Any) -> AsyncIterator[Bus]:
    """A bus client with the box's own account, for the offer alone."""
    async with make_client(
        box_username("box-1"), "box", "box-1", announce=False
    ) as bus:
        yield bus


def board_files(
    credentials: SiteCredentials, mosquitto: Any, **case: Any
) -> dict[str, str]:
    """Return the reader's files: /reader.json, the loader and the case."""
    password = credentials.account("reader-exit-1").password
    files = reader_files("exit-1", "exit", (mosquitto.host, mosquitto.port, password))
    files["/main.py"] = (FIRMWARE / "main.py").read_text()
    files["/update_case.json"] = json.dumps(
        {"limit_ms": 30000, "max_boots": 8, "retry_ms": 600000} | case
    )
    return files


async def run_board(
    files: dict[str, str],
    stop: threading.Event,
    flash: Path,
    *,
    rewrite: Rewrite | None = None,
    power_cut: PowerCut | None = None,
) -> Results:
    return await asyncio.to_thread(
        run_relayed,
        "firmware_update",
        files,
        stop,
        timeout_s=120,
        flash=flash,
        rewrite=rewrite,
        power_cut=power_cut,
    )


def installed(status: Status) -> bool:
    update = status.get("update") or {}
    return status["fw"] == NEW_VERSION and update.get("state") == "installed"


def update_state(state: str) -> Callable[[Status], bool]:
    def matches(status: Status) -> bool:
        return (status.get("update") or {}).get("state") == state

    return matches


def flash_files(flash: Path) -> dict[str, bytes]:
    saved = json.loads(flash.read_text())
    return {path: base64.b64decode(data) for path, data in saved.items()}


async def test_update_from_box_switches_and_reports(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: Any,
    reader_status: ReaderStatus,
    tmp_path: Path,
) -> None:
    write_bundle(site_config.data_dir / "reader-bundle", NEW_VERSION)
    async with Box(
        site_config,
        SystemClock(TimeSource.NTP),
        credentials,
        mosquitto.host,
        mosquitto.port,
    ) as box:
        assert box.firmware_offer.release is not None
        assert box.firmware_offer.release.version == NEW_VERSION
        stop = threading.Event()
        files = board_files(credentials, mosquitto)
        board = asyncio.create_task(run_board(files, stop, tmp_path / "flash"))
        final = await reader_status.stop_when(installed, stop)
        results = await board
        offer_status = box.status()["reader_firmware"]
    watch = reader_status
    outcome = results["board"]
    boots = outcome["boots"]
    assert final is not None, (offer_status, outcome)
    assert [boot["version"] for boot in boots] == [OLD_VERSION, NEW_VERSION]
    assert boots[0]["folder"] == "/lib"
    assert boots[0]["outcome"] == "reset"
    assert boots[0]["reset"] == "reset"
    assert boots[0]["update"]["state"] == "switching"
    assert boots[1]["folder"] == "/fw/a"
    assert boots[1]["trial"] is True
    assert boots[1]["update"]["state"] == "installed"
    # Confirmed: no trial left in the boot state.
    assert outcome["state"]["active"] == "/fw/a"
    assert outcome["state"]["previous"] == "/lib"
    assert "trial" not in outcome["state"]
    assert final["update"]["error"] is None
    assert any(status["fw"] == OLD_VERSION for status in watch.seen)
    assert offer_status["version"] == NEW_VERSION
    assert offer_status["counts"]["chunks"] > 10
    staged = flash_files(tmp_path / "flash")
    expected = (FIRMWARE / "nbreader" / "scanner.py").read_bytes()
    assert staged["/fw/a/nbreader/scanner.py"] == expected


def _tamper(topic: str, payload: str) -> str:
    # Flip bytes inside chunk 1 of nbreader/app.py, keeping its length.
    if topic != CHUNK_TOPIC:
        return payload
    body = json.loads(payload)
    data = body["data"]
    if data.get("path") != "nbreader/app.py" or data.get("index") != 1:
        return payload
    chunk = bytearray(base64.b64decode(data["data"]))
    chunk[10:20] = b"#" * 10
    data["data"] = base64.b64encode(bytes(chunk)).decode()
    return json.dumps(body)


def _shorten(topic: str, payload: str) -> str:
    if topic != CHUNK_TOPIC:
        return payload
    body = json.loads(payload)
    data = body["data"]
    if data.get("path") != "nbreader/clock.py" or data.get("index") != 0:
        return payload
    data["data"] = base64.b64encode(base64.b64decode(data["data"])[:100]).decode()
    return json.dumps(body)


def _garble_manifest(topic: str, payload: str) -> str:
    return "{not json" if topic == MANIFEST_TOPIC else payload


@pytest.mark.parametrize(
    ("rewrite", "case", "expected"),
    [
        (_tamper, {}, "nbreader/app.py of firmware 1.1.0 has SHA-256"),
        (_shorten, {}, "chunk 0 of nbreader/clock.py has 100 bytes, expected"),
        (_garble_manifest, {}, "firmware manifest is not JSON"),
        (None, {"free_bytes": 50000}, "not enough space for firmware 1.1.0"),
    ],
    ids=["tampered-chunk", "short-chunk", "bad-manifest", "no-space"],
)
async def test_update_failure_keeps_running_firmware(
    box_bus: Bus,
    reader_status: ReaderStatus,
    credentials: SiteCredentials,
    mosquitto: Any,
    tmp_path: Path,
    rewrite: Rewrite | None,
    case: dict[str, Any],
    expected: str,
) -> None:
    offer = FirmwareOffer(box_bus, write_firmware(tmp_path / "new", NEW_VERSION))
    await offer.start()
    stop = threading.Event()
    files = board_files(credentials, mosquitto, **case)
    board = asyncio.create_task(
        run_board(files, stop, tmp_path / "flash", rewrite=rewrite)
    )
    final = await reader_status.stop_when(update_state("failed"), stop)
    results = await board
    outcome = results["board"]
    boots = outcome["boots"]
    assert final is not None, (outcome, results.output[-1500:])
    assert expected in final["update"]["error"]
    assert final["fw"] == OLD_VERSION
    assert expected in final["last_error"]
    assert len(boots) == 1
    assert boots[0]["version"] == OLD_VERSION
    assert boots[0]["outcome"] == "stopped"
    assert boots[0]["update"]["state"] == "failed"
    # No switch was written, so the next boot runs /lib again.
    assert outcome["state"] is None
    assert "/fw/boot.json" not in flash_files(tmp_path / "flash")


async def test_update_rolls_back_unhealthy_firmware(
    box_bus: Bus,
    reader_status: ReaderStatus,
    credentials: SiteCredentials,
    mosquitto: Any,
    tmp_path: Path,
) -> None:
    broken = write_firmware(tmp_path / "new", NEW_VERSION, broken=True)
    offer = FirmwareOffer(box_bus, broken)
    await offer.start()
    stop = threading.Event()
    files = board_files(credentials, mosquitto)
    board = asyncio.create_task(run_board(files, stop, tmp_path / "flash"))
    final = await reader_status.stop_when(update_state("rolled-back"), stop)
    results = await board
    outcome = results["board"]
    boots = outcome["boots"]
    assert final is not None, (outcome, results.output[-1500:])
    # Boot 1 switches; boots 2-4 are the three trial boots, each failing
    # before the firmware reports; boot 5 is back on 1.0.0.
    assert [boot["folder"] for boot in boots] == ["/lib", *["/fw/a"] * 3, "/lib"]
    assert [boot["trial"] for boot in boots] == [False, True, True, True, False]
    assert all("never starts" in boot["crash"] for boot in boots[1:4])
    assert boots[4]["version"] == OLD_VERSION
    assert boots[4]["outcome"] == "stopped"
    assert final["fw"] == OLD_VERSION
    assert final["update"]["version"] == NEW_VERSION
    assert "did not report healthy within 3 boots" in final["update"]["error"]
    assert outcome["state"]["active"] == "/lib"
    assert outcome["state"]["failed"] == NEW_VERSION
    assert boots[4]["update"]["state"] == "rolled-back"
    # One download, and none again of the version that failed.
    assert offer.release is not None
    chunks = sum(chunk_count(file.size) for file in offer.release.files)
    assert offer.counts["chunks"] == chunks


async def test_update_resumes_after_power_loss(
    box_bus: Bus,
    reader_status: ReaderStatus,
    credentials: SiteCredentials,
    mosquitto: Any,
    tmp_path: Path,
) -> None:
    offer = FirmwareOffer(box_bus, write_firmware(tmp_path / "new", NEW_VERSION))
    await offer.start()
    flash = tmp_path / "flash"
    files = board_files(credentials, mosquitto)
    requests: list[dict[str, Any]] = []

    def cut_after_twenty_chunks(request: dict[str, Any]) -> bool:
        if request["op"] == "publish" and request["topic"].endswith("/firmware/get"):
            requests.append(json.loads(request["payload"])["data"])
        return len(requests) > 20

    first = await run_board(
        files, threading.Event(), flash, power_cut=cut_after_twenty_chunks
    )
    # The power went off mid-download: no result, files staged, no switch.
    assert "board" not in first.records
    staged = flash_files(flash)
    assert "/fw/boot.json" not in staged
    assert "/fw/a/.offer.json" in staged
    staged_bytes = sum(
        len(data)
        for path, data in staged.items()
        if path.startswith("/fw/a/") and path != "/fw/a/.offer.json"
    )
    assert staged_bytes > 0

    stop = threading.Event()
    board = asyncio.create_task(run_board(files, stop, flash))
    final = await reader_status.stop_when(installed, stop)
    results = await board
    outcome = results["board"]
    boots = outcome["boots"]
    assert final is not None, (outcome, results.output[-1500:])
    assert boots[0]["folder"] == "/lib"
    assert boots[0]["version"] == OLD_VERSION
    assert boots[0]["resumed_bytes"] > 0
    assert boots[0]["resumed_bytes"] <= staged_bytes
    assert boots[1]["version"] == NEW_VERSION
    assert outcome["state"]["active"] == "/fw/a"
    for path in ("main.py", "nbreader/app.py", "nbreader/update.py"):
        expected = (tmp_path / "new" / path).read_bytes()
        assert flash_files(flash)[f"/fw/a/{path}"] == expected


async def test_reader_cannot_publish_firmware_offer(
    box_bus: Bus, make_client: Any, tmp_path: Path
) -> None:
    offer = FirmwareOffer(box_bus, write_firmware(tmp_path / "new", NEW_VERSION))
    await offer.start()
    received: list[tuple[str, bytes]] = []

    async def record(incoming: Incoming) -> None:
        received.append((incoming.topic, incoming.payload))

    box_bus.subscribe(MANIFEST_TOPIC, record)
    box_bus.subscribe("nightbox/test/reader/+/firmware/chunk", record)
    await asyncio.sleep(0.3)
    received.clear()
    forged = b'{"v":1,"id":"x","ts":0,"src":"box/box-1","data":{"version":"9.9.9"}}'
    async with make_client(
        "reader-exit-1", "reader", "exit-1", announce=False
    ) as reader:
        await reader.publish(MANIFEST_TOPIC, forged, retain=True)
        await reader.publish(CHUNK_TOPIC, forged)
        await reader.publish("nightbox/test/reader/exit-2/firmware/chunk", forged)
        await reader.publish("nightbox/test/reader/exit-2/firmware/get", forged)
    await asyncio.sleep(0.5)
    assert received == []
    assert offer.counts["bad-request"] == 0
    # The retained manifest is still the box's.
    manifests: list[bytes] = []
    arrived = asyncio.Event()

    async def keep(incoming: Incoming) -> None:
        manifests.append(incoming.payload)
        arrived.set()

    async with make_client("observer", "observer", "check", announce=False) as check:
        check.subscribe(MANIFEST_TOPIC, keep)
        await asyncio.wait_for(arrived.wait(), 5)
    assert json.loads(manifests[0])["data"]["version"] == NEW_VERSION
