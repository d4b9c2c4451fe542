"""The console names why nothing is live: a refused login, or a box that is silent."""

from __future__ import annotations

import dataclasses

from tui_night import SIZE, console_settings, free_port, screen_text, wait_until

from appliance.bus.broker import BrokerHandle
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials
from tui.app import NightboxApp
from tui.link import LinkSettings


async def test_refused_login_named(
    site_config: SiteConfig, credentials: SiteCredentials, mosquitto: BrokerHandle
) -> None:
    settings = console_settings(
        site_config, credentials, mosquitto.host, mosquitto.port
    )
    wrong = dataclasses.replace(settings, password="not-the-password")
    app = NightboxApp(wrong)
    async with app.run_test(size=SIZE):
        await wait_until(
            lambda: "the broker refused the console's login" in screen_text(app),
            "the refused-login message",
        )
        text = screen_text(app)
        assert app.link.problem is not None
        assert "make the login file again with" in app.link.problem
        assert "not authorized" in app.link.problem
        assert not app.link.online
        assert "Traceback" not in text


async def test_silent_box_named_then_live(
    site_config: SiteConfig, credentials: SiteCredentials, mosquitto: BrokerHandle
) -> None:
    settings = console_settings(
        site_config, credentials, mosquitto.host, mosquitto.port
    )
    expected = (
        f"no reply from box {site_config.box_id} of site {site_config.site_id}; "
        "is it running?"
    )
    app = NightboxApp(settings)
    async with app.run_test(size=SIZE):
        await wait_until(
            lambda: expected in screen_text(app), "the no-reply message", 20.0
        )
        assert app.link.online

        async with Box(
            site_config,
            SystemClock(TimeSource.NTP),
            credentials,
            mosquitto.host,
            mosquitto.port,
            broker_kind=mosquitto.kind,
        ):
            await wait_until(
                lambda: app.link.state.overview is not None, "the overview", 20.0
            )
            await wait_until(
                lambda: expected not in screen_text(app), "the message to go", 5.0
            )
            assert app.link.problem is None


async def test_box_not_started_named(site_config: SiteConfig) -> None:
    start_fix = "start the box with 'nightbox run --config site.toml'"
    settings = LinkSettings(
        host="127.0.0.1",
        port=free_port(),
        site=site_config.site_id,
        box=site_config.box_id,
        username="terminal-console",
        password="unused",
        start_fix=start_fix,
    )
    app = NightboxApp(settings)
    async with app.run_test(size=SIZE):
        # At 80 columns the banner wraps the message after the address.
        await wait_until(
            lambda: "start the box with 'nightbox run" in screen_text(app),
            "the start hint",
        )
        assert app.link.problem == (
            f"no broker answers at {app.link.address}; {start_fix}"
        )
