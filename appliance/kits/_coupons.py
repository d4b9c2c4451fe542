"""Short coupon codes that survive being read aloud or typed from a screen.

Codes use Crockford's base32 alphabet, which leaves out I, L, O and U so no
two symbols look alike, and end with a check symbol so a mistyped code is
caught at the counter before any lookup. Format: ``XXXX-XXXX``.
"""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_BODY_LENGTH = 7
# x^5 + x^2 + 1, a primitive polynomial of GF(32): one field element per symbol.
_GF32_POLYNOMIAL = 0b100101


def _check_symbol(body: str) -> str:
    # Damm's check over the quasigroup x * y = 2x + y in GF(32), where adding
    # is XOR. The quasigroup is totally anti-symmetric, so the check catches
    # every single changed symbol and every swap of two neighbours, the check
    # symbol included. The trailing 0 makes the result c = 2x, the symbol for
    # which x * c = 0.
    interim = 0
    for value in [*(_ALPHABET.index(symbol) for symbol in body), 0]:
        interim <<= 1
        if interim & 0b100000:
            interim ^= _GF32_POLYNOMIAL
        interim ^= value
    return _ALPHABET[interim]


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
