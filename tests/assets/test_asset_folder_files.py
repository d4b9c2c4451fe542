"""Special files in a USB folder: links, FIFOs, devices and huge manifests.

The box reads ``manifest.json`` only when it is a regular file inside the
folder, and at most 4 MiB + 1 byte of it. A link, a FIFO or a device is
rejected without being read, so a folder can neither stall the box nor
make it read files elsewhere. A start with such a folder counts and logs
the rejection and runs on; ``nightbox assets import`` exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from asset_folder import Packed, packed_folder, write_site_file
from asset_site import files_under, open_cache, sha, table_rows, trusted
from conftest import make_site_config

from appliance.assets.cache import AssetCache
from appliance.assets.config import AssetsConfig
from appliance.assets.manifest import ManifestRejected
from appliance.clock import ManualClock
from appliance.commerce.config import CommerceConfig, Item
from appliance.config import SiteConfig
from appliance.remote.config import FleetConfig
from appliance.remote.document_types import MAX_BUNDLE_BYTES
from appliance.runtime import Box
from appliance.store import Store

# A manifest read to its end would take far longer than this.
IMPORT_TIMEOUT_S = 20.0


@pytest.fixture
def packed(tmp_path: Path) -> Packed:
    return packed_folder(tmp_path / "usb", key_dir=tmp_path)


@pytest.fixture
def opened(tmp_path: Path, packed: Packed) -> Iterator[tuple[AssetCache, Store]]:
    # `nightbox assets pack` signed the folder just now.
    cache, store = open_cache(
        tmp_path / "box", packed.key, clock=ManualClock(time.time())
    )
    cache.blobs.prepare()
    yield cache, store
    store.close()


def _read_bytes_so_far() -> int:
    """Return the bytes this process has read with read() calls, from procfs."""
    for line in Path("/proc/self/io").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "rchar":
            return int(value)
    raise AssertionError("/proc/self/io has no rchar line")


def _release_fifo(fifo: Path) -> None:
    """Open a FIFO for writing and close it, so a blocked reader sees its end."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@contextlib.contextmanager
def _fifo(path: Path) -> Iterator[Path]:
    """Make a FIFO at ``path`` that no one writes.

    A reader that blocks on it is released after IMPORT_TIMEOUT_S, so a
    failing test ends instead of waiting forever.
    """
    os.mkfifo(path)
    releaser = threading.Timer(IMPORT_TIMEOUT_S + 5, _release_fifo, (path,))
    releaser.start()
    try:
        yield path
    finally:
        releaser.cancel()
        _release_fifo(path)


async def _import_with_timeout(cache: AssetCache, folder: Path) -> None:
    await asyncio.wait_for(cache.import_folder(folder), IMPORT_TIMEOUT_S)


def _assert_rejected(
    cache: AssetCache,
    store: Store,
    folder: Path,
    reason: str,
    words: str,
) -> None:
    before = table_rows(store)

    with pytest.raises(ManifestRejected) as caught:
        asyncio.run(_import_with_timeout(cache, folder))

    assert caught.value.reason == reason
    assert words in caught.value.message
    assert table_rows(store) == before
    assert cache.rejected[f"manifest-{reason}"] == 1
    assert list(files_under(cache.blobs.blobs_dir)) == []


def test_linked_manifest_not_followed(
    tmp_path: Path, packed: Packed, opened: tuple[AssetCache, Store]
) -> None:
    cache, store = opened
    manifest = packed.folder / "manifest.json"
    elsewhere = tmp_path / "elsewhere.json"
    manifest.rename(elsewhere)
    manifest.symlink_to(elsewhere)

    _assert_rejected(cache, store, packed.folder, "missing", "symbolic link")


def test_fifo_manifest_rejected_without_waiting(
    packed: Packed, opened: tuple[AssetCache, Store]
) -> None:
    cache, store = opened
    manifest = packed.folder / "manifest.json"
    manifest.unlink()

    with _fifo(manifest):
        _assert_rejected(cache, store, packed.folder, "missing", "not a regular file")


def test_directory_manifest_rejected(
    packed: Packed, opened: tuple[AssetCache, Store]
) -> None:
    cache, store = opened
    manifest = packed.folder / "manifest.json"
    manifest.unlink()
    manifest.mkdir()

    _assert_rejected(cache, store, packed.folder, "missing", "not a regular file")


def test_huge_manifest_read_only_past_limit(
    packed: Packed, opened: tuple[AssetCache, Store]
) -> None:
    cache, store = opened
    manifest = packed.folder / "manifest.json"
    manifest.unlink()
    with open(manifest, "wb") as sparse:
        sparse.truncate(256 * 1024 * 1024)
    read_before = _read_bytes_so_far()

    _assert_rejected(cache, store, packed.folder, "too-large", "4 MiB")

    assert _read_bytes_so_far() - read_before <= 2 * (MAX_BUNDLE_BYTES + 1)


def test_linked_blob_file_not_read(
    tmp_path: Path, packed: Packed, opened: tuple[AssetCache, Store]
) -> None:
    cache, _store = opened
    poster = packed.folder / "tee-poster.png"
    outside = tmp_path / "outside.png"
    poster.rename(outside)
    poster.symlink_to(outside)

    result = asyncio.run(cache.import_folder(packed.folder))

    assert result.stored == [sha(packed.model)]
    assert [entry.sha256 for entry in result.missing] == [sha(packed.poster)]
    assert not cache.blobs.path(sha(packed.poster)).exists()


def test_fifo_blob_file_skipped(
    packed: Packed, opened: tuple[AssetCache, Store]
) -> None:
    cache, _store = opened

    with _fifo(packed.folder / "models" / "pipe.glb"):
        result = asyncio.run(
            asyncio.wait_for(cache.import_folder(packed.folder), IMPORT_TIMEOUT_S)
        )

    assert sorted(result.stored) == sorted([sha(packed.model), sha(packed.poster)])


def _limit_memory() -> None:
    # A manifest read without a limit then fails fast with MemoryError, not
    # by exhausting the test machine.
    limit = 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_import(folder: Path, site_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "assets",
            "import",
            str(folder),
            "--config",
            str(site_file),
        ],
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S * 3,
        preexec_fn=_limit_memory,
        check=False,
    )


@pytest.mark.parametrize("special", ["fifo", "dev-zero", "dev-null"])
def test_import_command_rejects_special_manifest(
    tmp_path: Path, packed: Packed, special: str
) -> None:
    site_file = write_site_file(tmp_path)
    manifest = packed.folder / "manifest.json"
    manifest.unlink()

    if special == "fifo":
        with _fifo(manifest):
            completed = _run_import(packed.folder, site_file)
    else:
        manifest.symlink_to(f"/dev/{special.removeprefix('dev-')}")
        completed = _run_import(packed.folder, site_file)

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "rejected (missing)" in completed.stderr
    assert "nothing was stored" in completed.stderr


class TestPreloadOfLinkedManifest:
    """A box whose preload folder's manifest is a link to a huge sparse file."""

    @pytest.fixture
    def packed(self, tmp_path: Path) -> Packed:
        packed = packed_folder(tmp_path / "usb")
        manifest = packed.folder / "manifest.json"
        manifest.unlink()
        huge = tmp_path / "huge.bin"
        with open(huge, "wb") as sparse:
            sparse.truncate(64 * 1024 * 1024)
        manifest.symlink_to(huge)
        return packed

    @pytest.fixture
    def site_config(self, tmp_path: Path, packed: Packed) -> SiteConfig:
        return make_site_config(
            tmp_path / "box",
            fleet=FleetConfig(operator_keys=trusted(packed.key)),
            assets=AssetsConfig(preload_dir=packed.folder),
            commerce=CommerceConfig(items=(Item("tee", "Night tee", 2500),)),
        )

    async def test_box_starts_and_counts_rejection(self, box: Box) -> None:
        status = box.status()["assets"]

        assert status["manifest_version"] is None
        assert status["blobs"] == 0
        assert status["rejected"] == {"manifest-missing": 1}


class TestPreloadOfFifoManifest:
    """A box whose preload folder's manifest is a FIFO that no process writes."""

    @pytest.fixture
    def packed(self, tmp_path: Path) -> Iterator[Packed]:
        packed = packed_folder(tmp_path / "usb")
        manifest = packed.folder / "manifest.json"
        manifest.unlink()
        with _fifo(manifest):
            yield packed

    @pytest.fixture
    def site_config(self, tmp_path: Path, packed: Packed) -> SiteConfig:
        return make_site_config(
            tmp_path / "box",
            fleet=FleetConfig(operator_keys=trusted(packed.key)),
            assets=AssetsConfig(preload_dir=packed.folder),
        )

    async def test_box_starts_and_counts_rejection(self, box: Box) -> None:
        status = box.status()["assets"]

        assert status["manifest_version"] is None
        assert status["rejected"] == {"manifest-missing": 1}
