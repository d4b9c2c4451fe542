"""HTTP routes that serve the asset cache's blobs by SHA-256.

``GET|HEAD /assets/{sha256}`` serves a stored blob of the current manifest.
A blob never changes under its hash, so responses carry the hash as a
strong ``ETag`` and ``Cache-Control: public, max-age=31536000, immutable``:
a phone fetches a model once per night at most. ``If-None-Match`` gets a
304, and single byte ranges (RFC 9110, section 14) get a 206, so a player
can seek in a video. ``Content-Type`` is the manifest's media type, and
``X-Content-Type-Options: nosniff`` stops a browser from guessing another.

Error responses (400, 404, 416) are JSON with ``Cache-Control: no-store``
and no ``ETag``, so no cache keeps an error in place of a blob. Every
other path under ``/assets/`` gets the JSON 404.
"""

from __future__ import annotations

import asyncio
import logging
from typing import BinaryIO

from aiohttp import web

from appliance.assets._blobs import SHA256_PATTERN, open_regular, short_hash
from appliance.assets._byte_ranges import InvalidRange, parse_range, range_bounds
from appliance.assets.cache import AssetCache
from appliance.studio._http_auth import error_response

__all__ = ["CACHE_CONTROL", "add_asset_routes", "blob_url"]

_LOGGER = logging.getLogger(__name__)

CACHE_CONTROL = "public, max-age=31536000, immutable"
# Headers of every error response: never stored, never sniffed.
_ERROR_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# Files are sent in blocks of this size, read in a worker thread.
_SEND_BLOCK_BYTES = 256 * 1024
_CACHE_KEY = web.AppKey("asset_cache", AssetCache)


def add_asset_routes(app: web.Application, cache: AssetCache) -> None:
    """Serve the blobs of ``cache`` on ``GET`` and ``HEAD /assets/{sha256}``."""
    app[_CACHE_KEY] = cache
    app.router.add_get("/assets/{sha256}", _serve_blob, name="asset")
    # Extra segments and dot segments: the JSON 404 of this API, not the
    # server's plain-text one.
    app.router.add_get("/assets/{rest:.*}", _other_path)


async def _serve_blob(request: web.Request) -> web.StreamResponse:
    cache = request.app[_CACHE_KEY]
    sha256 = request.match_info["sha256"]
    if not SHA256_PATTERN.match(sha256):
        return _error(
            400,
            "invalid-hash",
            f"{sha256[:80]!r} is not a SHA-256 hash; asset URLs end in 64 "
            "lowercase hex digits",
        )
    entry = cache.entry(sha256)
    if entry is None:
        return _not_found(sha256)
    path = cache.blobs.path(sha256)
    headers = {
        "ETag": f'"{sha256}"',
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
    }
    if _matches(request.headers.get("If-None-Match"), sha256):
        return web.Response(status=304, headers=headers)
    try:
        source = await asyncio.to_thread(open_regular, path)
    except OSError as err:
        # The row outlived its file, as when someone deleted it by hand or
        # put a link in its place. The next start-up verification deletes
        # the row and removes the link.
        _LOGGER.warning(
            "Asset blob %s has a row but no regular file: %s", short_hash(sha256), err
        )
        return _not_found(sha256)
    try:
        return await _send(request, source, entry.size, entry.media_type, headers)
    finally:
        source.close()
        cache.note_served(sha256)


async def _send(
    request: web.Request,
    source: BinaryIO,
    size: int,
    media_type: str,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Send ``source`` whole or as the requested byte range, with ``headers``."""
    requested = parse_range(request.headers.get("Range"))
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != headers["ETag"]:
        # A range of another version of the resource: send it whole.
        requested = None
    if isinstance(requested, InvalidRange):
        return _error(400, "invalid-range", requested.message)

    start, end = 0, size - 1
    status = 200
    if requested is not None:
        bounds = range_bounds(requested, size)
        if bounds is None:
            return _error(
                416,
                "range-not-satisfiable",
                f"the blob has {size} bytes; request a range of 1 or more bytes "
                "within them",
                {"Content-Range": f"bytes */{size}"},
            )
        start, end = bounds
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"

    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = media_type
    response.content_length = end - start + 1
    await response.prepare(request)
    if request.method == "HEAD":
        return response

    await asyncio.to_thread(source.seek, start)
    remaining = end - start + 1
    while remaining > 0:
        block = await asyncio.to_thread(source.read, min(_SEND_BLOCK_BYTES, remaining))
        if not block:
            # The file is shorter than the size in its row. The client gets a
            # short body, and start-up verification removes the blob.
            break
        await response.write(block)
        remaining -= len(block)
    await response.write_eof()
    return response


def _matches(header: str | None, sha256: str) -> bool:
    """Return whether an ``If-None-Match`` header names the blob's ETag."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            # Weak comparison, as If-None-Match uses (RFC 9110, 13.1.2).
            tag = tag[2:]
        if tag == f'"{sha256}"':
            return True
    return False


async def _other_path(request: web.Request) -> web.Response:
    return _error(
        404,
        "not-found",
        "asset URLs are /assets/ followed by 64 lowercase hex digits, with "
        "nothing after them",
    )


def _not_found(sha256: str) -> web.Response:
    return _error(
        404,
        "not-found",
        f"asset {short_hash(sha256)} is not in this box's cache; it may not be "
        "listed in the manifest yet or still be on its way",
    )


def _error(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Return a JSON error that no cache stores and that carries no blob's ETag."""
    return error_response(
        status, reason, message, headers={**_ERROR_HEADERS, **(headers or {})}
    )


def blob_url(sha256: str) -> str:
    """Return the path that serves blob ``sha256``."""
    return f"/assets/{sha256}"
