"""Blob delivery through sync, against a TLS mosquitto as the upstream broker.

The operator sends a packed folder with ``nightbox fleet assets send``:
retained chunks, then the manifest as an ``assets`` bundle. A running box
(with its local mosquitto and sync to the upstream broker) applies the
manifest, requests each missing blob, reassembles and verifies it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from asset_site import (  # noqa: F401 - registers the fixture
    blob,
    entry,
    key_fixture,
    sha,
    signed_manifest,
    started_cache,
    write_private_key,
    write_public_key,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance.assets import delivery
from appliance.assets.cache import ImportResult
from appliance.assets.delivery import CHUNK_BYTES, chunk_count, chunk_topic
from appliance.assets.sample import write_sample_model
from appliance.bus.url import parse_broker_url
from appliance.cli import main
from appliance.config import SiteConfig
from appliance.remote.fleet_client import FleetClient, FleetError, load_login
from appliance.runtime import Box

SITE = "club"
TIMEOUT_S = 60.0
# Three chunks: two full ones and a short last one.
VIDEO = blob("video", 2 * CHUNK_BYTES + 1234)


@pytest.fixture
def site_config(
    tmp_path: Path,
    upstream: Upstream,  # noqa: F811
    key: Ed25519PrivateKey,
) -> SiteConfig:
    """Box club/box-1 of the upstream broker's fleet, trusting ``key``."""
    return fleet_site_config(
        tmp_path / "box", upstream, operator_keys=[key.public_key()]
    )


@pytest.fixture
def folder(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """A folder with a model and a three-chunk video, packed for the site."""
    folder = tmp_path / "usb"
    folder.mkdir()
    write_sample_model(folder / "tee.glb")
    (folder / "teaser.mp4").write_bytes(VIDEO)
    (folder / "assets.toml").write_text(
        '[[assets]]\nitem = "tee"\nname = "Tee"\nfile = "tee.glb"\n\n'
        '[[assets]]\nitem = "tee"\nname = "Teaser"\nfile = "teaser.mp4"\n'
    )
    key_file = write_private_key(key, tmp_path / "operator.key")
    write_public_key(key, tmp_path / "operator.pub")
    code = main(
        [
            "assets",
            "pack",
            str(folder),
            "--key",
            str(key_file),
            "--site",
            SITE,
            "--version",
            "1",
        ]
    )
    assert code == 0
    return folder


async def wait_until(condition: Callable[[], bool], description: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {description}")
        await asyncio.sleep(0.05)


def _fleet(upstream: Upstream, *arguments: str) -> int:  # noqa: F811
    return main(
        [
            "fleet",
            "assets",
            *arguments,
            "--broker",
            upstream.url,
            "--ca",
            str(upstream.ca.ca_certificate),
            "--credentials",
            str(upstream.operator_credentials()),
        ]
    )


def _stored(box: Box) -> dict[str, bytes]:
    return {
        sha256: box.assets.blobs.path(sha256).read_bytes()
        for sha256 in box.assets.stored()
    }


async def test_fleet_send_delivers_blobs(
    box: Box,
    upstream: Upstream,  # noqa: F811
    folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await wait_until(lambda: box.status()["sync"]["connected"], "the sync link")

    code = await asyncio.to_thread(
        _fleet, upstream, "send", str(folder), "--site", SITE, "--timeout", "20"
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "Published 2 blobs in 4 retained chunks" in out
    assert "club/box-1: bundle assets ok" in out
    await wait_until(lambda: box.assets.status()["missing"] == 0, "every blob")
    model = (folder / "tee.glb").read_bytes()
    assert _stored(box) == {sha(model): model, sha(VIDEO): VIDEO}
    status = box.status()["assets"]
    assert status["rejected"] == {}
    assert status["manifest_version"] == 1
    assert box.assets.fetcher.counts["blobs"] == 2
    assert list(box.assets.blobs.incoming_dir.iterdir()) == []


async def test_chunks_published_after_manifest(
    box: Box,
    upstream: Upstream,  # noqa: F811
    folder: Path,
) -> None:
    # The manifest came on a USB stick without the video; the operator
    # publishes the chunks later, and the box, already asking, takes them.
    result = await _import_without_video(box, folder)
    assert [e.sha256 for e in result.missing] == [sha(VIDEO)]
    await wait_until(lambda: box.status()["sync"]["connected"], "the sync link")
    await wait_until(
        lambda: box.assets.fetcher.current_prefix() == sha(VIDEO)[:12],
        "the box asking for the video",
    )
    await asyncio.sleep(0.5)

    await asyncio.to_thread(_publish_chunks, upstream, sha(VIDEO), _split(VIDEO))

    await wait_until(lambda: box.assets.status()["missing"] == 0, "the video")
    assert _stored(box)[sha(VIDEO)] == VIDEO


async def test_forged_chunks_rejected_nothing_stored(
    box: Box,
    upstream: Upstream,  # noqa: F811
    folder: Path,
) -> None:
    await _import_without_video(box, folder)
    await wait_until(lambda: box.status()["sync"]["connected"], "the sync link")
    forged = blob("forged", len(VIDEO))

    await asyncio.to_thread(_publish_chunks, upstream, sha(VIDEO), _split(forged))

    await wait_until(
        lambda: box.assets.status()["rejected"].get("hash-mismatch") == 1,
        "the forged video's rejection",
    )
    assert sha(VIDEO) not in box.assets.stored()
    assert not box.assets.blobs.path(sha(VIDEO)).exists()
    assert list(box.assets.blobs.incoming_dir.iterdir()) == []
    assert box.assets.status()["missing"] == 1


async def test_chunk_of_wrong_length_dropped(
    box: Box,
    upstream: Upstream,  # noqa: F811
    folder: Path,
) -> None:
    await _import_without_video(box, folder)
    await _until_video_requested(box)

    await asyncio.to_thread(
        _publish_chunks, upstream, sha(VIDEO), [b"short"], count=chunk_count(len(VIDEO))
    )

    await wait_until(
        lambda: box.assets.fetcher.counts["wrong-length"] >= 1, "the dropped chunk"
    )
    assert box.assets.stored().keys() == {sha((folder / "tee.glb").read_bytes())}


def test_box_account_cannot_publish_chunks(
    upstream: Upstream,  # noqa: F811
) -> None:
    client = FleetClient(
        parse_broker_url(upstream.url),
        load_login(upstream.box_credentials()),
        ca_file=upstream.ca.ca_certificate,
    )
    with client, pytest.raises(FleetError) as caught:
        client.publish(chunk_topic(SITE, "0" * 64, 0, 1), b"x", retain=True)

    assert "rejected the message" in str(caught.value)


def test_site_mismatch_sends_nothing(
    upstream: Upstream,  # noqa: F811
    folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _fleet(upstream, "send", str(folder), "--site", "annex")

    assert code == 2
    assert "signed for site 'club', not 'annex'" in capsys.readouterr().err


def test_fleet_clear_removes_retained_chunks(
    upstream: Upstream,  # noqa: F811
    folder: Path,
) -> None:
    _publish_chunks(upstream, sha(VIDEO), [VIDEO[:CHUNK_BYTES]], count=3)
    assert _retained(upstream, sha(VIDEO)) == 1

    code = _fleet(upstream, "clear", str(folder), "--site", SITE)

    assert code == 0
    assert _retained(upstream, sha(VIDEO)) == 0


def _operator(upstream: Upstream) -> FleetClient:  # noqa: F811
    return FleetClient(
        parse_broker_url(upstream.url),
        load_login(upstream.operator_credentials()),
        ca_file=upstream.ca.ca_certificate,
    )


async def _import_without_video(box: Box, folder: Path) -> ImportResult:
    """Import ``folder`` after moving the video out, as if the USB stick lacked it."""
    os.rename(folder / "teaser.mp4", folder.parent / "teaser.mp4")
    return await box.assets.import_folder(folder)


async def _until_video_requested(box: Box) -> None:
    await wait_until(
        lambda: (
            box.assets.fetcher.current_prefix() == sha(VIDEO)[:12]
            and box.status()["sync"]["connected"]
        ),
        "the box asking for the video",
    )
    await asyncio.sleep(0.5)


def _split(data: bytes) -> list[bytes]:
    """Split ``data`` into chunks of CHUNK_BYTES, as the operator publishes them."""
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


def _publish_chunks(
    upstream: Upstream,  # noqa: F811
    sha256: str,
    chunks: list[bytes],
    *,
    count: int | None = None,
) -> None:
    total = len(chunks) if count is None else count
    with _operator(upstream) as client:
        for index, payload in enumerate(chunks):
            client.publish(
                chunk_topic(SITE, sha256, index, total), payload, retain=True
            )


def _retained(upstream: Upstream, sha256: str) -> int:  # noqa: F811
    """Return how many retained chunks of a blob a box of the site receives."""
    reader = FleetClient(
        parse_broker_url(upstream.url),
        load_login(upstream.box_credentials()),
        ca_file=upstream.ca.ca_certificate,
    )
    with reader as client:
        client.subscribe([f"nightbox/{SITE}/assets/{sha256}/#"])
        count = 0
        while client.receive(1.0) is not None:
            count += 1
    return count


async def test_rejected_blob_requested_again_after_retry_time(
    box: Box,
    upstream: Upstream,  # noqa: F811
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "REJECTED_RETRY_S", 2.0)
    await _import_without_video(box, folder)
    await _until_video_requested(box)
    forged = blob("forged", len(VIDEO))
    await asyncio.to_thread(_publish_chunks, upstream, sha(VIDEO), _split(forged))
    await wait_until(
        lambda: box.assets.rejected.get("hash-mismatch") == 1,
        "the forged video's rejection",
    )

    # The operator publishes the right chunks; only a new subscription,
    # after the retry time, makes the broker send them to the box.
    await asyncio.to_thread(_publish_chunks, upstream, sha(VIDEO), _split(VIDEO))

    await wait_until(lambda: sha(VIDEO) in box.assets.stored(), "the video")
    assert _stored(box)[sha(VIDEO)] == VIDEO
    assert box.assets.status()["missing"] == 0
    await wait_until(
        lambda: box.assets.fetcher.current_prefix() is None, "the request's end"
    )


async def test_fetching_empty_without_request(tmp_path: Path) -> None:
    # A box without an upstream link lacks a listed blob but requests nothing.
    key = Ed25519PrivateKey.generate()
    async with started_cache(tmp_path / "box", key) as (cache, _):
        cache.accept_manifest(signed_manifest(key, [entry(VIDEO, "tee")]))

        assert [e.sha256 for e in cache.blobs_to_fetch()] == [sha(VIDEO)]
        assert cache.status()["fetching"] is None
