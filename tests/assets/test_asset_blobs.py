"""Blob files: verified before they are kept, and again at every start.

A blob whose hash or size differs from its manifest entry leaves no file
and no row. A blob that changed on disk between two starts is removed,
counted, and reported missing, so the box fetches it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from asset_site import (  # noqa: F401 - registers the fixture
    blob,
    entry,
    files_under,
    key_fixture,
    open_cache,
    sha,
    signed_manifest,
    started_cache,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets._blobs import BlobRejected, BlobStore
from appliance.assets.cache import AssetCache
from appliance.store import Store

TEE = blob("tee", 300_000)
CAP = blob("cap", 5_000)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "assets")
    store.prepare()
    return store


def _chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_blob_written_under_its_hash(blobs: BlobStore) -> None:
    path = blobs.write(sha(TEE), len(TEE), _chunks(TEE))

    assert path == blobs.blobs_dir / sha(TEE)[:2] / sha(TEE)
    assert path.read_bytes() == TEE
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(blobs.temporary_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (blob("other", len(TEE)), "hash-mismatch", "arrived with SHA-256"),
        (TEE[:-1], "size-mismatch", f"has {len(TEE) - 1} bytes, not the {len(TEE)}"),
        (TEE + b"x", "size-mismatch", f"more bytes than the {len(TEE)} bytes"),
    ],
)
def test_mismatched_blob_rejected_nothing_kept(
    blobs: BlobStore, data: bytes, reason: str, words: str
) -> None:
    with pytest.raises(BlobRejected) as caught:
        blobs.write(sha(TEE), len(TEE), _chunks(data))

    assert caught.value.reason == reason
    assert words in caught.value.message
    # Only the hash prefix appears in the message.
    assert sha(TEE)[:12] in caught.value.message
    assert sha(TEE) not in caught.value.message
    assert list(files_under(blobs.root)) == []


def test_long_source_read_only_past_limit(blobs: BlobStore) -> None:
    pulled: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            pulled.append(1)
            yield b"\0" * 1000

    with pytest.raises(BlobRejected):
        blobs.write(sha(CAP), 5000, endless())

    assert len(pulled) == 6


async def test_cache_rejects_wrong_chunks(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key) as (cache, store):
        cache.accept_manifest(signed_manifest(key, [entry(TEE, "tee")]))
        part = cache.blobs.incoming_dir / "wrong.part"
        part.write_bytes(blob("forged", len(TEE)))

        with pytest.raises(BlobRejected):
            await cache.adopt_part(part, sha(TEE), len(TEE))

        assert not part.exists()
        assert store.query("SELECT * FROM asset_blobs") == []
        assert list(files_under(cache.blobs.blobs_dir)) == []
        status = cache.status()
        assert status["rejected"] == {"hash-mismatch": 1}
        assert status["missing"] == 1
        assert cache.entries_for_item("tee") == []


async def _stored_cache(
    data_dir: Path, key: Ed25519PrivateKey
) -> tuple[AssetCache, Store]:
    cache, store = open_cache(data_dir, key)
    await cache.start()
    cache.accept_manifest(
        signed_manifest(key, [entry(TEE, "tee"), entry(CAP, "cap", "Cap photo")])
    )
    for data in (TEE, CAP):
        part = cache.blobs.incoming_dir / "x.part"
        part.write_bytes(data)
        await cache.adopt_part(part, sha(data), len(data))
    return cache, store


async def _stopped_cache(data_dir: Path, key: Ed25519PrivateKey) -> AssetCache:
    """Store both blobs, then stop the cache and close its store."""
    cache, store = await _stored_cache(data_dir, key)
    await cache.stop()
    store.close()
    return cache


async def test_start_removes_blob_changed_on_disk(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache = await _stopped_cache(tmp_path / "box", key)
    changed = cache.blobs.path(sha(TEE))
    data = bytearray(changed.read_bytes())
    data[1000] ^= 0xFF
    changed.write_bytes(bytes(data))

    async with started_cache(tmp_path / "box", key) as (cache, store):
        assert not changed.exists()
        assert cache.blobs.path(sha(CAP)).exists()
        rows = store.query("SELECT sha256 FROM asset_blobs")
        assert rows == [(sha(CAP),)]
        status = cache.status()
        assert status["rejected"] == {"changed-on-disk": 1}
        assert status["missing"] == 1
        assert status["blobs"] == 1
        assert cache.entries_for_item("tee") == []
        assert [e.sha256 for e in cache.missing()] == [sha(TEE)]


async def test_start_forgets_blob_deleted_from_disk(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache = await _stopped_cache(tmp_path / "box", key)
    cache.blobs.path(sha(CAP)).unlink()

    async with started_cache(tmp_path / "box", key) as (cache, store):
        assert store.query("SELECT sha256 FROM asset_blobs") == [(sha(TEE),)]
        assert cache.status()["rejected"] == {"missing-on-disk": 1}


async def test_start_adopts_verified_file_without_row(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    # A crash after the rename and before the row leaves such a file.
    cache, store = await _stored_cache(tmp_path / "box", key)
    await cache.stop()
    with store.transaction() as transaction:
        transaction.execute("DELETE FROM asset_blobs WHERE sha256 = ?", (sha(CAP),))
    store.close()

    async with started_cache(tmp_path / "box", key) as (cache, store):
        assert {row[0] for row in store.query("SELECT sha256 FROM asset_blobs")} == {
            sha(TEE),
            sha(CAP),
        }
        assert cache.status()["rejected"] == {}


async def test_start_removes_stray_and_temporary_files(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache = await _stopped_cache(tmp_path / "box", key)
    stray = cache.blobs.blobs_dir / "ab" / "not-a-hash"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"junk")
    unlisted = blob("unlisted", 100)
    foreign = cache.blobs.path(sha(unlisted))
    foreign.parent.mkdir(exist_ok=True)
    foreign.write_bytes(unlisted)
    leftover = cache.blobs.temporary_dir / "0123.part"
    leftover.write_bytes(b"half")

    async with started_cache(tmp_path / "box", key) as (cache, _):
        assert not stray.exists()
        assert not foreign.exists()
        assert not leftover.exists()
        assert cache.status()["blobs"] == 2


async def test_new_manifest_drops_unlisted_blobs(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache, store = await _stored_cache(tmp_path / "box", key)
    try:
        cache.accept_manifest(signed_manifest(key, [entry(CAP, "cap")], version=2))

        assert not cache.blobs.path(sha(TEE)).exists()
        assert store.query("SELECT sha256 FROM asset_blobs") == [(sha(CAP),)]
        assert cache.status()["evicted"] == 1
    finally:
        await cache.stop()
        store.close()


def _victim(tmp_path: Path) -> Path:
    """Make a folder outside the cache with files in nested folders."""
    victim = tmp_path / "victim"
    (victim / "sub" / "deeper").mkdir(parents=True)
    (victim / "sub" / "deeper" / "file.txt").write_text("x")
    (victim / "top.txt").write_text("y")
    return victim


def _victim_files(victim: Path) -> set[str]:
    return {str(path.relative_to(victim)) for path in files_under(victim)}


async def test_start_removes_links_not_their_targets(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache = await _stopped_cache(tmp_path / "box", key)
    victim = _victim(tmp_path)
    folder_link = cache.blobs.blobs_dir / "zz"
    folder_link.symlink_to(victim)
    # A link named like a blob, in its right folder, to a file elsewhere.
    outside = tmp_path / "outside.bin"
    outside.write_bytes(CAP)
    blob_link = cache.blobs.path(sha(CAP))
    blob_link.unlink()
    blob_link.symlink_to(outside)

    async with started_cache(tmp_path / "box", key) as (cache, _):
        assert _victim_files(victim) == {"sub/deeper/file.txt", "top.txt"}
        assert outside.read_bytes() == CAP
        assert not folder_link.is_symlink()
        assert not blob_link.is_symlink()
        status = cache.status()
        assert status["rejected"] == {"symbolic-link": 2, "missing-on-disk": 1}
        assert status["blobs"] == 1
        assert [e.sha256 for e in cache.missing()] == [sha(CAP)]


async def test_start_replaces_linked_blobs_folder(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache = await _stopped_cache(tmp_path / "box", key)
    victim = _victim(tmp_path)
    blobs_dir = cache.blobs.blobs_dir
    moved = tmp_path / "moved-blobs"
    blobs_dir.rename(moved)
    blobs_dir.symlink_to(victim)

    async with started_cache(tmp_path / "box", key) as (cache, _):
        assert _victim_files(victim) == {"sub/deeper/file.txt", "top.txt"}
        assert not blobs_dir.is_symlink()
        assert blobs_dir.is_dir()
        status = cache.status()
        assert status["rejected"]["symbolic-link"] == 1
        assert status["blobs"] == 0
        assert status["missing"] == 2


async def test_linked_temporary_folder_not_emptied(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    cache, store = open_cache(tmp_path / "box", key)
    victim = _victim(tmp_path)
    cache.blobs.root.mkdir(parents=True)
    cache.blobs.temporary_dir.symlink_to(victim)
    try:
        await cache.start()

        assert _victim_files(victim) == {"sub/deeper/file.txt", "top.txt"}
        assert not cache.blobs.temporary_dir.is_symlink()
        assert cache.status()["rejected"] == {"symbolic-link": 1}
    finally:
        await cache.stop()
        store.close()
