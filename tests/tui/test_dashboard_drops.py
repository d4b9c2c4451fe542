"""The dashboard's drops line: a scheduled drop is open or upcoming by its times."""

from __future__ import annotations

import time

from tui_night import SIZE, console_settings, screen_text, wait_until

from appliance.bus.broker import BrokerHandle
from appliance.config import SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials
from tests.economy.economy_site import (
    economy_site_config,  # noqa: F401 - registers the site_config fixture
)
from tui.app import NightboxApp


def _drop(drop_id: str, starts_at: float, ends_at: float) -> dict[str, object]:
    return {
        "id": drop_id,
        "item": "tee",
        "price": 2500,
        "quota": 3,
        "starts_at": starts_at,
        "ends_at": ends_at,
    }


async def test_scheduled_drops_open_by_times(
    box: Box,
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
) -> None:
    settings = console_settings(
        site_config, credentials, mosquitto.host, mosquitto.port
    )
    admin = box.tokens.issue("console", ["console:admin"], 600).token
    now = time.time()
    app = NightboxApp(settings)
    async with app.run_test(size=SIZE):
        await wait_until(lambda: app.link.state.overview is not None, "the overview")
        for drop in (
            _drop("started-cap", now - 60, now + 3600),
            _drop("later-cap", now + 3600, now + 7200),
        ):
            created = await app.link.request(
                "console", "drop-create", drop, token=admin, mutating=True
            )
            assert created["state"] == "scheduled"
        await app.link.refresh_overview()

        await wait_until(
            lambda: "started-cap 3/3 left (open)" in screen_text(app),
            "the started drop shown open",
        )
        text = screen_text(app)
        assert "later-cap 3/3 left (upcoming)" in text
        assert "(scheduled)" not in text
