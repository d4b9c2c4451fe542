"""Blobs, signed manifests, USB folders and caches for the asset cache tests.

Blobs are deterministic pseudo-random bytes, so a test can make two
different blobs of one size. Manifests are signed with a fresh operator
key, as `nightbox assets pack` signs them. Test modules import
``key_fixture`` (``# noqa: F401``) to get that key as the fixture ``key``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.assets.cache import AssetCache
from appliance.assets.config import AssetsConfig
from appliance.clock import Clock, ManualClock
from appliance.signed_documents import key_id, sign_document
from appliance.store import Store

# 2027-01-15 08:00:00 UTC.
NOW = 1_800_000_000.0
SITE = "test"
MIB = 1024 * 1024


@pytest.fixture(name="key")
def key_fixture() -> Ed25519PrivateKey:
    """A fresh operator key, which the test's caches trust."""
    return Ed25519PrivateKey.generate()


def blob(seed: str, size: int) -> bytes:
    """Return ``size`` deterministic bytes that differ for every ``seed``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    """Return the SHA-256 of ``data`` in hex."""
    return hashlib.sha256(data).hexdigest()


def entry(
    data: bytes, item: str, name: str = "Asset", media_type: str = "model/gltf-binary"
) -> dict[str, Any]:
    """Return the manifest entry of ``data``."""
    return {
        "sha256": sha(data),
        "size": len(data),
        "item": item,
        "name": name,
        "type": media_type,
    }


def trusted(*keys: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    """Return the operator keys of a box that trusts ``keys``."""
    return {key_id(key.public_key()): key.public_key() for key in keys}


def signed_manifest(
    key: Ed25519PrivateKey,
    entries: list[dict[str, Any]],
    *,
    version: int = 1,
    site: str = SITE,
    budget_bytes: int | None = None,
    issued_at: float = NOW,
    validity_s: float = 3600.0,
) -> bytes:
    """Return the bytes of a signed assets manifest."""
    body: dict[str, Any] = {"assets": entries}
    if budget_bytes is not None:
        body["budget_bytes"] = budget_bytes
    document = sign_document(
        key,
        kind="bundle",
        document_type="assets",
        site=site,
        body=body,
        issued_at=issued_at,
        validity_s=validity_s,
        version=version,
    )
    return orjson.dumps(document)


def write_folder(folder: Path, manifest: bytes, files: dict[str, bytes]) -> Path:
    """Write a USB folder: ``manifest.json`` and ``files`` by relative name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_bytes(manifest)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def write_public_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write the public half of ``key`` as PEM, as `nightbox fleet keygen` does."""
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def write_private_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write ``key`` as unencrypted PEM with mode 0600."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def open_cache(
    data_dir: Path,
    key: Ed25519PrivateKey,
    *,
    clock: Clock | None = None,
    budget_bytes: int = 64 * MIB,
    preload_dir: Path | None = None,
) -> tuple[AssetCache, Store]:
    """Open a cache in ``data_dir`` that trusts ``key``; the caller closes the store."""
    used_clock = clock if clock is not None else ManualClock(NOW)
    store = Store(data_dir / "nightbox.sqlite3", used_clock)
    cache = AssetCache(
        store,
        data_dir,
        AssetsConfig(budget_bytes=budget_bytes, preload_dir=preload_dir),
        used_clock,
        trusted(key),
        SITE,
    )
    return cache, store


@asynccontextmanager
async def started_cache(
    data_dir: Path,
    key: Ed25519PrivateKey,
    *,
    clock: Clock | None = None,
    budget_bytes: int = 64 * MIB,
    preload_dir: Path | None = None,
) -> AsyncIterator[tuple[AssetCache, Store]]:
    """Open a cache as :func:`open_cache` does and start it; stop it on exit."""
    cache, store = open_cache(
        data_dir, key, clock=clock, budget_bytes=budget_bytes, preload_dir=preload_dir
    )
    try:
        await cache.start()
        yield cache, store
    finally:
        await cache.stop()
        store.close()


def files_under(folder: Path) -> Iterator[Path]:
    """Yield every regular file under ``folder``."""
    return (path for path in folder.rglob("*") if path.is_file())


def table_rows(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Return the rows of every table that a manifest or blob changes."""
    tables = ("asset_manifests", "asset_blobs", "signed_nonces", "bundle_versions")
    rows = {t: store.query(f"SELECT * FROM {t} ORDER BY rowid") for t in tables}
    rows["outbox"] = store.query("SELECT type, body FROM outbox ORDER BY seq")
    return rows
