"""A night for the analytics tests: a site file, a box on a clock the test moves.

The site is written as a TOML file, so the box and ``nightbox report`` read
the same configuration. The box runs on a :class:`ManualClock` set to an
evening in the past: check-outs fall into known 15-minute buckets, and
request deadlines, which carry the test machine's time, are never behind
the box's clock. :class:`Night` drives the box's real services: requests go
through ``RequestServer.call`` (the same handlers and commits as over the
bus) and check-outs through a reader's batches on mosquitto.

Test modules import ``site_config_fixture``, ``config_path_fixture`` and
``night_fixture`` to register the fixtures ``site_config``, ``config_path``
and ``night``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import SITE_UUID, ClientFactory

from appliance.analytics.views import record_view
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus
from appliance.clock import ManualClock
from appliance.config import SiteConfig, load_config
from appliance.runtime import Box
from appliance.sim._adverts import ibeacon
from provisioning import SiteCredentials

# 2025-06-06 20:00 UTC; nights roll over at 12:00 UTC, so this is the
# night of 2025-06-06, which began at 12:00.
EVENING = 1_749_240_000.0
NIGHT = "2025-06-06"
NIGHT_START = EVENING - 8 * 3600
WAIT_S = 10.0
PURGE_INTERVAL_S = 0.05
COUPON_TTL_H = 2
BAR_SCOPES = (
    "pos:charge",
    "pos:refund",
    "pos:void",
    "wallet:topup",
    "drops:claim",
    "drops:pickup",
    "offers:redeem",
)
DESK_SCOPES = ("optin:register", "kits:issue", "offers:redeem")


def toml_time(t: float) -> str:
    """Return Unix time ``t`` as a TOML offset date-time in UTC."""
    return dt.datetime.fromtimestamp(int(t), dt.UTC).isoformat()


def site_toml(data_dir: Path) -> str:
    """Return the site file: creators, drops (one is Maya's), kits and exits."""
    return f"""
[site]
id = "test"
name = "Analytics & <Test> venue"
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
id = "exit-2"
role = "exit"

[[readers]]
id = "kit-1"
role = "kit"
kit_stock = 60

[coupons]
ttl_h = {COUPON_TTL_H}

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
id = "shot"
name = "Shot"
price = 370

[[items]]
id = "tee"
name = "Drop tee"
price = 3500

[[items]]
id = "cap"
name = "Drop cap"
price = 2000

[[items]]
id = "hoodie"
name = "Maya's hoodie"
price = 4200

[[items]]
id = "tab"
name = "Bar tab, open price"

[[creators]]
id = "maya"
name = "Maya"
code = "MAYA"

[[creators]]
id = "kofi"
name = "DJ Kofi"
code = "KOFI"

[[creators]]
id = "zed"
name = "Zed"
code = "ZED"

[[drops]]
id = "tee-drop"
item = "tee"
price = 3500
quantity = 100
starts_at = {toml_time(EVENING - 3600)}
ends_at = {toml_time(EVENING + 6 * 3600)}
per_guest_limit = 2
reservation_s = 600

[[drops]]
id = "cap-drop"
item = "cap"
price = 2000
quantity = 50
starts_at = {toml_time(EVENING - 3600)}
ends_at = {toml_time(EVENING + 6 * 3600)}
per_guest_limit = 1
reservation_s = 600

[[drops]]
id = "maya-drop"
item = "hoodie"
price = 4200
creator = "maya"
quantity = 100
starts_at = {toml_time(EVENING - 3600)}
ends_at = {toml_time(EVENING + 6 * 3600)}
per_guest_limit = 1
reservation_s = 600

[[terminals]]
id = "bar-1"
"""


@pytest.fixture(name="config_path")
def config_path_fixture(tmp_path: Path) -> Path:
    """The site file, with the box's data under ``<tmp>/box``."""
    path = tmp_path / "site.toml"
    path.write_text(site_toml(tmp_path / "box"))
    return path


@pytest.fixture(name="site_config")
def site_config_fixture(config_path: Path) -> SiteConfig:
    """The site the box runs, read from the site file."""
    return load_config(config_path)


def band(number: int) -> str:
    """Return the id of test band ``number`` (iBeacon major 1, minor ``number``)."""
    return f"ib-1-{number}"


@dataclass
class Night:
    """The running box, its clock, and the requests of a night's guests."""

    box: Box
    clock: ManualClock
    reader: Bus
    bar_token: str
    desk_token: str
    seq: int = 0
    coupons: dict[str, str] = field(default_factory=dict)

    async def call(
        self, service: str, action: str, *, terminal: str = "bar-1", **data: Any
    ) -> dict[str, Any]:
        """Run a request in the box; return its data or raise on a refusal."""
        reply = await self.request(service, action, terminal=terminal, **data)
        assert reply["ok"], reply
        result: dict[str, Any] = reply["data"]
        return result

    async def request(
        self, service: str, action: str, *, terminal: str = "bar-1", **data: Any
    ) -> dict[str, Any]:
        """Run a request in the box; return the whole reply (ok or error)."""
        data.setdefault("idempotency_key", uuid.uuid4().hex)
        token = self.desk_token if terminal == "desk" else self.bar_token
        return await self.box.requests.call(
            service, action, data, token=token, terminal=terminal
        )

    async def top_up(self, number: int, amount: int = 30_000) -> None:
        """Top up band ``number`` with ``amount`` cents by card."""
        await self.call(
            "wallet",
            "topup",
            band=band(number),
            amount=amount,
            currency="EUR",
            method="card",
        )

    async def charge(
        self, number: int, item: str, price: int, quantity: int = 1, **extra: Any
    ) -> dict[str, Any]:
        """Charge band ``number`` for ``quantity`` of ``item``; return the sale."""
        return await self.call(
            "wallet",
            "charge",
            band=band(number),
            item=item,
            quantity=quantity,
            amount=price * quantity,
            currency="EUR",
            **extra,
        )

    async def buy_drop(self, number: int, drop: str, *, pick_up: bool) -> None:
        """Claim and pay one unit of ``drop`` for band ``number``."""
        claimed = await self.call(
            "drops", "claim", drop=drop, band=band(number), pay=True
        )
        if pick_up:
            await self.call("drops", "pickup", code=claimed["pickup_code"])

    async def reserve_drop(self, number: int, drop: str) -> None:
        """Claim one unit of ``drop`` for band ``number`` without paying."""
        await self.call("drops", "claim", drop=drop, band=band(number))

    def view(self, page: str, subject: str, times: int) -> None:
        """Count ``times`` views of a portal page, as the portal does."""
        for _ in range(times):
            record_view(
                self.box.store, self.clock, self.box.config.commerce, page, subject
            )

    async def opt_in(self, number: int, **contact: str) -> None:
        """Record the opt-in of band ``number`` with consent and a contact."""
        await self.call(
            "optin",
            "register",
            terminal="desk",
            band=band(number),
            consent=True,
            consent_text="Send me one follow-up offer after tonight.",
            **contact,
        )

    async def kit(self, number: int) -> dict[str, Any] | None:
        """Hand band ``number`` a kit at kit-1; return its coupon, if any."""
        issued = await self.call(
            "kits", "issue", terminal="desk", band=band(number), station="kit-1"
        )
        coupon: dict[str, Any] | None = issued["coupon"]
        if coupon is not None:
            self.coupons[band(number)] = coupon["code"]
        return coupon

    async def redeem(self, number: int) -> dict[str, Any]:
        """Redeem band ``number``'s follow-up coupon at the desk."""
        return await self.call(
            "offers", "redeem", terminal="desk", code=self.coupons[band(number)]
        )

    async def check_out(self, numbers: list[int], at: float) -> None:
        """Make bands ``numbers`` cross exit-1 together at Unix time ``at``.

        The box's clock moves to ``at`` first. Five batches 0.5 s apart carry
        three strong adverts of each band, well above the exit's threshold.
        """
        self.clock.advance_to(at + 3.0)
        before = self.checkouts()
        for index in range(5):
            t = round(at + 0.5 * index, 3)
            self.seq += 1
            sightings = [
                {
                    "t": t,
                    "rssi": -50,
                    "n": 3,
                    "adv": ibeacon(SITE_UUID, 1, number, -59).hex(),
                }
                for number in numbers
            ]
            batch = {
                "reader": "exit-1",
                "boot": "analytics",
                "seq": self.seq,
                "t": t,
                "heard": 3 * len(numbers),
                "sightings": sightings,
            }
            await self.reader.publish_json(
                self.reader.topics.sightings("exit-1"), {"data": batch}
            )
        deadline = time.monotonic() + WAIT_S
        while self.checkouts() < before + len(numbers):
            assert time.monotonic() < deadline, "the box recorded too few check-outs"
            await asyncio.sleep(0.02)

    def checkouts(self) -> int:
        """Return how many check-outs the box has recorded."""
        row = self.box.store.query_one("SELECT COUNT(*) FROM checkouts")
        assert row is not None
        return int(row[0])


@contextlib.asynccontextmanager
async def running_night(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
) -> AsyncIterator[Night]:
    """Run the box on a manual clock at :data:`EVENING` with a connected exit reader."""
    clock = ManualClock(EVENING)
    box = Box(
        site_config,
        clock,
        credentials,
        mosquitto.host,
        mosquitto.port,
        broker_kind=mosquitto.kind,
        health_interval_s=0.05,
    )
    # The purge of wellness notes runs on its timer, often enough for a
    # test to see a note go soon after the clock passed its expiry.
    box.wellness.purge_interval_s = PURGE_INTERVAL_S
    async with box:
        await asyncio.wait_for(box.bus.connected.wait(), timeout=WAIT_S)
        bar_token = box.tokens.issue("bar-1", BAR_SCOPES, 24 * 3600).token
        desk_token = box.tokens.issue("desk", DESK_SCOPES, 24 * 3600).token
        async with make_client("reader-exit-1", "reader", "exit-1") as reader:
            yield Night(box, clock, reader, bar_token, desk_token)


@pytest.fixture(name="night")
async def night_fixture(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
) -> AsyncIterator[Night]:
    """The running night of the analytics site."""
    async with running_night(site_config, credentials, mosquitto, make_client) as night:
        yield night


def load_json(path: Path) -> Any:
    """Return the JSON document in ``path``."""
    return orjson.loads(path.read_bytes())
