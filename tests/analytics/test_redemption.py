"""Redemption of follow-up coupons through ``api/offers/redeem``, and its funnel."""

from __future__ import annotations

import uuid

from analytics_site import (  # noqa: F401 - registers the fixtures
    COUPON_TTL_H,
    EVENING,
    NIGHT,
    Night,
    band,
    config_path_fixture,
    night_fixture,
    site_config_fixture,
)

from appliance.analytics.figures import night_figures
from appliance.kits._coupons import coupon_code

EMAIL = "coupon.guest@example.org"


async def coupon_for(night: Night, number: int) -> str:
    await night.opt_in(number, email=EMAIL)
    coupon = await night.kit(number)
    assert coupon is not None
    return str(coupon["code"])


async def redeem(night: Night, code: str, key: str | None = None) -> dict[str, object]:
    return await night.request(
        "offers",
        "redeem",
        terminal="desk",
        code=code,
        idempotency_key=key or uuid.uuid4().hex,
    )


async def test_coupon_redeemed_once(night: Night) -> None:
    code = await coupon_for(night, 1)
    typed = code.lower().replace("-", "")

    redeemed = await redeem(night, typed)
    again = await redeem(night, code)

    assert redeemed == {
        "ok": True,
        "data": {
            "code": code,
            "offer": night.box.config.coupon_offer,
            "band": band(1),
            "redeemed_at": EVENING,
            "kind": "coupon",
        },
    }
    assert again["ok"] is False
    assert again["error"] == {
        "code": "already-redeemed",
        "message": f"coupon {code} was redeemed",
        "redeemed_at": EVENING,
    }
    assert night.box.store.query(
        "SELECT redeemed_at, redeemed_by FROM coupons WHERE code = ?", (code,)
    ) == [(EVENING, "desk")]
    (body,) = night.box.store.query_one(
        "SELECT body FROM outbox WHERE type = 'coupon_redeemed'"
    ) or (None,)
    assert body is not None
    assert code in body
    assert EMAIL not in body
    assert "contact" not in body


async def test_redeem_retry_gets_same_reply(night: Night) -> None:
    code = await coupon_for(night, 1)
    key = uuid.uuid4().hex

    first = await redeem(night, code, key)
    night.clock.advance_to(EVENING + 30)
    retry = await redeem(night, code, key)

    assert first["ok"] is True
    assert retry == first
    assert night.box.store.query(
        "SELECT COUNT(*) FROM outbox WHERE type = 'coupon_redeemed'"
    ) == [(1,)]


async def test_redeem_unknown_and_mistyped(night: Night) -> None:
    code = await coupon_for(night, 1)
    unissued = coupon_code()
    while unissued == code:
        unissued = coupon_code()
    # Changing one symbol breaks the check symbol.
    first = "1" if code[0] != "1" else "2"
    mistyped = first + code[1:]

    unknown = await redeem(night, unissued)
    typo = await redeem(night, mistyped)

    assert unknown["error"]["code"] == "unknown-code"
    assert unknown["error"]["message"] == f"coupon code {unissued} was not issued here"
    assert typo["error"]["code"] == "unknown-code"
    assert "valid check symbol" in typo["error"]["message"]
    assert night.box.store.query(
        "SELECT redeemed_at FROM coupons WHERE code = ?", (code,)
    ) == [(None,)]


async def test_redeem_expired_coupon(night: Night) -> None:
    code = await coupon_for(night, 1)
    expires_at = EVENING + COUPON_TTL_H * 3600
    night.clock.advance_to(expires_at)

    expired = await redeem(night, code)

    assert expired["error"] == {
        "code": "coupon-expired",
        "message": f"coupon {code} expired",
        "expires_at": expires_at,
    }
    assert night.box.store.query(
        "SELECT redeemed_at FROM coupons WHERE code = ?", (code,)
    ) == [(None,)]


async def test_redemption_funnel(night: Night) -> None:
    for number in range(1, 7):
        await coupon_for(night, number)
    for number in range(1, 3):
        await night.redeem(number)

    def funnel() -> dict[str, object]:
        kits: dict[str, object] = night_figures(
            night.box.store, night.box.config, NIGHT
        )["kits"]
        return kits

    hidden = {"guests": None, "suppressed": True}
    # 2 redeemed: too few, and the 4 not redeemed are too few as well.
    assert funnel() == {
        "kits": {"guests": 6, "suppressed": False},
        "coupons_issued": {"guests": 6, "suppressed": False},
        "coupons_redeemed": hidden,
    }
    for number in range(3, 6):
        await night.redeem(number)
    # 5 redeemed would be shown, but 6 - 5 gives back the one guest who
    # did not redeem.
    assert funnel()["coupons_redeemed"] == hidden
    await night.redeem(6)
    assert funnel()["coupons_redeemed"] == {"guests": 6, "suppressed": False}
