"""The size budget: pinned blobs stay, unpinned ones go least recently served first.

The budget is the smaller of ``[assets] budget_bytes`` and the manifest's
``budget_bytes``. A blob that cannot fit because pinned blobs fill the
budget is refused with the bytes it needs, and nothing is evicted for it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from asset_site import (  # noqa: F401 - registers the fixture
    MIB,
    NOW,
    blob,
    entry,
    key_fixture,
    sha,
    signed_manifest,
    started_cache,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.cache import AssetCache, BudgetExceeded, night_items
from appliance.clock import ManualClock
from appliance.commerce.config import CommerceConfig, DropConfig, Item

# Four blobs of 400 KiB in a budget of 1 MiB: two fit, a third does not.
SIZE = 400 * 1024
A = blob("a", SIZE)
B = blob("b", SIZE)
C = blob("c", SIZE)
D = blob("d", SIZE)


async def _add(cache: AssetCache, data: bytes) -> None:
    part = cache.blobs.incoming_dir / f"{sha(data)}.part"
    part.write_bytes(data)
    await cache.adopt_part(part, sha(data), len(data))


def _kept(cache: AssetCache) -> set[bytes]:
    stored = cache.stored()
    return {data for data in (A, B, C, D) if sha(data) in stored}


def _manifest(key: Ed25519PrivateKey, budget: int | None = MIB) -> bytes:
    return signed_manifest(
        key,
        [entry(A, "a"), entry(B, "b"), entry(C, "c"), entry(D, "d")],
        budget_bytes=budget,
    )


async def _refusal_of_c(cache: AssetCache, pinned: set[str], manifest: bytes) -> str:
    """Pin ``pinned``, store A and B, and return the message that refuses C."""
    cache.pin_items(pinned)
    cache.accept_manifest(manifest)
    await _add(cache, A)
    await _add(cache, B)

    with pytest.raises(BudgetExceeded) as caught:
        await _add(cache, C)

    return str(caught.value)


async def test_budget_is_smaller_of_config_and_manifest(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key, budget_bytes=3 * MIB) as (
        cache,
        _store,
    ):
        assert cache.budget() == 3 * MIB

        cache.accept_manifest(_manifest(key, budget=MIB))
        assert cache.budget() == MIB
        assert cache.status()["budget"] == MIB

        cache.accept_manifest(
            signed_manifest(key, [entry(A, "a")], version=2, budget_bytes=8 * MIB)
        )
        assert cache.budget() == 3 * MIB


async def test_least_recently_served_evicted_first(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(NOW)
    async with started_cache(tmp_path / "box", key, clock=clock) as (cache, _):
        cache.accept_manifest(_manifest(key))
        await _add(cache, A)
        clock.advance_to(NOW + 10)
        await _add(cache, B)
        # A was stored first but served since, so B is the older one now.
        clock.advance_to(NOW + 20)
        cache.note_served(sha(A))

        await _add(cache, C)

        assert _kept(cache) == {A, C}
        assert cache.status()["evicted"] == 1
        assert not cache.blobs.path(sha(B)).exists()


async def test_pinned_blobs_never_evicted(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(NOW)
    async with started_cache(tmp_path / "box", key, clock=clock) as (cache, _):
        cache.pin_items({"a"})
        cache.accept_manifest(_manifest(key))
        await _add(cache, A)
        clock.advance_to(NOW + 10)
        await _add(cache, B)

        await _add(cache, C)
        clock.advance_to(NOW + 20)
        await _add(cache, D)

        assert A in _kept(cache)
        assert _kept(cache) == {A, D}
        status = cache.status()
        assert status["pinned"] == 1
        assert status["pinned_bytes"] == SIZE
        assert status["bytes"] <= MIB


async def test_blob_refused_when_pins_fill_budget(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key) as (cache, _):
        message = await _refusal_of_c(cache, {"a", "b", "c"}, _manifest(key))

        assert f"({SIZE} bytes) does not fit in the asset budget of {MIB}" in message
        assert f"use {2 * SIZE} bytes" in message
        assert f"at least {3 * SIZE}" in message
        assert _kept(cache) == {A, B}
        assert cache.status()["rejected"] == {"over-budget": 1}
        assert list(cache.blobs.incoming_dir.iterdir()) == []


async def test_fetch_skips_unpinned_that_do_not_fit(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key) as (cache, _):
        cache.pin_items({"d"})
        cache.accept_manifest(_manifest(key))

        to_fetch = [e.item for e in cache.blobs_to_fetch()]

        # The pinned blob comes first; one unpinned blob fits beside it.
        assert to_fetch == ["d", "a"]
        assert [e.item for e in cache.missing()] == ["d", "a", "b", "c"]


async def test_lowered_budget_evicts_unpinned(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key) as (cache, _):
        cache.pin_items({"b"})
        cache.accept_manifest(_manifest(key, budget=2 * MIB))
        for data in (A, B, C):
            await _add(cache, data)

        cache.accept_manifest(
            signed_manifest(
                key,
                [entry(A, "a"), entry(B, "b"), entry(C, "c")],
                version=2,
                budget_bytes=MIB,
            )
        )

        assert B in _kept(cache)
        assert len(_kept(cache)) == 2


def test_night_items_are_catalogue_and_tonight_drops() -> None:
    tonight = dt.datetime(2027, 1, 15, 22, 0, tzinfo=dt.UTC).timestamp()
    earlier = dt.datetime(2027, 1, 10, 22, 0, tzinfo=dt.UTC).timestamp()

    def drop(drop_id: str, item: str, starts: float) -> DropConfig:
        return DropConfig(drop_id, item, 2500, 10, starts, starts + 3600)

    commerce = CommerceConfig(
        items=(Item("tee", "Tee", 2500), Item("cap", "Cap", 1500)),
        drops=(drop("tonight", "tee", tonight), drop("old", "poster", earlier)),
    )

    assert night_items(commerce, tonight - 600) == {"tee", "cap"}


async def test_refusal_names_bytes_for_every_pinned_blob(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key) as (cache, _):
        message = await _refusal_of_c(cache, {"a", "b", "c", "d"}, _manifest(key))

        assert f"4 pinned blobs of the manifest need {4 * SIZE} bytes" in message
        # The manifest's budget (1 MiB) is smaller than the site's (64 MiB).
        assert f"the manifest's budget_bytes of {MIB} limits the budget" in message
        assert f"at least {4 * SIZE}" in message
        assert "[assets] budget_bytes" not in message


async def test_refusal_names_site_budget_when_it_limits(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    async with started_cache(tmp_path / "box", key, budget_bytes=MIB) as (cache, _):
        manifest = _manifest(key, budget=None)
        message = await _refusal_of_c(cache, {"a", "b", "c"}, manifest)

        assert f"raise [assets] budget_bytes to at least {3 * SIZE}" in message
        assert "manifest's budget_bytes" not in message
