"""A running box imports ``[assets] preload_dir`` at start and serves its blobs.

The folder is packed with ``nightbox assets pack``, as an operator hands it
over on a USB stick; the box runs on the test broker like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from asset_folder import Packed, packed_folder
from asset_site import sha, trusted
from conftest import make_site_config

from appliance.assets.config import AssetsConfig
from appliance.assets.http import add_asset_routes
from appliance.commerce.config import CommerceConfig, Item
from appliance.config import SiteConfig
from appliance.remote.config import FleetConfig
from appliance.runtime import Box


@pytest.fixture
def packed(tmp_path: Path) -> Packed:
    return packed_folder(tmp_path / "usb")


@pytest.fixture
def site_config(tmp_path: Path, packed: Packed) -> SiteConfig:
    """The test site, trusting the folder's key and preloading the folder."""
    return make_site_config(
        tmp_path / "box",
        fleet=FleetConfig(operator_keys=trusted(packed.key)),
        assets=AssetsConfig(preload_dir=packed.folder),
        commerce=CommerceConfig(items=(Item("tee", "Night tee", 2500),)),
    )


@pytest.fixture
async def http_base(box: Box) -> AsyncIterator[str]:
    app = web.Application()
    add_asset_routes(app, box.assets)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_box_preloads_and_pins_folder(box: Box, packed: Packed) -> None:
    status = box.status()["assets"]

    assert status["manifest_version"] == 1
    assert status["blobs"] == 2
    assert status["missing"] == 0
    assert status["bytes"] == len(packed.model) + len(packed.poster)
    assert status["pinned"] == 2
    assert status["rejected"] == {}
    model = box.assets.model_for_item("tee")
    assert model is not None
    assert model.sha256 == sha(packed.model)


async def test_box_serves_preloaded_model(
    box: Box, packed: Packed, http_base: str
) -> None:
    model = box.assets.model_for_item("tee")
    assert model is not None

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{http_base}/assets/{model.sha256}") as response,
    ):
        body = await response.read()

    assert response.status == 200
    assert body == packed.model
    assert response.headers["Content-Type"] == "model/gltf-binary"


async def test_second_import_stores_nothing(box: Box, site_config: SiteConfig) -> None:
    # The box's start imported the folder, as every start does: the same
    # manifest is not applied twice and no blob is copied twice.
    result = await box.assets.import_folder(site_config.assets.preload_dir or Path())

    assert result.manifest_applied is False
    assert result.stored == []
    assert len(result.present) == 2
    events = box.store.query("SELECT type FROM outbox WHERE type = 'bundle_applied'")
    assert len(events) == 1


class TestTamperedFolder:
    """A folder whose blob or manifest was changed after packing."""

    @pytest.fixture
    def packed(self, tmp_path: Path) -> Packed:
        packed = packed_folder(tmp_path / "usb")
        poster = packed.folder / "tee-poster.png"
        poster.write_bytes(poster.read_bytes()[:-1] + b"!")
        return packed

    async def test_bad_blob_rejected_rest_served(
        self, box: Box, packed: Packed
    ) -> None:
        status = box.status()["assets"]

        assert status["blobs"] == 1
        assert status["missing"] == 1
        assert status["rejected"] == {"hash-mismatch": 1}
        assert box.assets.poster_for_item("tee") is None
        assert box.store.query("SELECT sha256 FROM asset_blobs") == [
            (sha(packed.model),)
        ]


class TestTamperedManifest:
    @pytest.fixture
    def packed(self, tmp_path: Path) -> Packed:
        packed = packed_folder(tmp_path / "usb")
        manifest = packed.folder / "manifest.json"
        document = orjson.loads(manifest.read_bytes())
        document["body"]["budget_bytes"] = 10**9
        manifest.write_bytes(orjson.dumps(document))
        return packed

    async def test_box_runs_without_assets(self, box: Box) -> None:
        status = box.status()["assets"]

        assert status["manifest_version"] is None
        assert status["blobs"] == 0
        assert status["rejected"] == {"manifest-bad-signature": 1}
        assert box.store.query("SELECT * FROM asset_manifests") == []
        assert list((box.config.data_dir / "assets" / "blobs").iterdir()) == []


class TestMissingFolder:
    @pytest.fixture
    def site_config(self, tmp_path: Path, packed: Packed) -> SiteConfig:
        config = make_site_config(
            tmp_path / "box", fleet=FleetConfig(operator_keys=trusted(packed.key))
        )
        return dataclasses.replace(
            config, assets=AssetsConfig(preload_dir=tmp_path / "not-plugged-in")
        )

    async def test_box_starts_with_empty_cache(self, box: Box) -> None:
        status = box.status()["assets"]

        assert status["manifest_version"] is None
        assert status["blobs"] == 0
