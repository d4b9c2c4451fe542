"""Erasure of a guest's contact from every table and from the database files.

Guests opt in, take kits with coupons, redeem one, have a portal session and
a wellness note. After an erasure from the console or the command line, no
row of any table and no byte of the database file or its write-ahead log
contains the contact, and the box keeps working.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from analytics_site import (  # noqa: F401 - registers the fixtures
    EVENING,
    NIGHT,
    Night,
    band,
    config_path_fixture,
    night_fixture,
    site_config_fixture,
)

from appliance.analytics.figures import night_figures
from appliance.bus.client import Bus
from appliance.config import SiteConfig
from tests.conftest import ClientFactory
from tests.console.console_site import call, console_client, refused, set_pin, unlock

EMAIL = "Erase.Me@Example.org"
WALLET_ID = "WALLET-ERASE-77"
KEPT_EMAIL = "keep.me@example.org"


@pytest.fixture
async def console(
    site_config: SiteConfig, night: Night, make_client: ClientFactory
) -> AsyncIterator[tuple[Bus, str]]:
    """The console's bus client and its admin token."""
    set_pin(site_config)
    async with console_client(make_client) as bus:
        yield bus, await unlock(bus)


async def fill_guests(night: Night, bus: Bus, token: str) -> None:
    """Guest 1 (email), 2 (wallet id) and 3 (kept): opt-ins, kits, notes."""
    await night.opt_in(1, email=EMAIL)
    await night.opt_in(2, wallet_id=WALLET_ID)
    await night.opt_in(3, email=KEPT_EMAIL)
    # Guest 1 opts in twice, so an update left an older copy of the row.
    await night.opt_in(1, email=EMAIL)
    for number in (1, 2, 3):
        await night.kit(number)
    await night.redeem(1)
    with night.box.store.transaction() as transaction:
        for number in (1, 2, 3):
            transaction.execute(
                "INSERT INTO portal_sessions (id_hash, band, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (f"{number:064x}", band(number), EVENING, EVENING + 3600),
            )
    await call(
        bus,
        "wellness-add",
        {"note": "guest 1 was dizzy", "band": band(1)},
        token=token,
        mutating=True,
    )


def table_rows(night: Night) -> str:
    """Return every row of every table of the store as one text."""
    tables = [
        name
        for (name,) in night.box.store.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    ]
    return "\n".join(
        repr(row)
        for table in tables
        for row in night.box.store.query(f'SELECT * FROM "{table}"')
    )


def file_bytes(night: Night) -> bytes:
    """Return the bytes of the database file and its write-ahead log."""
    path = night.box.store.path
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def contains(night: Night, contact: str) -> bool:
    """Return whether any table or database file contains ``contact`` in any case."""
    lowered = contact.lower()
    return lowered in table_rows(night).lower() or lowered.encode() in (
        file_bytes(night).lower()
    )


async def test_console_erases_email(night: Night, console: tuple[Bus, str]) -> None:
    bus, token = console
    await fill_guests(night, bus, token)
    assert contains(night, EMAIL)

    erased = await call(
        bus,
        "erase-contact",
        {"email": EMAIL.upper()},
        token=token,
        mutating=True,
    )

    # The opt-in, the coupon's contact, the fingerprints of the two stored
    # opt-in replies, the session and the wellness note of guest 1.
    assert erased["rows"] == 6
    assert erased["bands"] == 1
    assert not contains(night, EMAIL)
    assert contains(night, KEPT_EMAIL)
    assert contains(night, WALLET_ID)
    store = night.box.store
    assert store.query("SELECT band FROM optins ORDER BY band") == [
        (band(2),),
        (band(3),),
    ]
    code = night.coupons[band(1)]
    assert store.query(
        "SELECT contact, redeemed_by FROM coupons WHERE code = ?", (code,)
    ) == [("", "desk")]
    assert store.query("SELECT band FROM portal_sessions ORDER BY band") == [
        (band(2),),
        (band(3),),
    ]
    assert store.query("SELECT COUNT(*) FROM wellness_notes") == [(0,)]
    assert store.query("SELECT id, rows, requested_by FROM erasures") == [
        (erased["erasure"], 6, "terminal/console")
    ]
    # The request to erase is not stored either.
    assert store.query(
        "SELECT COUNT(*) FROM requests WHERE action = 'console/erase-contact'"
    ) == [(0,)]


async def opt_in(night: Night, number: int, email: str) -> dict[str, Any]:
    """Opt band ``number`` in with ``email``; return the reply's data."""
    return await night.call(
        "optin",
        "register",
        terminal="desk",
        band=band(number),
        consent=True,
        consent_text="Send me one follow-up offer after tonight.",
        email=email,
    )


async def test_erase_second_email_of_band(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console
    first, second = "Round2.Guest+x@Example.ORG", "other@example.org"
    await night.kit(6)
    opted_in = await opt_in(night, 6, first)
    await opt_in(night, 6, second)
    await opt_in(night, 8, KEPT_EMAIL)
    coupon = night.box.store.query(
        "SELECT code, contact FROM coupons WHERE band = ?", (band(6),)
    )

    erased = await call(
        bus, "erase-contact", {"email": second.upper()}, token=token, mutating=True
    )

    # The coupon issued at the first opt-in moved to the second contact.
    assert coupon == [(opted_in["coupon"]["code"], second)]
    assert erased["bands"] == 1
    assert not contains(night, first)
    assert not contains(night, second)
    assert contains(night, KEPT_EMAIL)
    assert night.box.store.query(
        "SELECT contact FROM coupons WHERE band = ?", (band(6),)
    ) == [("",)]


@pytest.mark.parametrize("erased_email", ["first", "second"])
async def test_erase_any_email_of_band(
    night: Night, console: tuple[Bus, str], erased_email: str
) -> None:
    bus, token = console
    first, second = "earlier.guest@example.org", "Later.Guest@Example.org"
    await opt_in(night, 7, first)
    await night.kit(7)
    await night.redeem(7)
    # The redeemed coupon keeps the first address, the opt-in names the second.
    await opt_in(night, 7, second)
    await opt_in(night, 8, KEPT_EMAIL)
    named = first if erased_email == "first" else second

    erased = await call(
        bus, "erase-contact", {"email": named.swapcase()}, token=token, mutating=True
    )

    assert erased["bands"] == 1
    assert not contains(night, first)
    assert not contains(night, second)
    assert contains(night, KEPT_EMAIL)
    assert night.box.store.query("SELECT band FROM optins") == [(band(8),)]


async def test_concurrent_optins_one_contact(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console
    await night.kit(2)
    emails = [f"race{number}@example.org" for number in range(6)]

    replies = await asyncio.gather(
        *(
            night.request(
                "optin",
                "register",
                terminal="desk",
                band=band(2),
                consent=True,
                consent_text="Send me one follow-up offer after tonight.",
                email=email,
            )
            for email in emails
        )
    )
    optins = night.box.store.query(
        "SELECT contact FROM optins WHERE band = ?", (band(2),)
    )
    coupons = night.box.store.query(
        "SELECT contact FROM coupons WHERE band = ?", (band(2),)
    )

    assert [reply["ok"] for reply in replies] == [True] * 6
    assert sum(reply["data"]["coupon"] is not None for reply in replies) == 1
    assert len(coupons) == 1
    assert optins == coupons
    (contact,) = optins[0]
    assert contact in emails

    await call(
        bus, "erase-contact", {"email": contact.upper()}, token=token, mutating=True
    )

    for email in emails:
        assert not contains(night, email), email


async def test_box_works_after_erasure(night: Night, console: tuple[Bus, str]) -> None:
    bus, token = console
    await fill_guests(night, bus, token)
    await call(bus, "erase-contact", {"band": band(1)}, token=token, mutating=True)

    without_consent = await night.request(
        "optin",
        "register",
        terminal="desk",
        band=band(1),
        email=EMAIL,
        consent_text="Send me one follow-up offer.",
    )
    await night.opt_in(1, email="new.address@example.org")
    await night.opt_in(4, email="guest4@example.org")
    coupon = await night.kit(4)

    assert without_consent["ok"] is False
    assert without_consent["error"]["code"] == "invalid-request"
    assert "consent" in without_consent["error"]["message"]
    assert night.box.store.query(
        "SELECT contact FROM optins WHERE band = ?", (band(1),)
    ) == [("new.address@example.org",)]
    assert coupon is not None
    figures = night_figures(night.box.store, night.box.config, NIGHT)
    assert figures["kits"]["kits"] == {"guests": None, "suppressed": True}
    assert not contains(night, EMAIL)


async def test_erase_unknown_contact_records_zero(
    night: Night, console: tuple[Bus, str]
) -> None:
    bus, token = console

    erased = await call(
        bus,
        "erase-contact",
        {"email": "nobody@example.org"},
        token=token,
        mutating=True,
    )

    assert erased["rows"] == 0
    assert erased["bands"] == 0
    assert night.box.store.query("SELECT rows FROM erasures") == [(0,)]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "give exactly one of 'band', 'email' or 'wallet_id'"),
        (
            {"email": EMAIL, "band": "ib-1-1"},
            "give exactly one of 'band', 'email' or 'wallet_id'",
        ),
        ({"email": "not-an-address"}, "field 'email' must be an email address"),
        ({"wallet_id": "no"}, "field 'wallet_id' must be 4-64 letters"),
        ({"band": "IB 1"}, "field 'band' must be a band id"),
    ],
)
async def test_invalid_erasure_rejected(
    night: Night,
    console: tuple[Bus, str],
    fields: dict[str, object],
    expected: str,
) -> None:
    bus, token = console

    error = await refused(bus, "erase-contact", fields, token=token, mutating=True)

    assert error.code == "invalid-request"
    assert expected in error.message
    assert EMAIL not in error.message
    assert night.box.store.query("SELECT COUNT(*) FROM erasures") == [(0,)]


async def test_erasure_needs_admin_token(
    night: Night, site_config: SiteConfig, make_client: ClientFactory
) -> None:
    async with console_client(make_client) as bus:
        error = await refused(bus, "erase-contact", {"band": "ib-1-1"}, mutating=True)

    assert error.code == "token-missing"


async def guest_erase(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox guest erase`` without blocking the running box."""
    return await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "guest",
            "erase",
            "--config",
            str(config),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_erases_wallet_id(
    night: Night, console: tuple[Bus, str], config_path: Path
) -> None:
    bus, token = console
    await fill_guests(night, bus, token)
    assert contains(night, WALLET_ID)

    result = await guest_erase(config_path, "--wallet-id", WALLET_ID, "--json")

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["rows"] == 4
    assert output["bands"] == 1
    assert output["files_scrubbed"] is True
    assert WALLET_ID not in result.stdout + result.stderr
    assert not contains(night, WALLET_ID)
    assert contains(night, EMAIL)
    assert night.box.store.query("SELECT rows, requested_by FROM erasures") == [
        (4, "cli")
    ]
    # The running box still serves requests after the command rebuilt its
    # database file.
    await night.opt_in(2, wallet_id="WALLET-NEW-01")
    await night.top_up(2)


async def test_cli_rejects_bad_selector(night: Night, config_path: Path) -> None:
    missing = await guest_erase(config_path)
    both = await guest_erase(config_path, "--band", "ib-1-1", "--email", EMAIL)
    invalid = await guest_erase(config_path, "--email", "not-an-address")

    assert missing.returncode == 2
    assert "one of the arguments --band --email --wallet-id is required" in (
        missing.stderr
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
    assert invalid.returncode == 2
    assert "field 'email' must be an email address" in invalid.stderr
    assert night.box.store.query("SELECT COUNT(*) FROM erasures") == [(0,)]
