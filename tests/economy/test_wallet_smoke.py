from __future__ import annotations

from economy_site import economy_site_config, terminal, top_up  # noqa: F401


async def test_topup_charge_refund(box, terminal) -> None:
    async with terminal("bar-1") as bar:
        topped = await top_up(bar, "ib-1-5", 2000)
        assert topped["balance"] == 2000
        charged = await bar.call(
            "wallet", "charge", band="ib-1-5", item="beer", quantity=2, amount=900,
            currency="EUR", creator="MAYA",
        )
        assert charged["balance"] == 1100
        refund = await bar.call("wallet", "refund", transaction_id=charged["transaction_id"])
        assert refund["balance"] == 2000
        claim = await bar.call("drops", "claim", drop="tee-drop", band="ib-1-5", pay=False)
        print(claim)
        await top_up(bar, "ib-1-5", 2000)
        paid = await bar.call("drops", "pay", claim=claim["claim"])
        print(paid)
        picked = await bar.call("drops", "pickup", code=paid["pickup_code"])
        print(picked)
    print(box.status()["drops"])
