"""How the portal and the night sign write amounts and times for guests."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from appliance.currency import minor_unit_digits


def money(amount: int, currency: str) -> str:
    """Return ``amount`` minor units as ``4.50 EUR`` (``500 JPY`` for JPY)."""
    digits = minor_unit_digits(currency)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**digits)
    if digits == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{fraction:0{digits}d} {currency}"


def local_time(t: float, timezone: str) -> str:
    """Return Unix time ``t`` as the site's weekday and clock time, ``Sat 23:30``."""
    local = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(timezone))
    return local.strftime("%a %H:%M")
