"""The box's reader firmware offer: the release read from a folder, and chunks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.bus.client import Bus, Incoming
from appliance.config import SiteConfig
from appliance.readers.firmware_offer import (
    CHUNK_BYTES,
    MAX_FILE_BYTES,
    FirmwareOffer,
    FirmwareOfferError,
    chunk_count,
    find_firmware_source,
    load_release,
    manifest_topic,
)
from provisioning.site_access import box_username

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def copy_firmware(folder: Path) -> Path:
    shutil.copytree(FIRMWARE, folder, ignore=shutil.ignore_patterns(".*", "*.toml"))
    return folder


def test_release_lists_main_and_package() -> None:
    release = load_release(FIRMWARE)
    paths = [file.path for file in release.files]
    assert paths[0] == "main.py"
    assert "nbreader/__init__.py" in paths
    assert "nbreader/update.py" in paths
    assert all(path == "main.py" or path.startswith("nbreader/") for path in paths)
    assert release.version == "1.0.0"


def test_release_hashes_match_files() -> None:
    release = load_release(FIRMWARE)
    for file in release.files:
        data = (FIRMWARE / file.path).read_bytes()
        assert file.data == data
        assert file.size == len(data)
        assert file.sha256 == hashlib.sha256(data).hexdigest()


def test_manifest_data_lists_every_file() -> None:
    release = load_release(FIRMWARE)
    data = release.manifest_data()
    assert data["version"] == "1.0.0"
    assert data["chunk_bytes"] == CHUNK_BYTES
    assert len(data["files"]) == len(release.files)
    assert data["files"][0] == {
        "path": "main.py",
        "size": release.files[0].size,
        "sha256": release.files[0].sha256,
    }


def test_release_skips_caches_and_other_files(tmp_path: Path) -> None:
    folder = copy_firmware(tmp_path / "fw")
    (folder / "nbreader" / "__pycache__").mkdir()
    (folder / "nbreader" / "__pycache__" / "app.py").write_text("x = 1\n")
    (folder / "nbreader" / "notes.txt").write_text("not firmware\n")
    paths = [file.path for file in load_release(folder).files]
    assert "nbreader/notes.txt" not in paths
    assert not any("__pycache__" in path for path in paths)


def test_release_from_reader_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "lib").mkdir(parents=True)
    shutil.copy(FIRMWARE / "main.py", bundle / "main.py")
    shutil.copytree(
        FIRMWARE / "nbreader",
        bundle / "lib" / "nbreader",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (bundle / "lib" / "umqtt").mkdir()
    (bundle / "lib" / "umqtt" / "simple.py").write_text("# umqtt\n")
    files = {
        path.relative_to(bundle).as_posix(): {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size,
        }
        for path in bundle.rglob("*.py")
    }
    manifest = {
        "format": 1,
        "firmware_version": "1.0.0",
        "packages": {},
        "micropython_image": None,
        "files": files,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    release = load_release(bundle)
    paths = [file.path for file in release.files]
    assert "nbreader/app.py" in paths
    assert not any("umqtt" in path for path in paths)
    # A bundle file changed after it was built is not offered.
    (bundle / "lib" / "nbreader" / "app.py").write_text("changed\n")
    with pytest.raises(FirmwareOfferError, match=r"lib/nbreader/app\.py has 8 bytes"):
        load_release(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda folder: shutil.rmtree(folder / "nbreader"), "no nbreader/__init__.py"),
        (lambda folder: (folder / "main.py").unlink(), "main.py is missing"),
        (
            lambda folder: (folder / "nbreader" / "__init__.py").write_text("x = 1\n"),
            'no line like FW_VERSION = "1.0.0"',
        ),
        (
            lambda folder: (folder / "nbreader" / "big.py").write_bytes(
                b"#" * (MAX_FILE_BYTES + 1)
            ),
            f"at most {MAX_FILE_BYTES} per file",
        ),
        (
            lambda folder: (folder / "nbreader" / "bad name.py").write_text("x = 1\n"),
            "which readers reject",
        ),
        (
            lambda folder: (folder / "nbreader" / "link.py").symlink_to(
                folder / "main.py"
            ),
            "is not a regular file",
        ),
        (
            lambda folder: (folder / "nbreader" / "sub").symlink_to(
                folder, target_is_directory=True
            ),
            "sub is not a regular file",
        ),
    ],
    ids=[
        "no-package",
        "no-main",
        "no-version",
        "too-big",
        "bad-path",
        "symlink",
        "folder-symlink",
    ],
)
def test_release_rejects_bad_folder(tmp_path: Path, change: Any, message: str) -> None:
    folder = copy_firmware(tmp_path / "fw")
    change(folder)
    with pytest.raises(FirmwareOfferError, match=message):
        load_release(folder)


def test_undecodable_name_error_encodable(tmp_path: Path) -> None:
    folder = copy_firmware(tmp_path / "fw")
    name = os.fsdecode(b"x\xff.py")
    (folder / "nbreader" / name).write_text("x = 1\n")

    with pytest.raises(FirmwareOfferError) as rejected:
        load_release(folder)

    message = str(rejected.value)
    assert "x\\xff.py" in message
    # The box's status carries the message; its JSON encoder must take it.
    assert orjson.loads(orjson.dumps({"error": message})) == {"error": message}


def test_release_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FirmwareOfferError, match="does not exist"):
        load_release(tmp_path / "missing")


def test_chunk_count_rounds_up() -> None:
    assert chunk_count(0) == 0
    assert chunk_count(1) == 1
    assert chunk_count(CHUNK_BYTES) == 1
    assert chunk_count(CHUNK_BYTES + 1) == 2


def test_source_is_bundle_without_slot(tmp_path: Path, site_config: SiteConfig) -> None:
    assert find_firmware_source(site_config) is None
    bundle = site_config.data_dir / "reader-bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    assert find_firmware_source(site_config) == bundle


class Replies:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def on_message(self, incoming: Incoming) -> None:
        self.received.append(json.loads(incoming.payload)["data"])
        self.arrived.set()

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while not self.received:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received.pop(0)


@pytest.fixture
async def box_bus(make_client: Any) -> AsyncIterator[Bus]:
    async with make_client(
        box_username("box-1"), "box", "box-1", announce=False
    ) as bus:
        yield bus


async def _request(reader: Bus, **data: Any) -> None:
    await reader.publish_json(
        "nightbox/test/reader/exit-1/firmware/get", {"data": data}
    )


async def test_offer_serves_chunks(box_bus: Bus, make_client: Any) -> None:
    offer = FirmwareOffer(box_bus, FIRMWARE, chunk_bytes=1000)
    await offer.start()
    assert offer.release is not None
    app = offer.release.file("nbreader/app.py")
    assert app is not None
    replies = Replies()
    async with make_client("reader-exit-1", "reader", "exit-1") as reader:
        reader.subscribe(
            "nightbox/test/reader/exit-1/firmware/chunk", replies.on_message
        )
        manifests = Replies()
        reader.subscribe(manifest_topic("test"), manifests.on_message)
        manifest = await manifests.next()
        assert manifest["version"] == "1.0.0"
        assert manifest["chunk_bytes"] == 1000
        await asyncio.sleep(0.2)
        last = chunk_count(app.size, 1000) - 1
        await _request(reader, version="1.0.0", path="nbreader/app.py", index=last)
        reply = await replies.next()
        assert reply["index"] == last
        assert base64.b64decode(reply["data"]) == app.data[last * 1000 :]
        await _request(reader, version="1.0.0", path="nbreader/app.py", index=last + 1)
        assert (await replies.next())["error"] == "bad-index"
        await _request(reader, version="0.9.0", path="nbreader/app.py", index=0)
        assert (await replies.next())["error"] == "not-offered"
        await _request(reader, version="1.0.0", path="nbreader/none.py", index=0)
        assert (await replies.next())["error"] == "unknown-file"
        await reader.publish(
            "nightbox/test/reader/exit-1/firmware/get", b'{"v": 1, "data": {}}'
        )
        await asyncio.sleep(0.3)
    assert offer.counts["chunks"] == 1
    assert offer.counts["bad-index"] == 1
    assert offer.counts["not-offered"] == 1
    assert offer.counts["unknown-file"] == 1
    assert offer.counts["bad-request"] == 1


# Requests the box cannot read: no reply, a bad-request count, and the offer
# goes on serving.
UNREADABLE_REQUESTS = [
    b"",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'{"v": 1}',
    b'{"v": 1, "data": []}',
    b'{"v": 1, "data": {"version": "1.0.0", "path": "main.py", "index": "0"}}',
    b'{"v": 1, "data": {"version": "1.0.0", "path": "main.py", "index": true}}',
    b'{"v": 1, "data": {"version": "1.0.0", "path": "main.py", "index": 1.5}}',
    b'{"v": 1, "data": {"version": null, "path": "main.py", "index": 0}}',
    b'{"v": 1, "data": {"version": "1.0.0", "path": 7, "index": 0}}',
    b'{"v": 1, "data": {"version": "1.0.0", "path": "main.py", "index": 1e999}}',
    b'{"v": 1, "data": {"version": "1.0.0", "path": "main.py", "index": '
    + b"9" * 40
    + b"}}",
]
# Readable requests for chunks that do not exist: an error reply each.
UNSERVED_REQUESTS = [
    ({"version": "1.0.0", "path": "main.py", "index": -1}, "bad-index"),
    ({"version": "1.0.0", "path": "main.py", "index": 2**62}, "bad-index"),
    ({"version": "1.0.0", "path": "x" * 10_000, "index": 0}, "unknown-file"),
    ({"version": "9" * 10_000, "path": "main.py", "index": 0}, "not-offered"),
]


async def test_malformed_requests_rejected(box_bus: Bus, make_client: Any) -> None:
    offer = FirmwareOffer(box_bus, FIRMWARE)
    await offer.start()
    replies = Replies()
    async with make_client("reader-exit-1", "reader", "exit-1") as reader:
        reader.subscribe(
            "nightbox/test/reader/exit-1/firmware/chunk", replies.on_message
        )
        await asyncio.sleep(0.2)
        for payload in UNREADABLE_REQUESTS:
            await reader.publish("nightbox/test/reader/exit-1/firmware/get", payload)
        for data, _ in UNSERVED_REQUESTS:
            await _request(reader, **data)
        for _, reason in UNSERVED_REQUESTS:
            assert (await replies.next())["error"] == reason
        await _request(reader, version="1.0.0", path="main.py", index=0)
        served = await replies.next()
    assert (
        base64.b64decode(served["data"])
        == (FIRMWARE / "main.py").read_bytes()[:CHUNK_BYTES]
    )
    assert offer.counts["bad-request"] == len(UNREADABLE_REQUESTS)
    assert offer.counts["chunks"] == 1


async def test_offer_without_firmware_clears_manifest(
    box_bus: Bus, make_client: Any, tmp_path: Path
) -> None:
    first = FirmwareOffer(box_bus, FIRMWARE)
    await first.start()
    broken = tmp_path / "broken"
    broken.mkdir()
    second = FirmwareOffer(box_bus, broken)
    await second.start()
    assert second.release is None
    assert second.error is not None
    assert "does not exist" not in second.error
    assert second.status()["counts"] == {"invalid-folder": 1}
    assert second.manifest_payload() == b""
    await asyncio.sleep(0.3)
    seen = Replies()
    async with make_client("observer", "observer", "check", announce=False) as check:
        check.subscribe(manifest_topic("test"), seen.on_message)
        await asyncio.sleep(0.5)
    # The empty retained message removed the first offer's manifest.
    assert seen.received == []


@pytest.mark.parametrize(
    ("update", "cell"),
    [
        (None, "-"),
        (
            {"state": "downloading", "version": "1.1.0", "done": 50, "total": 200},
            "1.1.0:25%",
        ),
        (
            {"state": "failed", "version": "1.1.0", "done": 0, "total": 200},
            "1.1.0:failed",
        ),
        ({"state": "rolled-back", "version": "1.1.0"}, "1.1.0:rolled-back"),
        ({"state": "installed", "version": "1.1.0"}, "1.1.0:installed"),
        ("installed", "?"),
    ],
)
def test_reader_list_update_cell(update: object, cell: str) -> None:
    from appliance.cli_reader import _update

    assert _update(update) == cell


def test_source_prefers_running_slot(tmp_path: Path, site_config: SiteConfig) -> None:
    import dataclasses

    update = getattr(site_config, "update", None)
    if update is None:
        pytest.fail("SiteConfig has no [update] table with app_dir")
    app_dir = tmp_path / "app"
    slot_firmware = copy_firmware(app_dir / "slot-b" / "firmware")
    (app_dir / "current").symlink_to("slot-b")
    bundle = site_config.data_dir / "reader-bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    config = dataclasses.replace(
        site_config, update=dataclasses.replace(update, app_dir=app_dir)
    )
    source = find_firmware_source(config)
    assert source == app_dir / "current" / "firmware"
    assert source is not None
    assert source.resolve() == slot_firmware.resolve()
    assert load_release(source).version == "1.0.0"
