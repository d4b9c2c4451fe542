"""Signed asset manifests: accepted once, every tampered one rejected.

Each rejection must name the reason, change no table and keep no file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from asset_site import (  # noqa: F401 - registers the fixture
    NOW,
    SITE,
    blob,
    entry,
    key_fixture,
    open_cache,
    signed_manifest,
    table_rows,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.cache import AssetCache
from appliance.assets.manifest import ManifestRejected
from appliance.clock import ManualClock
from appliance.signed_documents import sign_document
from appliance.store import Store

TEE = blob("tee", 4000)
CAP = blob("cap", 3000)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def opened(
    tmp_path: Path, key: Ed25519PrivateKey, clock: ManualClock
) -> Iterator[tuple[AssetCache, Store]]:
    cache, store = open_cache(tmp_path / "box", key, clock=clock)
    cache.blobs.prepare()
    yield cache, store
    store.close()


def test_manifest_accepted_and_stored(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey
) -> None:
    cache, store = opened
    payload = signed_manifest(
        key, [entry(TEE, "tee", "Night tee"), entry(CAP, "cap")], version=4
    )

    manifest, applied = cache.accept_manifest(payload)

    assert applied is True
    assert manifest.version == 4
    assert [e.item for e in manifest.entries] == ["tee", "cap"]
    assert manifest.entries[0].name == "Night tee"
    assert manifest.entries[0].media_type == "model/gltf-binary"
    assert cache.manifest() == manifest
    assert store.query("SELECT version FROM asset_manifests") == [(4,)]
    events = store.query("SELECT type, body FROM outbox")
    assert [event_type for event_type, _body in events] == ["bundle_applied"]
    assert orjson.loads(events[0][1])["counts"] == {"assets": 2, "bytes": 7000}


def test_same_manifest_again_not_reapplied(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey
) -> None:
    cache, store = opened
    payload = signed_manifest(key, [entry(TEE, "tee")], version=2)
    cache.accept_manifest(payload)
    before = table_rows(store)

    manifest, applied = cache.accept_manifest(payload)

    assert applied is False
    assert manifest.version == 2
    assert table_rows(store) == before


def _tampered_body(key: Ed25519PrivateKey) -> bytes:
    document = orjson.loads(signed_manifest(key, [entry(TEE, "tee")]))
    document["body"]["assets"][0]["size"] += 1
    return orjson.dumps(document)


def _tampered_hash(key: Ed25519PrivateKey) -> bytes:
    document = orjson.loads(signed_manifest(key, [entry(TEE, "tee")]))
    document["body"]["assets"][0]["sha256"] = "0" * 64
    return orjson.dumps(document)


def _other_key(_key: Ed25519PrivateKey) -> bytes:
    return signed_manifest(Ed25519PrivateKey.generate(), [entry(TEE, "tee")])


def _stolen_key_id(key: Ed25519PrivateKey) -> bytes:
    # Another key's signature under the trusted key's id.
    document = orjson.loads(
        signed_manifest(Ed25519PrivateKey.generate(), [entry(TEE, "tee")])
    )
    document["key"] = orjson.loads(signed_manifest(key, []))["key"]
    return orjson.dumps(document)


def _wrong_site(key: Ed25519PrivateKey) -> bytes:
    return signed_manifest(key, [entry(TEE, "tee")], site="other")


def _expired(key: Ed25519PrivateKey) -> bytes:
    return signed_manifest(
        key, [entry(TEE, "tee")], issued_at=NOW - 7200, validity_s=3600
    )


def _not_yet_valid(key: Ed25519PrivateKey) -> bytes:
    return signed_manifest(key, [entry(TEE, "tee")], issued_at=NOW + 3600)


def _not_json(_key: Ed25519PrivateKey) -> bytes:
    return b"{not json"


def _other_type(key: Ed25519PrivateKey) -> bytes:
    members = sign_document(
        key,
        kind="bundle",
        document_type="members",
        site=SITE,
        body={"members": []},
        issued_at=NOW,
        validity_s=600,
        version=1,
    )
    return orjson.dumps(members)


def _invalid_body(key: Ed25519PrivateKey) -> bytes:
    return signed_manifest(key, [{**entry(TEE, "tee"), "type": "text/html"}])


def _too_large(_key: Ed25519PrivateKey) -> bytes:
    return b" " * (4 * 1024 * 1024 + 1)


@pytest.mark.parametrize(
    ("make", "reason", "words"),
    [
        (_tampered_body, "bad-signature", "signature does not match"),
        (_tampered_hash, "bad-signature", "signature does not match"),
        (_other_key, "unknown-key", "not one this box was provisioned with"),
        (_stolen_key_id, "bad-signature", "signature does not match"),
        (_wrong_site, "wrong-site", "for site 'other', not 'test'"),
        (_expired, "expired", "sign a new one"),
        (_not_yet_valid, "not-yet-valid", "check the clocks"),
        (_not_json, "malformed", "not valid JSON"),
        (_other_type, "wrong-type", "not an 'assets' manifest"),
        (_invalid_body, "invalid", "assets[0].type = 'text/html'"),
        (_too_large, "too-large", "4 MiB"),
    ],
)
def test_manifest_rejected_stores_nothing(
    opened: tuple[AssetCache, Store],
    key: Ed25519PrivateKey,
    make: object,
    reason: str,
    words: str,
) -> None:
    cache, store = opened
    before = table_rows(store)
    assert callable(make)

    with pytest.raises(ManifestRejected) as caught:
        cache.accept_manifest(make(key))

    assert caught.value.reason == reason
    assert words in caught.value.message
    assert table_rows(store) == before
    assert cache.manifest() is None
    assert cache.rejected[f"manifest-{reason}"] == 1


# A lower version is rejected, and so is the same version with another body.
@pytest.mark.parametrize("version", [4, 5])
def test_version_not_newer_rejected(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey, version: int
) -> None:
    cache, store = opened
    cache.accept_manifest(signed_manifest(key, [entry(TEE, "tee")], version=5))
    before = table_rows(store)

    with pytest.raises(ManifestRejected) as caught:
        cache.accept_manifest(
            signed_manifest(key, [entry(CAP, "cap")], version=version)
        )

    assert caught.value.reason == "old-version"
    assert (
        f"version {version} is not newer than the applied version 5"
        in caught.value.message
    )
    assert table_rows(store) == before
    manifest = cache.manifest()
    assert manifest is not None
    assert manifest.version == 5


def test_newer_version_replaces_manifest(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey
) -> None:
    cache, _store = opened
    cache.accept_manifest(signed_manifest(key, [entry(TEE, "tee")], version=1))

    cache.accept_manifest(signed_manifest(key, [entry(CAP, "cap")], version=2))

    manifest = cache.manifest()
    assert manifest is not None
    assert [e.item for e in manifest.entries] == ["cap"]


def test_replayed_nonce_rejected_at_new_version(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey
) -> None:
    # A document whose nonce was used is rejected even when its version is
    # newer, as the ledger of the box's bundles rejects it.
    cache, store = opened
    first = orjson.loads(signed_manifest(key, [entry(TEE, "tee")], version=1))
    cache.accept_manifest(orjson.dumps(first))
    with store.transaction() as transaction:
        transaction.execute("DELETE FROM asset_manifests")
    before = table_rows(store)

    with pytest.raises(ManifestRejected) as caught:
        cache.accept_manifest(orjson.dumps(first))

    assert caught.value.reason == "replayed"
    assert table_rows(store) == before


@pytest.mark.parametrize("budget", [1, 1024**2 - 1, 1024**4 + 1])
def test_budget_outside_config_range_rejected(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey, budget: int
) -> None:
    cache, _store = opened

    with pytest.raises(ManifestRejected) as caught:
        cache.accept_manifest(
            signed_manifest(key, [entry(TEE, "tee")], budget_bytes=budget)
        )

    assert caught.value.reason == "invalid"
    assert f"budget_bytes = {budget} is invalid" in caught.value.message
    assert "from 1048576 (1 MiB) to 1099511627776 (1 TiB)" in caught.value.message
    assert cache.manifest() is None


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            _expired,
            "the manifest expired at 2027-01-15T07:00:00Z (Unix time 1799996400); "
            "the box's clock reads 2027-01-15T08:00:00Z",
        ),
        (
            _not_yet_valid,
            "the manifest is valid from 2027-01-15T09:00:00Z (Unix time 1800003600); "
            "the box's clock reads 2027-01-15T08:00:00Z",
        ),
    ],
)
def test_validity_times_shown_in_utc(
    opened: tuple[AssetCache, Store], key: Ed25519PrivateKey, make: object, words: str
) -> None:
    cache, _store = opened
    assert callable(make)

    with pytest.raises(ManifestRejected) as caught:
        cache.accept_manifest(make(key))

    assert words in caught.value.message
