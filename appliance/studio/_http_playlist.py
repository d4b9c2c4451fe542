"""The HLS writer as the studio's HTTP server reads it, and its media playlist.

:class:`HlsSource` is the writer interface the server serves from. The
functions here read a media playlist's text: how far it reaches and which
segments are finished. They also check a blocking reload's ``_HLS_msn`` and
``_HLS_part`` query (RFC 8216bis, section 6.2.5.2), and add a query token to
every URI of a playlist for players that cannot set headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from aiohttp import web

__all__ = [
    "BLOCK_TARGET_DURATIONS",
    "HlsSource",
    "PlaylistPosition",
    "blocking_request",
    "finished_segments",
    "part_too_far_ahead",
    "playlist_ended",
    "playlist_position",
    "with_token",
]

# A blocked playlist request waits at most this many target durations
# (RFC 8216bis, section 6.2.5.2).
BLOCK_TARGET_DURATIONS = 3
# A blocking request for a part further ahead of the playlist's last part
# than three seconds of parts (three parts when a part lasts 1 s or more) is
# rejected at once (RFC 8216bis, section 6.2.5.2, Advance Part Limit). The
# HLS writer rejects a segment more than two ahead of the last finished one.
_ADVANCE_PART_SECONDS = 3.0
_DEFAULT_TARGET_DURATION_S = 2.0
_DEFAULT_PART_TARGET_S = 0.5


class HlsSource(Protocol):
    """The HLS writer of the running stream, as the server reads it."""

    def playlist(self) -> str:
        """Return the current media playlist."""
        ...

    def segment_bytes(self, name: str) -> bytes | None:
        """Return the bytes of segment ``name`` so far, or None if there is none."""
        ...

    async def wait_for_part(
        self, name: str, offset: int, timeout_s: float, /
    ) -> int | None:
        """Wait until the part holding byte ``offset`` of ``name`` is finished.

        Returns the part's end offset, or None when the time runs out, the
        segment is not in the window, or it ended before ``offset``.
        """
        ...

    async def wait_for(self, msn: int, part: int | None, timeout_s: float, /) -> object:
        """Wait until the playlist contains segment ``msn`` (part ``part``) or time out.

        Raises ValueError for a request that can never be met.
        """
        ...


@dataclass(frozen=True, slots=True)
class PlaylistPosition:
    """How far a media playlist reaches: its next segment and that segment's parts."""

    open_msn: int
    open_parts: int
    target_duration_s: float
    part_target_s: float

    def contains(self, msn: int, part: int | None) -> bool:
        if msn < self.open_msn:
            return True
        return msn == self.open_msn and part is not None and part < self.open_parts


def playlist_position(text: str) -> PlaylistPosition:
    """Read the media sequence, segment and part counts of a media playlist."""
    media_sequence = 0
    segments = 0
    parts = 0
    target_duration_s = _DEFAULT_TARGET_DURATION_S
    part_target_s = _DEFAULT_PART_TARGET_S
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            media_sequence = int(line.partition(":")[2])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target_duration_s = float(line.partition(":")[2])
        elif line.startswith("#EXT-X-PART-INF:PART-TARGET="):
            part_target_s = float(line.partition("=")[2])
        elif line.startswith("#EXT-X-PART:"):
            parts += 1
        elif line and not line.startswith("#"):
            segments += 1
            parts = 0
    return PlaylistPosition(
        media_sequence + segments, parts, target_duration_s, part_target_s
    )


def playlist_ended(text: str) -> bool:
    """Return whether a media playlist ends with EXT-X-ENDLIST (a stopped stream)."""
    return "#EXT-X-ENDLIST" in text.splitlines()


def finished_segments(text: str) -> set[str]:
    """Return the URIs of the finished segments a media playlist lists."""
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def with_token(playlist: str, token: str) -> str:
    """Return ``playlist`` with ``token`` added to the query of every URI."""
    query = "token=" + quote(token, safe="")

    def add(uri: str) -> str:
        return f"{uri}{'&' if '?' in uri else '?'}{query}"

    lines = []
    for line in playlist.splitlines():
        if line and not line.startswith("#"):
            line = add(line)
        elif 'URI="' in line:
            line = re.sub(r'URI="([^"]*)"', lambda m: f'URI="{add(m[1])}"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def part_too_far_ahead(
    position: PlaylistPosition, msn: int, part: int | None
) -> str | None:
    """Return why a blocking request's ``_HLS_part`` is too far ahead, or None."""
    if part is None or msn < position.open_msn:
        return None
    if position.part_target_s < 1.0:
        limit = int(_ADVANCE_PART_SECONDS / position.part_target_s)
    else:
        limit = int(_ADVANCE_PART_SECONDS)
    last_part = position.open_parts - 1
    # For a later segment, at least the parts up to ``part`` of it are
    # still to come after the playlist's last part.
    ahead = part - last_part if msn == position.open_msn else part + 1
    if ahead <= limit:
        return None
    return (
        f"_HLS_msn={msn} _HLS_part={part} is more than {limit} parts ahead of the "
        f"playlist's last part (segment {position.open_msn} part {last_part}); "
        "reload the playlist without it"
    )


def blocking_request(
    request: web.Request,
) -> tuple[int, int | None] | str | None:
    """Return the ``_HLS_msn`` and ``_HLS_part`` of a blocking reload, if any.

    A string is the reason the request is invalid.
    """
    msn_text = request.query.get("_HLS_msn")
    part_text = request.query.get("_HLS_part")
    if msn_text is None:
        if part_text is not None:
            return "_HLS_part needs _HLS_msn; add it"
        return None
    numbers: list[int] = []
    for name, text in (("_HLS_msn", msn_text), ("_HLS_part", part_text)):
        if text is None:
            continue
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            return f"{name}={text[:20]!r} is invalid; give a whole number from 0"
        numbers.append(int(text))
    return numbers[0], numbers[1] if len(numbers) > 1 else None
