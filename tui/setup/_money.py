"""Amounts typed in major units ("15.00") turned into the wallet's minor units."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from appliance.currency import minor_unit_digits

_AMOUNT = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")


def to_minor_units(text: str, currency: str) -> int:
    """Convert ``"15.00"`` to 1500 for EUR; raise ValueError naming the text.

    The amount must be positive and have at most the currency's decimals.
    """
    digits = minor_unit_digits(currency)
    cleaned = text.strip()
    example = "15" if digits == 0 else "15." + "0" * digits
    if not _AMOUNT.match(cleaned):
        raise ValueError(
            f"{text!r:.40} is not an amount; type a number such as {example!r}"
        )
    decimals = len(cleaned.partition(".")[2])
    if decimals > digits:
        raise ValueError(
            f"{text!r:.40} has {decimals} decimals but {currency} has {digits}; "
            f"type an amount such as {example!r}"
        )
    try:
        minor = int(Decimal(cleaned).scaleb(digits))
    except InvalidOperation as err:
        raise ValueError(f"{text!r:.40} is not an amount") from err
    if minor <= 0:
        raise ValueError(f"{text!r:.40} is zero; type an amount above zero")
    return minor


def to_major_text(minor: int, currency: str) -> str:
    """Format minor units as the organiser types them: 1500 EUR gives "15.00"."""
    digits = minor_unit_digits(currency)
    if digits == 0:
        return str(minor)
    whole, fraction = divmod(minor, 10**digits)
    return f"{whole}.{fraction:0{digits}d}"
