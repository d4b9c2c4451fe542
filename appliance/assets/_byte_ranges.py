"""The ``Range`` header of a blob request: one byte range, ASCII digits only.

RFC 9110, section 14.1.2 defines a byte range as ``first-last``,
``first-`` or ``-suffix-length`` with ``DIGIT`` (ASCII 0-9) numbers. For a
header in another unit, or with several ranges, the server sends the
whole blob, which section 14.2 allows. A suffix of length 0
selects no byte, so it is unsatisfiable (416), not invalid (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "InvalidRange", "parse_range", "range_bounds"]

# Fifteen digits cover any blob size (1 TiB has thirteen) and keep int()
# cheap on hostile input.
_SPEC = re.compile(r"[ \t]*([0-9]{0,15})[ \t]*-[ \t]*([0-9]{0,15})[ \t]*\Z")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One requested range: ``first`` and ``last`` inclusive, or a suffix length.

    ``first`` None means the last ``suffix`` bytes.
    """

    first: int | None
    last: int | None
    suffix: int = 0


@dataclass(frozen=True, slots=True)
class InvalidRange:
    """A ``Range`` header that cannot be read, with the message for the client."""

    message: str


def parse_range(header: str | None) -> ByteRange | InvalidRange | None:
    """Return the single byte range of a ``Range`` header, or why it is invalid.

    None means the whole blob: no header, another unit, or several ranges.
    """
    if header is None:
        return None
    unit, separator, spec = header.partition("=")
    if not separator or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _SPEC.match(spec)
    if match is None or match[1] == match[2] == "":
        return InvalidRange(
            f"the Range header {header[:40]!r} is invalid; give bytes=START-END, "
            "bytes=START- or bytes=-LENGTH with the digits 0-9"
        )
    if match[1] == "":
        return ByteRange(None, None, int(match[2]))
    first = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < first:
        return InvalidRange(
            f"the Range header {header[:40]!r} ends before it starts; give "
            "bytes=START-END with END at least START"
        )
    return ByteRange(first, last)


def range_bounds(requested: ByteRange, size: int) -> tuple[int, int] | None:
    """Return the first and last byte of a range in a blob, or None if unsatisfiable."""
    if requested.first is None:
        length = min(requested.suffix, size)
        if length == 0:
            return None
        return size - length, size - 1
    if requested.first >= size:
        return None
    last = size - 1 if requested.last is None else min(requested.last, size - 1)
    return requested.first, last
