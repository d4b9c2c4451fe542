"""Formatting of amounts and times for guests, on the portal and the night sign."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from appliance.commerce.config import CommerceConfig
from appliance.currency import minor_unit_digits


def money(amount: int, currency: str) -> str:
    """Return ``amount`` minor units as ``4.50 EUR`` (``500 JPY`` for JPY)."""
    digits = minor_unit_digits(currency)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**digits)
    if digits == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{fraction:0{digits}d} {currency}"


# Dates further than this from the current night carry their year, so a
# weekday and day of a date half a year away are not read as this year's.
_YEAR_SHOWN_AFTER_S = 182 * 86400


def local_time(
    t: float, timezone: str, *, with_date: bool = False, with_year: bool = False
) -> str:
    """Return Unix time ``t`` in the site's time zone as ``Sat 23:30``.

    With ``with_date`` the day and month come too: ``Thu 4 Jun, 20:41``,
    and with ``with_year`` also the year: ``Tue 28 Dec 2027, 13:20``.
    """
    local = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(timezone))
    if not with_date:
        return local.strftime("%a %H:%M")
    year = f" {local.year}" if with_year else ""
    return f"{local:%a} {local.day} {local:%b}{year}, {local:%H:%M}"


def night_time(t: float, commerce: CommerceConfig, night_at: float) -> str:
    """Return ``t`` as ``Thu 20:41``, with the date when it is not on one night.

    The date is left out only when ``t`` belongs to the same night (see
    :meth:`CommerceConfig.night_of`) as Unix time ``night_at``, so a coupon
    valid for a week reads ``Thu 11 Jun, 20:41`` and not as a time tonight.
    The year is added when ``t`` is in another year than ``night_at`` or
    more than about six months away from it: ``Tue 28 Dec 2027, 13:20``.
    """
    night = commerce.night_of(t)
    reference_night = commerce.night_of(night_at)
    zone = zoneinfo.ZoneInfo(commerce.timezone)
    other_year = (
        dt.datetime.fromtimestamp(t, zone).year
        != dt.datetime.fromtimestamp(night_at, zone).year
        or abs(t - night_at) > _YEAR_SHOWN_AFTER_S
    )
    return local_time(
        t,
        commerce.timezone,
        with_date=night != reference_night,
        with_year=other_year,
    )
