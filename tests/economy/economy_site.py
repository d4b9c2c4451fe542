"""A site with a wallet, a catalogue, creators, a drop and POS terminals.

Times are relative to the moment the site is built, because the box runs on
the test machine's clock. Test modules import the fixtures
``economy_site_config`` (registered as ``site_config``, so it replaces the
shared one) and ``terminal_fixture`` (registered as ``terminal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ClientFactory, TokenFactory, make_site_config

from appliance.bus.client import Bus
from appliance.commerce.config import (
    CommerceConfig,
    Creator,
    DropConfig,
    Item,
    PartnerOffer,
    PromoCode,
    SetSlot,
    Tier,
    WalletConfig,
)
from appliance.config import SiteConfig

TERMINALS = ("bar-1", "bar-2", "merch-1", "desk-2")
ALL_SCOPES = (
    "pos:charge",
    "pos:refund",
    "pos:void",
    "wallet:topup",
    "drops:claim",
    "drops:pickup",
    "drops:manage",
    "offers:redeem",
)
MEMBER_BAND = "ib-1-900"


def economy_commerce(now: float, **changes: Any) -> CommerceConfig:
    """Return the test site's commerce settings around Unix time ``now``."""
    commerce = CommerceConfig(
        wallet=WalletConfig(
            currency="EUR",
            max_topup=50_000,
            max_charge=20_000,
            night_topup_limit=60_000,
            night_spend_limit=30_000,
        ),
        items=(
            Item("beer", "Beer", price=450),
            Item("merch", "Merch"),
            Item("kit-bundle", "Recovery kit bundle", price=1500, kit_bundle=True),
            Item("tee", "Drop tee", price=3500),
        ),
        creators=(
            Creator("maya", "Maya", "MAYA"),
            Creator("kofi", "DJ Kofi", "KOFI"),
        ),
        promo_codes=(
            PromoCode("SAVE10", percent=10, amount=None, max_uses=3),
            PromoCode(
                "FIVEOFF",
                percent=None,
                amount=500,
                max_uses=1,
                creator="kofi",
                applies_to="charges",
            ),
            PromoCode("OLD", percent=50, amount=None, max_uses=9, expires_at=now - 60),
        ),
        tiers=(Tier("gold", early_access=True, kit_bundle_discount_percent=20),),
        members={MEMBER_BAND: "gold"},
        partner_offers=(
            PartnerOffer(
                "hotel",
                "Hotel Nord",
                "Recovery microcation at Hotel Nord",
                ("HOTEL-001", "HOTEL-002"),
            ),
        ),
        sets=(SetSlot("set-maya", "maya", now - 3600, now + 3600),),
        drops=(
            DropConfig(
                "tee-drop",
                "tee",
                price=3500,
                quantity=500,
                starts_at=now - 60,
                ends_at=now + 3600,
                per_guest_limit=2,
                reservation_s=120,
                creator="maya",
            ),
            DropConfig(
                "vinyl",
                "merch",
                price=2000,
                quantity=10,
                starts_at=now + 600,
                ends_at=now + 3600,
                early_access_s=1800,
            ),
        ),
        terminals=TERMINALS,
    )
    return dataclasses.replace(commerce, **changes) if changes else commerce


@pytest.fixture(name="site_config")
def economy_site_config(tmp_path: Path) -> SiteConfig:
    """The test site with its economy, storing files under a temporary folder."""
    return make_site_config(tmp_path / "box", commerce=economy_commerce(time.time()))


@dataclasses.dataclass
class Terminal:
    """A POS terminal: its bus client and its edge token."""

    bus: Bus
    token: str

    async def call(
        self, service: str, action: str, *, timeout_s: float = 5.0, **data: Any
    ) -> dict[str, Any]:
        """Send a request; a fresh idempotency key is added unless given."""
        data.setdefault("idempotency_key", uuid.uuid4().hex)
        topic = self.bus.topics.api(service, action)
        return await self.bus.request(
            topic, data, timeout_s=timeout_s, token=self.token
        )


TerminalFactory = Callable[..., contextlib.AbstractAsyncContextManager[Terminal]]


@pytest.fixture(name="terminal")
def terminal_fixture(
    make_client: ClientFactory, issue_token: TokenFactory
) -> TerminalFactory:
    """Return ``async with terminal("bar-1", *scopes) as bar`` (all scopes if none)."""

    @contextlib.asynccontextmanager
    async def factory(terminal_id: str, *scopes: str) -> AsyncIterator[Terminal]:
        token = issue_token(terminal_id, *(scopes or ALL_SCOPES))
        async with make_client(
            f"terminal-{terminal_id}", "terminal", terminal_id
        ) as bus:
            yield Terminal(bus, token)

    return factory


async def top_up(desk: Terminal, band: str, amount: int, method: str = "cash") -> Any:
    """Top up ``band`` with ``amount`` cents of EUR."""
    return await desk.call(
        "wallet", "topup", band=band, amount=amount, currency="EUR", method=method
    )
