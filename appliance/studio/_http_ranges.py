"""Byte ranges of HLS segments and the parts a request is held for.

Low-latency HLS parts are byte ranges of the segment being written
(RFC 8216bis, section 6.2.5.2), requested with a ``Range`` header
(RFC 9110, section 14). A finished segment is served at once. A request for
bytes not written yet (a preload hint, or a part still being written) is
held until the part that contains them is finished and then gets the whole
part, so a player never receives a truncated part. A request for the whole
segment or for a suffix range is held until the whole segment is finished.
A request is held for at most three target durations.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp import web

from appliance.studio._http_auth import error_response
from appliance.studio._http_playlist import (
    BLOCK_TARGET_DURATIONS,
    HlsSource,
    finished_segments,
    playlist_position,
)

__all__ = [
    "RangeRequest",
    "Refused",
    "Served",
    "read_segment_range",
    "requested_range",
]

_BYTE_RANGE = re.compile(r"^bytes=(\d{0,15})-(\d{0,15})\Z")


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """One byte range of a ``Range`` header (RFC 9110, section 14.1.2).

    ``start`` and ``last`` are inclusive offsets. When ``start`` is None and
    ``last`` is set, the range is the last ``last`` bytes.
    """

    start: int | None
    last: int | None


@dataclass(frozen=True, slots=True)
class Served:
    """The bytes to send, and their Content-Range for a 206 response."""

    data: bytes
    content_range: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    """An error response for a segment request, with its Content-Range if any."""

    status: int
    reason: str
    message: str
    content_range: str | None = None

    def response(self) -> web.Response:
        headers = (
            {} if self.content_range is None else {"Content-Range": self.content_range}
        )
        return error_response(self.status, self.reason, self.message, headers=headers)


def requested_range(header: str | None) -> RangeRequest | str | None:
    """Return the byte range a ``Range`` header requests, or why it is invalid.

    None means the whole resource: no header, another unit, or several
    ranges, for which a server may send the whole resource (RFC 9110,
    section 14.2).
    """
    if header is None:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes=") or "," in header:
        return None
    match = _BYTE_RANGE.match("bytes=" + header[6:].replace(" ", ""))
    if match is None or match[1] == match[2] == "":
        return (
            f"the Range header {header[:40]!r} is invalid; give bytes=START-END, "
            "bytes=START- or bytes=-LENGTH"
        )
    if match[1] == "":
        suffix = int(match[2])
        if suffix == 0:
            return "the Range header asks for the last 0 bytes; ask for 1 or more"
        return RangeRequest(None, suffix)
    start = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < start:
        return (
            f"the Range header {header[:40]!r} ends before it starts; give "
            "bytes=START-END with END at least START"
        )
    return RangeRequest(start, last)


async def read_segment_range(
    writer: HlsSource, name: str, requested: RangeRequest | None
) -> Served | Refused:
    """Return the bytes of segment ``name`` to serve for ``requested``.

    A finished segment is served at once. For the segment being
    written, a request for bytes that are not final yet waits until the
    part that contains them is finished. A request for the whole segment
    or for a suffix range waits until the whole segment is finished. Either
    wait lasts at most three target durations.
    """
    data = writer.segment_bytes(name)
    if data is None:
        return _not_in_window(name)
    text = writer.playlist()
    if name in finished_segments(text):
        return _finished_range(data, requested)
    timeout_s = BLOCK_TARGET_DURATIONS * playlist_position(text).target_duration_s
    if requested is None or requested.start is None:
        return await _whole_segment(writer, name, requested, timeout_s)
    if requested.start > len(data):
        return Refused(
            416,
            "invalid-range",
            f"bytes from {requested.start} of segment {name!r} are beyond the "
            f"{len(data)} bytes written so far and the preload hint; reload "
            "the playlist",
            "bytes */*",
        )
    offset = requested.start if requested.last is None else requested.last
    waited = await _wait_for_part(writer, name, requested, offset, timeout_s, timeout_s)
    if not isinstance(waited, tuple):
        return waited
    data, end = waited
    stop = end if requested.last is None else requested.last + 1
    return Served(data[requested.start : stop], f"bytes {requested.start}-{stop - 1}/*")


async def _whole_segment(
    writer: HlsSource,
    name: str,
    requested: RangeRequest | None,
    timeout_s: float,
) -> Served | Refused:
    """Serve ``requested`` once segment ``name`` is finished, waiting part by part."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    offset = 0
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        waited = await _wait_for_part(
            writer, name, requested, offset, max(remaining, 0.0), timeout_s
        )
        if not isinstance(waited, tuple):
            return waited
        _data, offset = waited


async def _wait_for_part(
    writer: HlsSource,
    name: str,
    requested: RangeRequest | None,
    offset: int,
    wait_s: float,
    timeout_s: float,
) -> tuple[bytes, int] | Served | Refused:
    """Wait up to ``wait_s`` until the part holding byte ``offset`` is finished.

    Returns the bytes of segment ``name`` so far and the part's end offset.
    When the segment is finished, returns ``requested`` from it instead. When
    the segment left the window or the part was not finished in time, returns
    the error to send, whose message names ``timeout_s``.
    """
    end = await writer.wait_for_part(name, offset, wait_s)
    data = writer.segment_bytes(name)
    if data is None:
        return _not_in_window(name)
    if name in finished_segments(writer.playlist()):
        return _finished_range(data, requested)
    if end is None:
        return _part_timeout(name, offset, timeout_s)
    return data, end


def _finished_range(data: bytes, requested: RangeRequest | None) -> Served | Refused:
    """Return the bytes of a finished segment for ``requested``."""
    size = len(data)
    if requested is None:
        return Served(data, None)
    if requested.start is None:
        assert requested.last is not None
        start = max(size - requested.last, 0)
        stop = size
    else:
        start = requested.start
        stop = size if requested.last is None else min(requested.last + 1, size)
    if start >= size:
        return Refused(
            416,
            "invalid-range",
            f"the requested range starts at byte {start}, outside the segment's "
            f"{size} bytes",
            f"bytes */{size}",
        )
    return Served(data[start:stop], f"bytes {start}-{stop - 1}/{size}")


def _not_in_window(name: str) -> Refused:
    return Refused(
        404,
        "not-found",
        f"segment {name!r} is not in the live window; reload the playlist",
    )


def _part_timeout(name: str, offset: int, timeout_s: float) -> Refused:
    return Refused(
        503,
        "timeout",
        f"the part at byte {offset} of segment {name!r} was not finished within "
        f"{timeout_s:g} s; the stream may be stalled, retry",
    )
