"""The console when the box's broker goes away and comes back on the same port."""

from __future__ import annotations

from pathlib import Path

from tui_night import SIZE, console_settings, free_port, screen_text, wait_until

from appliance.bus.broker import BrokerHandle, find_mosquitto, start_broker
from appliance.clock import SystemClock, TimeSource
from appliance.config import BrokerConfig, SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy
from tui.app import NightboxApp
from tui.link import LinkSettings
from tui.widgets import Figure


async def _start_mosquitto(
    config: SiteConfig, credentials: SiteCredentials, port: int
) -> BrokerHandle:
    assert find_mosquitto() is not None, "mosquitto is not installed; run 'make test'"
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
        config.commerce.terminals,
    )
    return await start_broker(
        BrokerConfig(mode="mosquitto", port=port),
        config.data_dir / "run",
        credentials,
        policy,
    )


def _header(app: NightboxApp) -> str:
    return screen_text(app).splitlines()[0]


async def test_offline_keeps_values_then_recovers(
    site_config: SiteConfig, credentials: SiteCredentials
) -> None:
    port = free_port()
    broker = await _start_mosquitto(site_config, credentials, port)
    try:
        async with Box(
            site_config,
            SystemClock(TimeSource.NTP),
            credentials,
            broker.host,
            broker.port,
            broker_kind=broker.kind,
        ):
            settings = console_settings(site_config, credentials, broker.host, port)
            app = NightboxApp(settings)
            async with app.run_test(size=SIZE):
                checkouts = app.screen.query_one("#checkouts", Figure)
                await wait_until(
                    lambda: (
                        app.link.state.overview is not None
                        and checkouts.value == "0"
                        and not checkouts.has_class("-stale")
                    ),
                    "the live dashboard",
                )
                assert "5 left" in screen_text(app)

                await broker.stop()
                await wait_until(
                    lambda: "OFFLINE since" in _header(app), "the OFFLINE header"
                )
                await wait_until(
                    lambda: checkouts.has_class("-stale"), "the stale marking"
                )
                await wait_until(
                    lambda: "Checked out 0 (stale)" in screen_text(app),
                    "the stale marker on screen",
                )
                offline_text = screen_text(app)
                offline_value = checkouts.value

                broker = await _start_mosquitto(site_config, credentials, port)
                await wait_until(
                    lambda: (
                        "OFFLINE" not in screen_text(app)
                        and not checkouts.has_class("-stale")
                    ),
                    "the console to go live again",
                    timeout_s=30,
                )
                live_header = _header(app)
    finally:
        await broker.stop()

    assert "reconnecting" in offline_text.splitlines()[0]
    assert "clock trusted" in offline_text.splitlines()[0]
    assert "OFFLINE since" in offline_text.splitlines()[2]
    assert "Checked out 0 (stale)" in offline_text
    assert "5 left" in offline_text
    assert offline_value == "0"
    assert "live" in live_header


async def test_unreachable_broker_opens_offline(tmp_path: Path) -> None:
    settings = LinkSettings(
        "127.0.0.1", free_port(), "test", "box-1", "terminal-console", "unused"
    )
    app = NightboxApp(settings)
    async with app.run_test(size=SIZE):
        await wait_until(
            lambda: "OFFLINE, connecting to 127.0.0.1" in _header(app),
            "the OFFLINE header",
        )
        text = screen_text(app)

    assert "Guests in -- (stale)" in text
    assert "q Quit" in text.splitlines()[-1]
