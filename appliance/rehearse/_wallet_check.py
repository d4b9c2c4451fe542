"""The wallet self-test: a top-up that is voided, through the box's real requests.

The rehearsal issues itself an edge token for the console, tops up a
wallet of a band that no guest wears, voids the top-up and checks that the
balance is back where it started. It revokes the token afterwards and
checks that the box then rejects it. The ledger keeps both transactions,
which net to zero.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from appliance.errors import RequestError
from appliance.rehearse._checks import Context, Outcome, failed, passed
from appliance.rehearse._link import RehearsalLink
from provisioning.site_access import CONSOLE

_SCOPES = ("wallet:topup", "pos:charge", "pos:void")
# Long enough for the self-test, which revokes the token when it ends.
_TOKEN_TTL_S = 300.0
_REQUEST_TIMEOUT_S = 5.0
# A band id that no wristband derives (those start ib-, alt-, uid-).
_BAND_PREFIX = "rehearsal-"


async def _request(
    link: RehearsalLink, token: str, action: str, data: dict[str, Any]
) -> dict[str, Any]:
    topic = link.bus.topics.api("wallet", action)
    return await link.bus.request(
        topic, data, timeout_s=_REQUEST_TIMEOUT_S, token=token
    )


async def check_wallet(context: Context) -> Outcome:
    """Top up and void a test wallet, then check the balance and the revocation."""
    target = context.target
    band = f"{_BAND_PREFIX}{secrets.token_hex(4)}"
    amount = min(100, target.config.commerce.wallet.max_topup)
    issued = target.tokens.issue(CONSOLE, _SCOPES, _TOKEN_TTL_S)
    token_id = issued.claims.token_id
    facts: dict[str, Any] = {"band": band, "amount": amount, "token_id": token_id}

    try:
        facts |= await _topup_and_void(context, issued.token, band, amount)
    except RequestError as err:
        return failed(f"a self-test request failed ({err}); see the box's log", **facts)
    finally:
        target.tokens.revoke(token_id, "rehearsal self-test finished")

    before = facts["balance_before"]
    if facts["balance_topped_up"] != before + amount:
        return failed(
            f"a top-up of {amount} moved the balance from {before} to "
            f"{facts['balance_topped_up']}; run 'nightbox wallet report' to check "
            "the ledger",
            **facts,
        )
    if facts["balance_after"] != before:
        return failed(
            f"voiding the top-up left the balance at {facts['balance_after']}, not "
            f"{before}; run 'nightbox wallet report' to check the ledger",
            **facts,
        )
    problem = await _rejected_after_revoke(context.link, issued.token, band)
    if problem is not None:
        return failed(problem, **facts)
    return passed(
        f"topped up {amount} and voided it on band {band}: balance unchanged; the "
        f"self-test's token {token_id} is revoked and rejected",
        **facts,
    )


async def _topup_and_void(
    context: Context, token: str, band: str, amount: int
) -> dict[str, Any]:
    """Top up ``band``, void the top-up, and return the balances and its id."""
    link = context.link
    currency = context.target.config.commerce.wallet.currency
    before = await _request(link, token, "balance", {"band": band})
    topup = await _request(
        link,
        token,
        "topup",
        {
            "band": band,
            "amount": amount,
            "currency": currency,
            "method": "cash",
            "idempotency_key": str(uuid.uuid4()),
        },
    )
    topped = await _request(link, token, "balance", {"band": band})
    transaction_id = topup.get("transaction_id")
    await _request(
        link,
        token,
        "void",
        {"transaction_id": transaction_id, "idempotency_key": str(uuid.uuid4())},
    )
    after = await _request(link, token, "balance", {"band": band})
    return {
        "transaction_id": transaction_id,
        "balance_before": before.get("balance"),
        "balance_topped_up": topped.get("balance"),
        "balance_after": after.get("balance"),
    }


async def _rejected_after_revoke(
    link: RehearsalLink, token: str, band: str
) -> str | None:
    try:
        await _request(link, token, "balance", {"band": band})
    except RequestError as err:
        # The box prefixes token rejections with "token-".
        if err.code in ("token-revoked", "revoked"):
            return None
        return f"the revoked self-test token was rejected as {err.code!r}, not revoked"
    return (
        "the box still accepts the self-test's token after it was revoked; the "
        "box must read revoked_tokens from its store on every request"
    )
