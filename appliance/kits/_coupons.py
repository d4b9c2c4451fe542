"""Short coupon codes that survive being read aloud or typed from a screen.

Codes use Crockford's base32 alphabet, which leaves out I, L, O and U so no
two symbols look alike, and end with a check symbol so a mistyped code is
caught at the counter before any lookup. Format: ``XXXX-XXXX``.
"""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_BODY_LENGTH = 7


def _check_symbol(body: str) -> str:
    # Position-weighted sum, so swapping two neighbours changes the check.
    total = sum(
        (index + 1) * _ALPHABET.index(symbol) for index, symbol in enumerate(body)
    )
    return _ALPHABET[total % len(_ALPHABET)]


def coupon_code() -> str:
    """Return a new random code: 7 symbols (35 bits) plus a check symbol."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    code = body + _check_symbol(body)
    return f"{code[:4]}-{code[4:]}"


def normalise_coupon_code(text: str) -> str:
    """Upper-case ``text``, drop dashes and spaces, map O to 0 and I or L to 1."""
    cleaned = text.upper().replace("-", "").replace(" ", "")
    return cleaned.translate(str.maketrans("OIL", "011"))


def is_valid_coupon_code(text: str) -> bool:
    """Return whether ``text`` is a well-formed code with a correct check symbol."""
    code = normalise_coupon_code(text)
    if len(code) != _BODY_LENGTH + 1 or any(symbol not in _ALPHABET for symbol in code):
        return False
    return _check_symbol(code[:-1]) == code[-1]
