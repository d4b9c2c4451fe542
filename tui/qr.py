"""A QR code drawn with half-block characters, for a terminal to scan a token from.

Each character cell shows two modules stacked: the upper half block
(U+2580) is a dark module above a light one, the lower half block (U+2584)
the opposite, the full block (U+2588) two dark ones and a space two light
ones. The text is drawn dark on light whatever the terminal's colours are,
and keeps the quiet zone around the symbol that scanners need to find it.
"""

from __future__ import annotations

import qrcode
from qrcode.constants import ERROR_CORRECT_L
from rich.style import Style
from rich.text import Text

UPPER = "\u2580"
LOWER = "\u2584"
FULL = "\u2588"
EMPTY = " "
# The QR specification asks for a light border of four modules.
QUIET_ZONE_MODULES = 4
_STYLE = Style(color="black", bgcolor="white")


def qr_matrix(data: str, *, border: int = QUIET_ZONE_MODULES) -> list[list[bool]]:
    """Return the modules of the smallest QR code holding ``data``, quiet zone included.

    ``True`` is a dark module. Error correction level L keeps a token of a
    few hundred characters small enough for an 80-column terminal.
    """
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_L, border=border)
    code.add_data(data)
    code.make(fit=True)
    return [[bool(module) for module in row] for row in code.get_matrix()]


def half_block_lines(matrix: list[list[bool]]) -> list[str]:
    """Draw ``matrix`` two module rows per line; an odd last row gets a light row."""
    lines = []
    for top_index in range(0, len(matrix), 2):
        top = matrix[top_index]
        has_bottom = top_index + 1 < len(matrix)
        bottom = matrix[top_index + 1] if has_bottom else [False] * len(top)
        cells = (_cell(upper, lower) for upper, lower in zip(top, bottom, strict=True))
        lines.append("".join(cells))
    return lines


def _cell(upper: bool, lower: bool) -> str:
    if upper and lower:
        return FULL
    if upper:
        return UPPER
    if lower:
        return LOWER
    return EMPTY


def qr_text(data: str, *, border: int = QUIET_ZONE_MODULES) -> Text:
    """Return ``data`` as a QR code in half blocks, styled dark on light."""
    lines = half_block_lines(qr_matrix(data, border=border))
    return Text("\n".join(lines), style=_STYLE, no_wrap=True, overflow="crop")
