"""``console/unlock``: the PIN, the lock-out that survives a restart, the token."""

from __future__ import annotations

import asyncio

from appliance.bus.broker import BrokerHandle
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials
from tests.conftest import ClientFactory
from tests.console.console_site import (
    PIN,
    WRONG_PIN,
    call,
    console_client,
    refused,
    set_pin,
    unlock,
)

UNLOCK_SCOPES = {
    "console:admin",
    "pos:charge",
    "pos:refund",
    "pos:void",
    "wallet:topup",
    "drops:claim",
    "drops:manage",
    "drops:pickup",
    "offers:redeem",
    "kits:issue",
    "optin:register",
}


async def test_unlock_right_pin(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        reply = await call(console, "unlock", {"pin": PIN}, mutating=True)
        tokens = await call(console, "tokens", token=reply["token"])

    assert set(reply["scopes"]) == UNLOCK_SCOPES
    assert reply["ttl_s"] == 900
    assert reply["expires_at"] - box.clock.now() <= 900
    listed = {token["token_id"]: token for token in tokens["tokens"]}
    assert listed[reply["token_id"]]["subject"] == "console"
    assert listed[reply["token_id"]]["revoked"] is False


async def test_unlock_without_pin(box: Box, make_client: ClientFactory) -> None:
    async with console_client(make_client) as console:
        error = await refused(console, "unlock", {"pin": PIN}, mutating=True)

    assert error.code == "no-pin"
    assert "nightbox console set-pin" in error.message


async def test_unlock_invalid_pin_field(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        error = await refused(console, "unlock", {"pin": 480213}, mutating=True)
        after = await refused(console, "unlock", {"pin": WRONG_PIN}, mutating=True)

    assert error.code == "invalid-request"
    assert "'pin'" in error.message
    # The malformed request did not count as a wrong PIN.
    assert after.details["attempts_left"] == 4


async def test_wrong_pins_count_down(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        errors = [
            await refused(console, "unlock", {"pin": WRONG_PIN}, mutating=True)
            for _ in range(5)
        ]
        locked = await refused(console, "unlock", {"pin": PIN}, mutating=True)

    assert [error.code for error in errors[:4]] == ["wrong-pin"] * 4
    assert [error.details["attempts_left"] for error in errors[:4]] == [4, 3, 2, 1]
    assert errors[4].code == "locked-out"
    assert errors[4].details["retry_after_s"] == 60
    assert locked.code == "locked-out"
    assert 0 < locked.details["retry_after_s"] <= 60


async def test_right_pin_resets_count(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        for _ in range(3):
            await refused(console, "unlock", {"pin": WRONG_PIN}, mutating=True)
        await unlock(console)
        error = await refused(console, "unlock", {"pin": WRONG_PIN}, mutating=True)

    assert error.code == "wrong-pin"
    assert error.details["attempts_left"] == 4


async def test_lockout_survives_restart(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
) -> None:
    set_pin(site_config)

    def new_box() -> Box:
        return Box(
            site_config,
            SystemClock(TimeSource.NTP),
            credentials,
            mosquitto.host,
            mosquitto.port,
            broker_kind=mosquitto.kind,
        )

    async with new_box() as first:
        await asyncio.wait_for(first.bus.connected.wait(), timeout=10)
        async with console_client(make_client) as console:
            for _ in range(5):
                await refused(console, "unlock", {"pin": WRONG_PIN}, mutating=True)
    async with new_box() as second:
        await asyncio.wait_for(second.bus.connected.wait(), timeout=10)
        async with console_client(make_client) as console:
            error = await refused(console, "unlock", {"pin": PIN}, mutating=True)

    assert error.code == "locked-out"
    assert 0 < error.details["retry_after_s"] <= 60


async def test_unlock_reply_not_stored(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    data = {"pin": PIN, "idempotency_key": "unlock-retry-0001"}
    async with console_client(make_client) as console:
        first = await call(console, "unlock", data, mutating=True)
        retry = await call(console, "unlock", data, mutating=True)

    stored = box.store.query(
        "SELECT action FROM requests WHERE action = 'console/unlock'"
    )
    assert stored == []
    assert retry["token_id"] != first["token_id"]
    assert box.requests.counts["console/unlock:ok"] == 2
    assert box.requests.counts["replayed"] == 0
    rows = box.store.query("SELECT reply FROM requests")
    assert not any(first["token"] in row[0] for row in rows)


async def test_wrong_pin_retry_counts_again(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    data = {"pin": WRONG_PIN, "idempotency_key": "unlock-retry-0002"}
    async with console_client(make_client) as console:
        first = await refused(console, "unlock", data, mutating=True)
        retry = await refused(console, "unlock", data, mutating=True)

    assert first.details["attempts_left"] == 4
    assert retry.details["attempts_left"] == 3


async def test_other_terminal_not_console(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with make_client("terminal-desk", "terminal", "desk") as desk:
        unlock_error = await refused(desk, "unlock", {"pin": PIN}, mutating=True)
        overview_error = await refused(desk, "overview")
        nearby_error = await refused(desk, "nearby")

    assert unlock_error.code == "not-console"
    assert overview_error.code == "not-console"
    assert nearby_error.code == "not-console"
    assert "desk" in overview_error.message
    lockout = box.store.query("SELECT failures FROM console_lockout")
    assert lockout == []


async def test_admin_action_from_desk_token(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    token = box.tokens.issue("desk", ["console:admin"], 600).token
    async with make_client("terminal-desk", "terminal", "desk") as desk:
        error = await refused(desk, "tokens", token=token)

    assert error.code == "not-console"


async def test_unlock_needs_idempotency_key(
    box: Box, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    set_pin(site_config)
    async with console_client(make_client) as console:
        error = await refused(console, "unlock", {"pin": PIN})

    assert error.code == "invalid-request"
    assert "'idempotency_key'" in error.message
    assert box.store.query("SELECT failures FROM console_lockout") == []
