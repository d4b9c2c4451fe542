"""The token QR code in half blocks: the modules drawn are exactly qrcode's.

A scanner reads the modules, so the test rebuilds the module matrix from
the drawn characters and compares it with the matrix of the qrcode package
for the same data, quiet zone included.
"""

from __future__ import annotations

import qrcode
from qrcode.constants import ERROR_CORRECT_L

from tui.qr import (
    EMPTY,
    FULL,
    LOWER,
    QUIET_ZONE_MODULES,
    UPPER,
    half_block_lines,
    qr_matrix,
    qr_text,
)

# The halves (upper, lower) that each drawn character stands for.
HALVES = {
    FULL: (True, True),
    UPPER: (True, False),
    LOWER: (False, True),
    EMPTY: (False, False),
}


def modules_from_lines(lines: list[str]) -> list[list[bool]]:
    """Rebuild the module matrix from half-block lines (two rows per line)."""
    rows: list[list[bool]] = []
    for line in lines:
        rows.append([HALVES[character][0] for character in line])
        rows.append([HALVES[character][1] for character in line])
    return rows


def reference_matrix(data: str) -> list[list[bool]]:
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_L, border=QUIET_ZONE_MODULES)
    code.add_data(data)
    code.make(fit=True)
    return [[bool(module) for module in row] for row in code.get_matrix()]


def test_drawn_modules_match_qrcode() -> None:
    token = "eyJhbGciOiJFZERTQSJ9." + "x" * 300 + ".c2lnbmF0dXJl"
    reference = reference_matrix(token)
    drawn = modules_from_lines(qr_text(token).plain.split("\n"))

    # An odd module count leaves one light padding row under the symbol.
    assert len(reference) % 2 == 1
    assert drawn[: len(reference)] == reference
    assert drawn[len(reference) :] == [[False] * len(reference)]


def test_quiet_zone_is_kept() -> None:
    matrix = qr_matrix("nightbox")
    border = QUIET_ZONE_MODULES

    for row in matrix[:border] + matrix[-border:]:
        assert not any(row)
    for row in matrix:
        assert not any(row[:border])
        assert not any(row[-border:])
    # The finder pattern's dark corner starts right inside the quiet zone.
    assert matrix[border][border]


def test_lines_have_one_cell_per_module() -> None:
    matrix = qr_matrix("short")
    lines = half_block_lines(matrix)

    assert len(lines) == (len(matrix) + 1) // 2
    assert {len(line) for line in lines} == {len(matrix)}
    assert set("".join(lines)) <= set(HALVES)
