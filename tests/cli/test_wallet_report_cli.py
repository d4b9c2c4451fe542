"""``nightbox wallet report`` run as a subprocess against a running box's store.

The box runs from the same TOML file that the command reads, so both use
the same site, currency and data folder. Terminals make real top-ups,
charges, refunds, voids and a drop purchase over mosquitto. The command
then opens the box's SQLite store as a second reader, which WAL mode allows
while the box keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ClientFactory, TokenFactory

from appliance.bus.client import Bus
from appliance.config import SiteConfig, load_config
from appliance.runtime import Box

TIMEOUT_S = 60.0
SCOPES = ("pos:charge", "pos:refund", "pos:void", "wallet:topup", "drops:claim")
# The guests' bands in run_sales, which lists what each one pays.
GUEST_A = "ib-1-1"
GUEST_B = "ib-1-2"
GUEST_C = "ib-1-3"
EMPTY_NIGHT = "2020-01-01"


def toml_time(t: float) -> str:
    """Return Unix time ``t`` as a TOML offset date-time in UTC."""
    return dt.datetime.fromtimestamp(int(t), dt.UTC).isoformat()


def site_toml(data_dir: str, now: float) -> str:
    """Return a site configuration with the economy of the wallet tests."""
    return f"""
[site]
id = "test"
name = "Test venue"
timezone = "UTC"
night_rollover_hour = 12

[box]
id = "box-1"
data_dir = "{data_dir}"

[bands]
ibeacon_uuid = "426c7565-4368-6172-6d42-6561636f6e73"

[[readers]]
id = "exit-1"
role = "exit"

[[readers]]
id = "kit-1"
role = "kit"
kit_stock = 5

[wallet]
currency = "EUR"
max_topup = 50000
max_charge = 20000
night_topup_limit = 60000
night_spend_limit = 30000

[[items]]
id = "beer"
name = "Beer"
price = 450

[[items]]
id = "merch"
name = "Merch"

[[items]]
id = "kit-bundle"
name = "Recovery kit bundle"
price = 1500
kit_bundle = true

[[items]]
id = "tee"
name = "Drop tee"
price = 3500

[[creators]]
id = "maya"
name = "Maya"
code = "MAYA"

[[creators]]
id = "kofi"
name = "DJ Kofi"
code = "KOFI"

[[promo_codes]]
code = "SAVE10"
percent = 10
max_uses = 3

[[promo_codes]]
code = "FIVEOFF"
amount = 500
max_uses = 1
creator = "kofi"
applies_to = "charges"

[[promo_codes]]
code = "OLD"
percent = 50
max_uses = 9
expires_at = {toml_time(now - 60)}

[[tiers]]
id = "gold"
early_access = true
kit_bundle_discount_percent = 20

[[members]]
band = "ib-1-900"
tier = "gold"

[[sets]]
id = "set-maya"
creator = "maya"
starts_at = {toml_time(now - 3600)}
ends_at = {toml_time(now + 3600)}

[[drops]]
id = "tee-drop"
item = "tee"
price = 3500
quantity = 500
starts_at = {toml_time(now - 60)}
ends_at = {toml_time(now + 3600)}
per_guest_limit = 2
reservation_s = 120
creator = "maya"

[[terminals]]
id = "bar-1"

[[terminals]]
id = "bar-2"

[[terminals]]
id = "merch-1"

[[terminals]]
id = "desk-2"
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The site configuration file, with the box's data in ``<tmp>/box``."""
    path = tmp_path / "site.toml"
    path.write_text(site_toml("box", time.time()))
    return path


@pytest.fixture
def site_config(config_path: Path) -> SiteConfig:
    """The site that the box runs, read from the report's configuration file."""
    return load_config(config_path)


@dataclass
class Till:
    """A POS terminal's bus client and edge token."""

    bus: Bus
    token: str

    async def call(self, service: str, action: str, **data: Any) -> dict[str, Any]:
        """Send a request with a fresh idempotency key; return the reply's data."""
        data["idempotency_key"] = uuid.uuid4().hex
        return await self.bus.request(
            self.bus.topics.api(service, action),
            data,
            timeout_s=10.0,
            token=self.token,
        )

    async def charge(
        self, band: str, item: str, amount: int, quantity: int = 1, **data: Any
    ) -> dict[str, Any]:
        """Charge ``band`` for ``item``; ``amount`` is the list amount in cents."""
        return await self.call(
            "wallet",
            "charge",
            band=band,
            item=item,
            quantity=quantity,
            amount=amount,
            currency="EUR",
            **data,
        )

    async def top_up(self, band: str, amount: int, method: str) -> dict[str, Any]:
        return await self.call(
            "wallet", "topup", band=band, amount=amount, currency="EUR", method=method
        )


TillFactory = Callable[[str], contextlib.AbstractAsyncContextManager[Till]]


@pytest.fixture
def till(make_client: ClientFactory, issue_token: TokenFactory) -> TillFactory:
    """Return ``async with till("bar-1") as bar``, with the POS scopes."""

    @contextlib.asynccontextmanager
    async def factory(terminal_id: str) -> AsyncIterator[Till]:
        token = issue_token(terminal_id, *SCOPES)
        async with make_client(
            f"terminal-{terminal_id}", "terminal", terminal_id
        ) as bus:
            yield Till(bus, token)

    return factory


async def run_sales(till: TillFactory) -> None:
    """Make tonight's top-ups, sales, refund, voids and drop purchase.

    Guest A tops up 10,000 in cash and buys 2 beers credited to Maya (900),
    a beer with SAVE10 (405, of which 200 is refunded) and merch with
    FIVEOFF (2000 less 500, credited to Kofi). Guest B tops up 5000 by card,
    buys a beer (450), merch (1200, voided) and the tee drop (3500, Maya's
    drop). Guest C's cash top-up of 2000 is voided.
    """
    async with (
        till("desk-2") as desk,
        till("bar-1") as bar_1,
        till("bar-2") as bar_2,
        till("merch-1") as merch,
    ):
        await desk.top_up(GUEST_A, 10_000, "cash")
        await desk.top_up(GUEST_B, 5000, "card")
        spare = await desk.top_up(GUEST_C, 2000, "cash")
        await desk.call("wallet", "void", transaction_id=spare["transaction_id"])
        await bar_1.charge(GUEST_A, "beer", 900, quantity=2, creator="MAYA")
        await bar_1.charge(GUEST_B, "beer", 450)
        saver = await bar_2.charge(GUEST_A, "beer", 450, promo_code="SAVE10")
        await bar_2.call(
            "wallet", "refund", transaction_id=saver["transaction_id"], amount=200
        )
        await merch.charge(GUEST_A, "merch", 2000, promo_code="FIVEOFF")
        mistake = await merch.charge(GUEST_B, "merch", 1200)
        await merch.call("wallet", "void", transaction_id=mistake["transaction_id"])
        await merch.call("drops", "claim", drop="tee-drop", band=GUEST_B, pay=True)


async def report(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox wallet report`` without blocking the running box."""
    return await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "wallet",
            "report",
            "--config",
            str(config),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def tonight(box: Box) -> str:
    return box.config.commerce.night_of(time.time())


async def test_report_totals_match_sales(
    box: Box, till: TillFactory, config_path: Path
) -> None:
    await run_sales(till)

    result = await report(config_path, "--night", tonight(box), "--json")

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["night"] == tonight(box)
    assert output["currency"] == "EUR"
    assert output["topups_by_method"] == {
        "card": {"count": 1, "amount": 5000},
        "cash": {"count": 1, "amount": 10_000},
    }
    assert output["sales_by_item"] == {
        "beer": {
            "sales": 3,
            "quantity": 4,
            "list_amount": 1800,
            "discount": 45,
            "charged": 1755,
            "refunded": 200,
            "net": 1555,
        },
        "merch": {
            "sales": 1,
            "quantity": 1,
            "list_amount": 2000,
            "discount": 500,
            "charged": 1500,
            "refunded": 0,
            "net": 1500,
        },
        "tee": {
            "sales": 1,
            "quantity": 1,
            "list_amount": 3500,
            "discount": 0,
            "charged": 3500,
            "refunded": 0,
            "net": 3500,
        },
    }
    assert output["by_terminal"] == {
        "bar-1": {"charge_count": 2, "charge_amount": 1350},
        "bar-2": {
            "charge_count": 1,
            "charge_amount": 405,
            "refund_count": 1,
            "refund_amount": 200,
        },
        "desk-2": {"topup_count": 2, "topup_amount": 15_000},
        "merch-1": {"charge_count": 2, "charge_amount": 5000},
    }
    assert output["by_creator"] == {
        "kofi": {"sales": 1, "net": 1500, "claims": 0},
        "maya": {"sales": 2, "net": 4400, "claims": 1},
    }
    assert output["totals"] == {
        "topped_up": 15_000,
        "charged": 6755,
        "refunded": 200,
        "net_sales": 6555,
        "voids": 2,
        "wallet_balances_now": 15_000 - 6755 + 200,
    }
    assert output["ledger_check"]["ok"] is True
    assert output["ledger_check"]["transactions"] == 12
    assert output["ledger_check"]["entries"] == 24


async def test_report_text_ledger_ok(
    box: Box, till: TillFactory, config_path: Path
) -> None:
    await run_sales(till)

    result = await report(config_path, "--night", tonight(box))

    assert result.returncode == 0, result.stderr
    assert f"Night of {tonight(box)}" in result.stdout
    assert "net sales 65.55 EUR" in result.stdout
    assert "Ledger check: OK (12 transactions, 24 entries" in result.stdout


async def test_report_empty_night_zero(
    box: Box, till: TillFactory, config_path: Path
) -> None:
    await run_sales(till)

    as_json = await report(config_path, "--night", EMPTY_NIGHT, "--json")
    as_text = await report(config_path, "--night", EMPTY_NIGHT)

    assert as_json.returncode == 0, as_json.stderr
    output = json.loads(as_json.stdout)
    totals = output["totals"]
    assert totals["topped_up"] == 0
    assert totals["charged"] == 0
    assert totals["refunded"] == 0
    assert totals["net_sales"] == 0
    assert totals["voids"] == 0
    assert output["topups_by_method"] == {}
    assert output["sales_by_item"] == {}
    assert output["by_terminal"] == {}
    assert output["by_creator"] == {}
    assert as_text.returncode == 0, as_text.stderr
    assert (
        "Topped up 0.00 EUR; charged 0.00 EUR; refunded 0.00 EUR; "
        "net sales 0.00 EUR; voids 0." in as_text.stdout
    )


async def test_report_corrupt_ledger_fails(
    box: Box, till: TillFactory, config_path: Path
) -> None:
    async with till("bar-1") as bar:
        await bar.top_up(GUEST_A, 2000, "cash")
        sale = await bar.charge(GUEST_A, "beer", 450)
    charge_id = sale["transaction_id"]
    # A second writer, like a hand edit of the store, adds an entry to the
    # charge, so its entries sum to 1 instead of 0.
    with contextlib.closing(sqlite3.connect(box.store.path, timeout=10)) as db:
        db.execute(
            "INSERT INTO ledger_entries (transaction_id, account, amount, currency)"
            " VALUES (?, 'revenue:beer', 1, 'EUR')",
            (charge_id,),
        )
        db.commit()

    as_text = await report(config_path, "--night", tonight(box))
    as_json = await report(config_path, "--night", tonight(box), "--json")

    assert as_text.returncode == 1, as_text.stderr
    assert "Ledger check: FAILED" in as_text.stdout
    assert f"unbalanced: {charge_id}" in as_text.stdout
    assert as_json.returncode == 1, as_json.stderr
    check = json.loads(as_json.stdout)["ledger_check"]
    assert check["ok"] is False
    assert check["unbalanced"] == [charge_id]


async def test_report_invalid_night(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site_toml("box", time.time()))

    result = await report(path, "--night", "2026-13-01")

    assert result.returncode == 2
    assert "2026-13-01" in result.stderr
    assert result.stdout == ""


async def test_report_missing_store(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site_toml("empty", time.time()))
    store = tmp_path / "empty" / "nightbox.sqlite3"

    result = await report(path, "--night", EMPTY_NIGHT)

    assert result.returncode == 2
    assert f"no Nightbox store at {store}" in result.stderr
    assert result.stdout == ""
    assert not store.exists()
