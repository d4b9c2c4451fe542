"""Checks on money fields of requests; each error names the field and value."""

from __future__ import annotations

import re
from typing import Any

from appliance.commerce.config import MAX_AMOUNT
from appliance.errors import PayloadError

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")


def currency(data: dict[str, Any], expected: str) -> str:
    """Return the request's ``currency`` if it is the site's currency."""
    value = data.get("currency")
    if value is None:
        raise PayloadError(
            f"missing field 'currency'; send {expected!r}, the currency of this "
            "site's wallets"
        )
    if not isinstance(value, str) or value != expected:
        raise PayloadError(
            f"field 'currency' is {value!r:.20}, but this site's wallets hold "
            f"{expected}; send amounts in {expected} minor units"
        )
    return value


def amount(data: dict[str, Any], key: str = "amount", *, minimum: int = 1) -> int:
    """Return a whole amount in minor units from ``data[key]``.

    Raises PayloadError for a missing, fractional, negative or overflowing
    value, or a boolean or string that looks like a number.
    """
    value = data.get(key)
    if value is None:
        raise PayloadError(f"missing field {key!r} (an amount in minor units)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(
            f"field {key!r} must be a whole number of minor units (450 for 4.50),"
            f" not {value!r:.40}"
        )
    if value < minimum:
        raise PayloadError(
            f"field {key!r} = {value} is below {minimum}; amounts are positive "
            "minor units, and a refund is its own request"
        )
    if value > MAX_AMOUNT:
        raise PayloadError(
            f"field {key!r} = {value!r:.40} is above the maximum of {MAX_AMOUNT} "
            "minor units"
        )
    return value


def quantity(data: dict[str, Any], maximum: int = 100) -> int:
    """Return the request's ``quantity``, 1 when absent."""
    value = data.get("quantity", 1)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= maximum
    ):
        raise PayloadError(
            f"field 'quantity' must be a whole number from 1 to {maximum}, "
            f"not {value!r:.40}"
        )
    return value


def identifier(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    """Return an id field (1-64 letters, digits or ._:-), or None when optional."""
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise PayloadError(
            f"field {key!r} must be an id of 1-64 letters, digits or ._:-, "
            f"not {value!r:.60}"
        )
    return value
