"""A band's contact across opt-ins, and the coupon at opt-in across nights.

A guest who opts in again replaces the contact on the opt-in and on the
band's unredeemed coupon, so the follow-up offer goes to the contact the
guest consented to last. A kit earns a coupon at a later opt-in only on the
night it was issued. The box runs on the analytics site's manual clock,
which these tests move past the night's rollover (12:00 UTC).
"""

from __future__ import annotations

from typing import Any

from tests.analytics.analytics_site import (  # noqa: F401 - registers the fixtures
    NIGHT_START,
    Night,
    band,
    config_path_fixture,
    night_fixture,
    site_config_fixture,
)

FIRST_EMAIL = "First.Guest@Example.org"
SECOND_EMAIL = "second.guest@example.org"
WALLET_ID = "wallet:000042"
CONSENT = "Send me one follow-up offer after tonight."


async def opt_in(
    night: Night, number: int, key: str | None = None, **contact: str
) -> dict[str, Any]:
    """Opt band ``number`` in with ``contact``; return the reply's data."""
    fields: dict[str, Any] = {
        "band": band(number),
        "consent": True,
        "consent_text": CONSENT,
        **contact,
    }
    if key is not None:
        fields["idempotency_key"] = key
    return await night.call("optin", "register", terminal="desk", **fields)


def coupon_contacts(night: Night, number: int) -> list[tuple[str, str]]:
    return night.box.store.query(
        "SELECT contact_kind, contact FROM coupons WHERE band = ?", (band(number),)
    )


def optin_contacts(night: Night, number: int) -> list[tuple[str, str]]:
    return night.box.store.query(
        "SELECT contact_kind, contact FROM optins WHERE band = ?", (band(number),)
    )


async def test_second_optin_moves_coupon(night: Night) -> None:
    await night.kit(1)
    first = await opt_in(night, 1, email=FIRST_EMAIL)

    second = await opt_in(night, 1, wallet_id=WALLET_ID)

    assert first["coupon"] is not None
    assert second["coupon"] is None
    assert optin_contacts(night, 1) == [("wallet", WALLET_ID)]
    assert coupon_contacts(night, 1) == [("wallet", WALLET_ID)]


async def test_optin_then_kit_then_optin(night: Night) -> None:
    await opt_in(night, 2, email=FIRST_EMAIL)
    coupon = await night.kit(2)

    await opt_in(night, 2, email=SECOND_EMAIL)

    assert coupon is not None
    assert coupon_contacts(night, 2) == [("email", SECOND_EMAIL)]


async def test_redeemed_coupon_keeps_contact(night: Night) -> None:
    await opt_in(night, 3, email=FIRST_EMAIL)
    await night.kit(3)
    await night.redeem(3)

    await opt_in(night, 3, email=SECOND_EMAIL)

    assert coupon_contacts(night, 3) == [("email", FIRST_EMAIL)]
    assert optin_contacts(night, 3) == [("email", SECOND_EMAIL)]


async def test_new_contact_clears_old_fingerprints(night: Night) -> None:
    store = night.box.store
    first = await opt_in(night, 4, key="optin-first-0004", email=FIRST_EMAIL)
    await opt_in(night, 4, key="optin-again-0004", email=FIRST_EMAIL)
    fingerprinted = store.query(
        "SELECT key FROM requests WHERE fingerprint IS NOT NULL ORDER BY key"
    )

    await opt_in(night, 4, key="optin-second-0004", email=SECOND_EMAIL)
    retried = await opt_in(night, 4, key="optin-first-0004", email=FIRST_EMAIL)

    # The same contact again leaves the fingerprints as they are.
    assert fingerprinted == [("optin-again-0004",), ("optin-first-0004",)]
    assert store.query(
        "SELECT key FROM requests WHERE action = 'optin/register'"
        " AND fingerprint IS NOT NULL"
    ) == [("optin-second-0004",)]
    # A retry of the first request gets its stored reply and changes nothing.
    assert retried == first
    assert optin_contacts(night, 4) == [("email", SECOND_EMAIL)]


async def test_kit_of_earlier_night_earns_none(night: Night) -> None:
    await night.kit(5)
    await night.kit(6)
    # The last second of the kits' night, and the first of the next one.
    night.clock.advance_to(NIGHT_START + 24 * 3600 - 1)
    same_night = await opt_in(night, 5, email=FIRST_EMAIL)
    night.clock.advance_to(NIGHT_START + 24 * 3600)

    next_night = await opt_in(night, 6, email=SECOND_EMAIL)

    assert same_night["coupon"] is not None
    assert next_night["coupon"] is None
    assert coupon_contacts(night, 6) == []
    assert night.box.store.query("SELECT band FROM coupons") == [(band(5),)]
