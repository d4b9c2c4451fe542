"""A box with a small simulated studio, for the studio service tests.

The site is the shared test site plus a ``[studio]`` table that runs the
simulator at 320x180, 15 fps, with a test tone and short segments, an
HTTP server on a free loopback port, the creator Maya with a set playing
and two drops of hers (one open, one opening in ten minutes), a drop of
another creator, the creator station ``station-1`` and an operator key
that the box trusts for signed commands. Test modules import
``studio_box_fixture`` (``# noqa: F401``) and get a :class:`StudioBox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import running_site_box
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, BusSettings
from appliance.commerce.config import (
    CommerceConfig,
    Creator,
    DropConfig,
    Item,
    SetSlot,
)
from appliance.config import ReaderConfig, SiteConfig
from appliance.remote.config import FleetConfig
from appliance.runtime import Box
from appliance.signed_documents import key_id
from appliance.studio.config import StudioConfig
from appliance.studio.service import Studio
from provisioning import SiteCredentials

STATION = "station-1"
OPEN_DROP = "maya-tee"
LATER_DROP = "maya-cap"
OTHER_DROP = "leo-poster"
TIMEOUT_S = 15.0

SMALL_STUDIO = StudioConfig(
    camera="simulator",
    width=320,
    height=180,
    fps=15,
    bitrate_kbps=300,
    keyframe_interval_s=0.5,
    preset="ultrafast",
    audio="tone",
    clip_seconds=3.0,
    clips_keep=3,
    segment_s=1.0,
    part_s=0.5,
    hls_window=4,
    http_host="127.0.0.1",
    http_port=0,
    slate_after_s=1.0,
)


def studio_site_config(
    data_dir: Path,
    now: float,
    *,
    studio: StudioConfig = SMALL_STUDIO,
    sets: tuple[SetSlot, ...] | None = None,
    fleet: FleetConfig | None = None,
) -> SiteConfig:
    """Return the studio test site around Unix time ``now``."""
    if sets is None:
        sets = (SetSlot("maya-live", "maya", now - 600, now + 3600),)
    commerce = CommerceConfig(
        items=(
            Item("tee", "Drop tee", price=3500),
            Item("cap", "Cap", price=2000),
            Item("poster", "Poster", price=1500),
        ),
        creators=(Creator("maya", "Maya", "MAYA"), Creator("leo", "Leo", "LEO")),
        sets=sets,
        drops=(
            _drop(OPEN_DROP, "tee", now - 60, now + 3600, "maya"),
            _drop(LATER_DROP, "cap", now + 600, now + 3600, "maya"),
            _drop(OTHER_DROP, "poster", now + 600, now + 3600, "leo"),
        ),
        terminals=(STATION,),
        portal_url="http://nightbox.local",
    )
    return SiteConfig(
        site_id="test",
        site_name="Studio venue",
        box_id="box-1",
        data_dir=data_dir,
        readers=(ReaderConfig("exit-1", "exit"),),
        commerce=commerce,
        studio=studio,
        fleet=fleet or FleetConfig(),
    )


def _drop(
    drop_id: str, item: str, starts_at: float, ends_at: float, creator: str
) -> DropConfig:
    return DropConfig(
        drop_id,
        item,
        price=2000,
        quantity=10,
        starts_at=starts_at,
        ends_at=ends_at,
        creator=creator,
    )


@dataclass
class StudioBox:
    """The running box, its broker and credentials, and the trusted operator key."""

    config: SiteConfig
    credentials: SiteCredentials
    broker: BrokerHandle
    box: Box
    operator_key: Ed25519PrivateKey

    @property
    def studio(self) -> Studio:
        """The box's studio (the site has a [studio] table)."""
        studio = self.box.studio
        if studio is None:
            raise AssertionError("the studio test box runs no studio")
        return studio

    def token(self, subject: str, *scopes: str) -> str:
        """Return an edge token for ``subject`` lasting an hour."""
        return self.box.tokens.issue(subject, scopes, 3600.0).token

    @contextlib.asynccontextmanager
    async def client(
        self, username: str, kind: str, device_id: str
    ) -> AsyncIterator[Bus]:
        """Connect a bus client with the generated password of ``username``."""
        account = self.credentials.account(username)
        settings = BusSettings(
            self.broker.host,
            self.broker.port,
            username,
            account.password,
            kind,
            device_id,
            self.config.site_id,
        )
        async with Bus(settings, announce=kind != "operator") as bus:
            await asyncio.wait_for(bus.connected.wait(), timeout=TIMEOUT_S)
            yield bus


async def request(
    bus: Bus, service: str, action: str, data: dict[str, Any], token: str | None
) -> dict[str, Any]:
    """Send a mutating request with a fresh idempotency key; return its data."""
    fields = {"idempotency_key": uuid.uuid4().hex, **data}
    return await bus.request(
        bus.topics.api(service, action), fields, token=token, timeout_s=TIMEOUT_S
    )


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float = TIMEOUT_S,
) -> None:
    """Wait until ``condition()`` is true; fail naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_studio_box(
    data_dir: Path, *, sets: tuple[SetSlot, ...] | None = None
) -> AsyncIterator[StudioBox]:
    """Start the studio test site's broker and box; stop both on exit.

    ``sets`` replaces the site's one set, Maya's, playing for an hour.
    """
    operator_key = Ed25519PrivateKey.generate()
    public_key = operator_key.public_key()
    fleet = FleetConfig(operator_keys={key_id(public_key): public_key})
    config = studio_site_config(data_dir, time.time(), sets=sets, fleet=fleet)
    async with running_site_box(
        config, timeout_s=TIMEOUT_S, health_interval_s=0.05
    ) as (broker, box):
        credentials = SiteCredentials(config.data_dir / "secrets" / "broker.json")
        yield StudioBox(config, credentials, broker, box, operator_key)


@pytest_asyncio.fixture(name="studio_box", scope="module", loop_scope="module")
async def studio_box_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[StudioBox]:
    """The studio test site's box, streaming, with its HTTP server, per module."""
    async with running_studio_box(tmp_path_factory.mktemp("studio") / "box") as sb:
        await sb.studio.serve_http()
        yield sb
