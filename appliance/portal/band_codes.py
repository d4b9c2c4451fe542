"""Band codes: the short code printed on a wristband that proves it is yours.

A guest signs in to the portal with the code on their band (or the band's
QR code, which carries it in the URL fragment). The code is an HMAC-SHA256
of the band id under a key kept on the box, ``<data_dir>/secrets/
portal-band-key``, written as Crockford base32 with a check symbol like the
coupon codes: ``XXXX-XXXX-XXXX``, 11 symbols (55 bits) and the check. Only
someone who has the band, or its printout, can read the code. A wrong guess
is rejected without changing anything.

An HMAC cannot be reversed, so the codes handed out are registered in the
store (``portal_band_codes``) under a keyed hash of the code, and
:func:`band_for_code` looks a code up there and checks it against the key
again. ``nightbox portal band-codes`` registers every code it prints.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from appliance.errors import NightboxError
from appliance.kits._coupons import (
    _ALPHABET,
    _check_symbol,
    normalise_coupon_code,
)
from appliance.store import Store
from provisioning.secret_file import write_secret_file

__all__ = [
    "BandCodeError",
    "band_code",
    "band_for_code",
    "band_key_path",
    "is_well_formed",
    "load_band_key",
    "register_band_codes",
]

_LOGGER = logging.getLogger(__name__)

KEY_BYTES = 32
_BODY_SYMBOLS = 11
_CODE_SYMBOLS = _BODY_SYMBOLS + 1
# Band ids follow the same rule as the bus API's field 'band'.
_BAND = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
# Domain separation: one key makes band codes, their lookup hashes and the
# portal's CSRF tokens, each with its own label.
_CODE_LABEL = b"nightbox band code\x00"
_LOOKUP_LABEL = b"nightbox band code lookup\x00"


class BandCodeError(NightboxError, ValueError):
    """A band code or the band key that cannot be used; the message gives the reason."""


def band_key_path(data_dir: Path) -> Path:
    """Return the path of the box's band code key."""
    return data_dir / "secrets" / "portal-band-key"


def load_band_key(data_dir: Path) -> bytes:
    """Return the box's band code key, generating it on first use (mode 0600).

    The file contains 32 random bytes in hex. Raises BandCodeError when the
    file exists but cannot be read or does not contain a key.
    """
    path = band_key_path(data_dir)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = secrets.token_bytes(KEY_BYTES)
        write_secret_file(path, key.hex().encode() + b"\n")
        _LOGGER.info("Generated the portal's band code key in %s", path)
        return key
    except (OSError, UnicodeDecodeError) as err:
        raise BandCodeError(
            f"cannot read the band code key {path}: {err}; fix its permissions, or "
            "move it away to generate a new key (every printed band code stops "
            "working)"
        ) from err
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise BandCodeError(
            f"{path} does not contain a {KEY_BYTES}-byte key in hex; move it away to "
            "generate a new key (every printed band code stops working)"
        )
    return key


def band_code(key: bytes, band: str) -> str:
    """Return the code of ``band`` under ``key``, formatted ``XXXX-XXXX-XXXX``.

    Raises BandCodeError for a malformed band id.
    """
    if not _BAND.match(band):
        raise BandCodeError(
            f"band {band[:60]!r} is not a band id; use lowercase letters, digits "
            "and '-', such as 'ib-100-7'"
        )
    digest = hmac.new(key, _CODE_LABEL + band.encode(), hashlib.sha256).digest()
    number = int.from_bytes(digest[:8], "big") >> (64 - 5 * _BODY_SYMBOLS)
    body = "".join(
        _ALPHABET[(number >> (5 * (_BODY_SYMBOLS - 1 - index))) & 0x1F]
        for index in range(_BODY_SYMBOLS)
    )
    code = body + _check_symbol(body)
    return f"{code[:4]}-{code[4:8]}-{code[8:]}"


def is_well_formed(text: str) -> bool:
    """Return whether ``text`` reads as a band code with a correct check symbol.

    Case, dashes, spaces and the look-alikes O, I and L are forgiven.
    """
    if len(text) > 3 * _CODE_SYMBOLS:
        return False
    code = normalise_coupon_code(text)
    if len(code) != _CODE_SYMBOLS or any(symbol not in _ALPHABET for symbol in code):
        return False
    return _check_symbol(code[:-1]) == code[-1]


def _lookup_hash(key: bytes, code: str) -> str:
    normalised = normalise_coupon_code(code)
    return hmac.new(
        key, _LOOKUP_LABEL + normalised.encode(), hashlib.sha256
    ).hexdigest()


def register_band_codes(
    store: Store, key: bytes, bands: Iterable[str], now: float
) -> dict[str, str]:
    """Register the codes of ``bands`` so the portal accepts them; return them.

    ``now`` is the Unix time recorded with each. Registering a band again
    replaces its row, so a code made with a new key replaces the old one.
    Raises BandCodeError for a malformed band id before anything is written.
    """
    codes = {band: band_code(key, band) for band in bands}
    with store.transaction() as transaction:
        for band, code in codes.items():
            transaction.execute("DELETE FROM portal_band_codes WHERE band = ?", (band,))
            transaction.execute(
                "INSERT INTO portal_band_codes (code_hash, band, registered_at)"
                " VALUES (?, ?, ?)",
                (_lookup_hash(key, code), band, now),
            )
    return codes


def band_for_code(store: Store, key: bytes, text: str) -> str | None:
    """Return the band whose registered code is ``text``, or None.

    Raises BandCodeError when ``text`` is not a well-formed code, which a
    typing error usually is; the message contains no part of it.
    """
    if not is_well_formed(text):
        raise BandCodeError(
            "the band code is not valid; type the 12 letters and digits printed "
            "on your band, such as 7K2M-XQ4B-ZP3D"
        )
    row = store.query_one(
        "SELECT band FROM portal_band_codes WHERE code_hash = ?",
        (_lookup_hash(key, text),),
    )
    if row is None:
        return None
    band = str(row[0])
    # The row is only an index: the code must still be this band's under the
    # key, so a row written without the key opens nothing.
    expected = normalise_coupon_code(band_code(key, band))
    if not hmac.compare_digest(expected, normalise_coupon_code(text)):
        return None
    return band
