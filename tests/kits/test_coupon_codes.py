"""Coupon codes: format, alphabet, check symbol and normalisation of look-alikes."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from appliance.kits import coupon_code, is_valid_coupon_code
from appliance.kits._coupons import normalise_coupon_code

# Crockford's base32: digits and letters without I, L, O and U.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
FORMAT = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
CODES = [coupon_code() for _ in range(500)]


def with_check_symbol(body: str) -> str:
    """Return ``body`` completed with the one check symbol that validates it."""
    valid = [
        f"{body[:4]}-{body[4:]}{symbol}"
        for symbol in ALPHABET
        if is_valid_coupon_code(body + symbol)
    ]
    assert len(valid) == 1, (body, valid)
    return valid[0]


_SEEDED = random.Random(7)
# Fixed codes, so the exhaustive checks below see the same inputs every run.
FIXED_CODES = [
    with_check_symbol("".join(_SEEDED.choice(ALPHABET) for _ in range(7)))
    for _ in range(64)
] + [with_check_symbol("0000000"), with_check_symbol("ZZZZZZZ")]


def replace_at(code: str, index: int, symbol: str) -> str:
    return code[:index] + symbol + code[index + 1 :]


def symbol_positions(code: str) -> list[int]:
    return [index for index, symbol in enumerate(code) if symbol != "-"]


def test_coupon_code_format() -> None:
    for code in CODES:
        assert FORMAT.match(code), code


def test_coupon_code_alphabet() -> None:
    used = {symbol for code in CODES for symbol in code if symbol != "-"}

    assert used <= set(ALPHABET)
    assert used.isdisjoint(set("ILOU"))
    # 500 codes of 8 symbols use all 32 symbols unless drawing is broken.
    assert used == set(ALPHABET)


def test_coupon_codes_differ() -> None:
    assert len(set(CODES)) == len(CODES)


def test_coupon_code_valid() -> None:
    for code in CODES:
        assert is_valid_coupon_code(code), code


def test_coupon_changed_symbol_caught() -> None:
    escaped = [
        changed
        for code in FIXED_CODES
        for index in symbol_positions(code)
        for symbol in ALPHABET
        if symbol != code[index]
        and is_valid_coupon_code(changed := replace_at(code, index, symbol))
    ]

    assert escaped == []


def test_coupon_swapped_neighbours_caught() -> None:
    escaped = []
    for code in FIXED_CODES:
        positions = symbol_positions(code)
        for left, right in itertools.pairwise(positions):
            if code[left] == code[right]:
                continue  # swapping equal symbols changes nothing
            swapped = replace_at(replace_at(code, left, code[right]), right, code[left])
            if is_valid_coupon_code(swapped):
                escaped.append(swapped)

    assert escaped == []


def test_coupon_one_check_symbol_per_body() -> None:
    # with_check_symbol asserts exactly one valid completion per body.
    assert len(set(FIXED_CODES)) == len(FIXED_CODES)


def test_coupon_lowercase_accepted() -> None:
    for code in CODES[:50]:
        assert is_valid_coupon_code(code.lower())
        assert is_valid_coupon_code(code.replace("-", " "))
        assert is_valid_coupon_code(code.replace("-", ""))


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("abcd-efgh", "ABCDEFGH"),
        ("O0o0-1IiL", "00001111"),
        ("l1l1 i1i1", "11111111"),
        ("  ab cd-ef gh ", "ABCDEFGH"),
    ],
)
def test_coupon_normalise_look_alikes(typed: str, normalised: str) -> None:
    assert normalise_coupon_code(typed) == normalised


def test_coupon_look_alike_letters_accepted() -> None:
    codes = [code for code in CODES if "0" in code or "1" in code][:50]
    for code in codes:
        typed = code.replace("0", "O").replace("1", "I")

        assert is_valid_coupon_code(typed), typed
        assert is_valid_coupon_code(code.replace("1", "l").lower())


@pytest.mark.parametrize(
    "text",
    ["", "ABCD-EFG", "ABCD-EFGHJ", "ABCD-EFG!", "ABCD-EFGU", "ÄBCD-EFGH", "ABCD_EFGH"],
)
def test_coupon_malformed_rejected(text: str) -> None:
    assert not is_valid_coupon_code(text)
