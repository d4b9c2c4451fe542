"""Checks on kit and opt-in requests; each error names the field and value."""

from __future__ import annotations

import math
import re
from typing import Any

from appliance.errors import PayloadError

_BAND = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")
_WALLET = re.compile(r"^[A-Za-z0-9._:-]{4,64}\Z")
# A practical address check (local@domain.tld); delivery proves the rest.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z"
)
MAX_CONSENT_TEXT = 500
# A station dates an offline issue from the box's clock beacon, so a time
# before 2020-01-01 comes from a reader that never had the time.
_MIN_OFFLINE_AT = 1_577_836_800
_MAX_OFFLINE_AT = 2**32 - 1


def band_id(data: dict[str, Any]) -> str:
    """Return the request's ``band`` or raise PayloadError."""
    value = data.get("band")
    if not isinstance(value, str) or not _BAND.match(value):
        raise PayloadError(
            f"field 'band' must be a band id like 'ib-100-7', not {value!r:.60}"
        )
    return value


def contact(data: dict[str, Any]) -> tuple[str, str]:
    """Return ``("email", address)`` or ``("wallet", id)`` from an opt-in request."""
    email = data.get("email")
    wallet = data.get("wallet_id")
    if (email is None) == (wallet is None):
        raise PayloadError("give exactly one of 'email' or 'wallet_id'")
    if email is not None:
        if not isinstance(email, str) or len(email) > 254 or not _EMAIL.match(email):
            # The value is not repeated: rejected requests are logged, and a
            # mistyped address is still a guest's contact.
            raise PayloadError(
                "field 'email' is not a valid address; give one like "
                "name@example.org, at most 254 characters"
            )
        return "email", email.strip()
    if not isinstance(wallet, str) or not _WALLET.match(wallet):
        raise PayloadError(
            "field 'wallet_id' must be 4-64 letters, digits or ._:-; the value "
            "given is not one"
        )
    return "wallet", wallet


def consent_text(data: dict[str, Any]) -> str:
    """Return the consent text the guest agreed to; consent must be ``true``."""
    if data.get("consent") is not True:
        raise PayloadError(
            "field 'consent' must be true; contact details are stored only with consent"
        )
    text = data.get("consent_text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CONSENT_TEXT:
        raise PayloadError(
            f"field 'consent_text' must be the 1-{MAX_CONSENT_TEXT} character text "
            "the guest agreed to"
        )
    return text


def offline_at(data: dict[str, Any]) -> float | None:
    """Return the request's ``offline_at`` in Unix seconds, or None without one.

    Raises PayloadError for anything but a number between 2020-01-01 and
    the 32-bit Unix time limit.
    """
    value = data.get("offline_at")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not _MIN_OFFLINE_AT <= value <= _MAX_OFFLINE_AT
    ):
        raise PayloadError(
            "field 'offline_at' must be the Unix time in seconds at which the "
            f"station handed out the kit offline, not {value!r:.40}"
        )
    return float(value)
