"""``GET|HEAD /assets/{sha256}`` on a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from asset_site import NOW, blob, entry, open_cache, sha, signed_manifest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.assets.cache import AssetCache
from appliance.assets.http import CACHE_CONTROL, add_asset_routes
from appliance.clock import ManualClock
from appliance.store import Store

MODEL = blob("model", 700_000)
POSTER = blob("poster", 2_000)
ABSENT = blob("absent", 1_000)


@dataclass
class Served:
    cache: AssetCache
    store: Store
    clock: ManualClock
    base: str
    session: aiohttp.ClientSession

    def url(self, data: bytes) -> str:
        return f"{self.base}/assets/{sha(data)}"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    key = Ed25519PrivateKey.generate()
    clock = ManualClock(NOW)
    cache, store = open_cache(tmp_path / "box", key, clock=clock)
    await cache.start()
    cache.accept_manifest(
        signed_manifest(
            key,
            [
                entry(MODEL, "tee", "Tee model"),
                entry(POSTER, "tee", "Tee poster", "image/png"),
                entry(ABSENT, "cap"),
            ],
        )
    )
    for data in (MODEL, POSTER):
        part = cache.blobs.incoming_dir / "p.part"
        part.write_bytes(data)
        await cache.adopt_part(part, sha(data), len(data))
    app = web.Application()
    add_asset_routes(app, cache)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield Served(cache, store, clock, f"http://127.0.0.1:{port}", session)
    await runner.cleanup()
    await cache.stop()
    store.close()


async def test_blob_served_with_immutable_headers(served: Served) -> None:
    async with served.session.get(served.url(MODEL)) as response:
        body = await response.read()
        headers = response.headers

    assert response.status == 200
    assert body == MODEL
    assert headers["ETag"] == f'"{sha(MODEL)}"'
    assert headers["Cache-Control"] == CACHE_CONTROL
    assert headers["Content-Type"] == "model/gltf-binary"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Length"] == str(len(MODEL))
    assert headers["Accept-Ranges"] == "bytes"


async def test_content_type_from_manifest(served: Served) -> None:
    async with served.session.get(served.url(POSTER)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert await response.read() == POSTER


@pytest.mark.parametrize(
    "header",
    ['"{}"', 'W/"{}"', '"other", "{}"', "*"],
)
async def test_if_none_match_gets_304(served: Served, header: str) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"If-None-Match": header.format(sha(MODEL))}
    ) as response:
        body = await response.read()

    assert response.status == 304
    assert body == b""
    assert response.headers["ETag"] == f'"{sha(MODEL)}"'
    assert response.headers["Cache-Control"] == CACHE_CONTROL


async def test_other_etag_gets_whole_blob(served: Served) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"If-None-Match": f'"{sha(POSTER)}"'}
    ) as response:
        assert response.status == 200
        assert await response.read() == MODEL


async def test_head_has_headers_without_body(served: Served) -> None:
    async with served.session.head(served.url(MODEL)) as response:
        body = await response.read()

    assert response.status == 200
    assert body == b""
    assert response.headers["Content-Length"] == str(len(MODEL))
    assert response.headers["ETag"] == f'"{sha(MODEL)}"'
    assert response.headers["Content-Type"] == "model/gltf-binary"


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=500000-", 500_000, len(MODEL) - 1),
        ("bytes=-1000", len(MODEL) - 1000, len(MODEL) - 1),
        ("bytes=699990-800000", 699_990, len(MODEL) - 1),
    ],
)
async def test_byte_range_gets_206(
    served: Served, header: str, first: int, last: int
) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"Range": header}
    ) as response:
        body = await response.read()

    assert response.status == 206
    assert body == MODEL[first : last + 1]
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(MODEL)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.headers["ETag"] == f'"{sha(MODEL)}"'


async def test_range_past_end_gets_416(served: Served) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"Range": f"bytes={len(MODEL)}-"}
    ) as response:
        data = await response.json()

    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(MODEL)}"
    assert data["error"] == "range-not-satisfiable"


async def test_invalid_range_gets_400(served: Served) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"Range": "bytes=9-3"}
    ) as response:
        data = await response.json()

    assert response.status == 400
    assert data["error"] == "invalid-range"
    assert "ends before it starts" in data["message"]


async def test_range_with_stale_if_range_gets_whole(served: Served) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"Range": "bytes=0-9", "If-Range": '"old"'}
    ) as response:
        assert response.status == 200
        assert await response.read() == MODEL


@pytest.mark.parametrize(
    "name",
    [
        sha(MODEL).upper(),
        sha(MODEL)[:63],
        sha(MODEL) + "0",
        "..%2F..%2Fnightbox.sqlite3",
        "<script>",
    ],
)
async def test_malformed_hash_gets_400(served: Served, name: str) -> None:
    async with served.session.get(f"{served.base}/assets/{name}") as response:
        data = await response.json()

    assert response.status == 400
    assert data["error"] == "invalid-hash"
    assert "64 lowercase hex digits" in data["message"]


async def test_unknown_hash_gets_404(served: Served) -> None:
    async with served.session.get(served.url(blob("never", 10))) as response:
        data = await response.json()

    assert response.status == 404
    assert data["error"] == "not-found"


async def test_listed_but_missing_gets_404(served: Served) -> None:
    async with served.session.get(served.url(ABSENT)) as response:
        assert response.status == 404


async def test_deleted_file_gets_404(served: Served) -> None:
    served.cache.blobs.path(sha(POSTER)).unlink()

    async with served.session.get(served.url(POSTER)) as response:
        assert response.status == 404


async def test_serving_records_last_served(served: Served) -> None:
    served.clock.advance_to(NOW + 5)

    async with served.session.get(served.url(MODEL)) as response:
        await response.read()

    row = served.store.query_one(
        "SELECT last_served_at FROM asset_blobs WHERE sha256 = ?", (sha(MODEL),)
    )
    assert row == (NOW + 5,)


async def test_item_lookups_find_model_and_poster(served: Served) -> None:
    model = served.cache.model_for_item("tee")
    poster = served.cache.poster_for_item("tee")

    assert model is not None
    assert model.sha256 == sha(MODEL)
    assert poster is not None
    assert poster.media_type == "image/png"
    assert served.cache.model_for_item("cap") is None
    assert [e.name for e in served.cache.entries_for_item("tee")] == [
        "Tee model",
        "Tee poster",
    ]


def _assert_uncached_error(headers: Mapping[str, str]) -> None:
    assert "ETag" not in headers
    assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("header", "status"),
    [("bytes=abc", 400), ("bytes=9-3", 400), (f"bytes={len(MODEL)}-", 416)],
)
async def test_range_error_not_cacheable(
    served: Served, header: str, status: int
) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"Range": header}
    ) as response:
        await response.read()

    assert response.status == status
    _assert_uncached_error(response.headers)


@pytest.mark.parametrize(
    ("path", "status"),
    [(sha(MODEL).upper(), 400), (sha(blob("never", 10)), 404), (sha(ABSENT), 404)],
)
async def test_hash_error_not_cacheable(served: Served, path: str, status: int) -> None:
    async with served.session.get(f"{served.base}/assets/{path}") as response:
        await response.read()

    assert response.status == status
    _assert_uncached_error(response.headers)


@pytest.mark.parametrize("digit", ["\u0661", "\uff11", "\u00b9"])
async def test_range_with_non_ascii_digit_gets_400(served: Served, digit: str) -> None:
    reply = await _raw_get(served, f"/assets/{sha(MODEL)}", f"Range: bytes={digit}-2")

    assert reply.status == 400
    assert reply.json()["error"] == "invalid-range"


async def test_empty_suffix_range_gets_416(served: Served) -> None:
    async with served.session.get(
        served.url(MODEL), headers={"Range": "bytes=-0"}
    ) as response:
        data = await response.json()

    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(MODEL)}"
    assert data["error"] == "range-not-satisfiable"


@pytest.mark.parametrize(
    "path",
    [
        f"/assets/{sha(MODEL)}/x",
        "/assets/../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/etc/passwd",
        "/assets/",
    ],
)
async def test_other_asset_paths_get_json_404(served: Served, path: str) -> None:
    reply = await _raw_get(served, path)

    assert reply.status == 404
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"] == "not-found"
    assert reply.headers["cache-control"] == "no-store"


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def _raw_get(served: Served, path: str, *header_lines: str) -> RawReply:
    """Send a GET with ``path`` exactly as given, which aiohttp's client would tidy."""
    port = int(served.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    writer.write(("\r\n".join([*lines, *header_lines]) + "\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_text = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_text:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawReply(int(status_line.split()[1]), headers, body)
