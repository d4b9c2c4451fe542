"""The operations screens against bad input, failing work and the box's clock.

Every numeric field of every form takes ASCII digits only, within the
range the box accepts, and says which field is wrong and what range it
takes; nothing oversized reaches the bus. A request that cannot be encoded,
a worker that raises and even a crash of the app are logged and never put
the admin token on the terminal. The admin token's lifetime is judged on
the box's clock, which a :class:`ManualClock` moves here as a fast demo
night would.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from op_box import (
    SIZE,
    OpBox,
    message_of,
    op_box_fixture,  # noqa: F401 - registers the op_box fixture
    op_site_config,
    start_console,
    table_rows,
    text_of,
    unlock,
    wait_until,
)
from textual.widgets import DataTable, Input, Select, SelectionList, Static
from textual.widgets._footer import FooterKey
from tui_night import (
    demo_night_fixture,  # noqa: F401 - registers the demo_night fixture
    screen_text,
)

from appliance.bus.broker import start_broker
from appliance.bus.envelope import encode
from appliance.clock import ManualClock
from appliance.config import BrokerConfig
from appliance.console.pin import PinFile, generate_pin, pin_path
from appliance.errors import PayloadError
from appliance.runtime import Box
from appliance.sim._adverts import ibeacon
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy
from tui.app import NightboxApp
from tui.demo import DemoNight
from tui.link import LinkSettings
from tui.screens._form import FormModal
from tui.screens.drops import drop_state_text
from tui.screens.pin import PinScreen

pytestmark = pytest.mark.asyncio(loop_scope="module")

HUGE = "99999999999999999999"


def form_of(app: NightboxApp) -> FormModal:
    """Return the open form modal."""
    screen = app.screen
    assert isinstance(screen, FormModal), f"no form open: {screen!r}"
    return screen


def form_error(app: NightboxApp) -> str:
    return text_of(app.screen.query_one("#form-error", Static))


async def submit_form(app: NightboxApp, pilot: Any, values: dict[str, str]) -> str:
    """Type ``values`` into the open form's inputs, press F2, return its error."""
    form = app.screen
    assert isinstance(form, FormModal)
    for name, value in values.items():
        form.query_one(f"#field-{name}", Input).value = value
    await pilot.press("f2")
    await pilot.pause()
    assert app.screen is form, "the form closed although a field is invalid"
    return form_error(app)


async def test_encode_rejects_oversized_integer() -> None:
    with pytest.raises(PayloadError) as raised:
        encode("terminal/console", {"data": {"quantity": 2**64}})
    assert "Integer exceeds 64-bit range" in str(raised.value)
    assert isinstance(raised.value, ValueError)


async def test_encode_rejects_unencodable_values() -> None:
    for value in ({1: "key is no string"}, object(), "lone \udc80 surrogate"):
        with pytest.raises(PayloadError):
            encode("terminal/console", {"data": {"value": value}})


async def test_pos_refuses_oversized_numbers(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        screen = app.screen
        screen.query_one("#band", Input).value = "ib-1-901"
        screen.query_one("#item", Select).value = "beer"
        cases = {
            HUGE: f"quantity '{HUGE}' is invalid: give a whole number from 1 to 100",
            "101": "quantity '101' is invalid: give a whole number from 1 to 100",
            "\uff11\uff12": "quantity '\uff11\uff12' is invalid: give a whole "
            "number from 1 to 100",
            "9" * 5000: "quantity '" + "9" * 23 + "\u2026' is invalid: give a whole "
            "number from 1 to 100",
        }
        for quantity, expected in cases.items():
            screen.query_one("#quantity", Input).value = quantity
            await pilot.press("f2")
            await pilot.pause()
            assert message_of(app) == expected

        screen.query_one("#quantity", Input).value = "1"
        screen.query_one("#item", Select).value = "merch"
        screen.query_one("#amount", Input).value = f"{HUGE}.99"
        await pilot.press("f2")
        await pilot.pause()
        assert message_of(app) == (
            f"amount '{HUGE}.99' is invalid: give an amount from 0.01 to 10,000,000.00"
        )
        screen.query_one("#refund-tx", Input).value = "tx-1"
        screen.query_one("#refund-amt", Input).value = HUGE
        await pilot.press("f3")
        await pilot.pause()
        assert message_of(app).startswith(f"refund amount '{HUGE}' is invalid")

        assert app.is_running
        assert app.action_errors == 0
        # Nothing was sent, so nothing asked for the PIN.
        assert not isinstance(app.screen, PinScreen)
        assert not app.session.unlocked


async def test_forms_refuse_oversized_numbers(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "o")
        await pilot.press("n")
        form = form_of(app)
        form.query_one("#field-item", Select).value = "tee"
        base = {"id": "big-drop", "price": "5.00", "quota": "5"}
        drop_cases = {
            "price": (
                f"{HUGE}.99",
                f"price '{HUGE}.99' is invalid: give an amount from 0.00 to "
                "10,000,000.00",
            ),
            "quota": (
                HUGE,
                f"quota '{HUGE}' is invalid: give a whole number from 1 to 1,000,000",
            ),
            "per_guest_limit": (
                "101",
                "per guest '101' is invalid: give a whole number from 1 to 100",
            ),
            "starts_at": (
                f"+{HUGE}h",
                f"starts '{HUGE}h' is invalid: give a duration from 1s to 168h",
            ),
        }
        for field, (value, expected) in drop_cases.items():
            error = await submit_form(app, pilot, {**base, field: value})
            assert error == expected
            form.query_one(f"#field-{field}", Input).value = ""
        await pilot.press("escape")

        await pilot.press("k")
        await pilot.pause()
        await pilot.press("a")
        form = form_of(app)
        form.query_one("#field-station", Select).value = "kit-1"
        error = await submit_form(app, pilot, {"add": "10001"})
        assert error == (
            "kits to add '10001' is invalid: give a whole number from 1 to 10,000"
        )
        await pilot.press("escape")

        await pilot.press("c")
        await pilot.pause()
        await pilot.press("n")
        form = form_of(app)
        error = await submit_form(
            app, pilot, {"code": "BIG20", "value": "101", "uses": "5"}
        )
        assert error == "discount '101' is invalid: give a whole number from 1 to 100"
        error = await submit_form(app, pilot, {"value": "20", "uses": HUGE})
        assert error == (
            f"uses '{HUGE}' is invalid: give a whole number from 1 to 1,000,000"
        )
        form.query_one("#field-kind", Select).value = "amount"
        error = await submit_form(app, pilot, {"value": HUGE, "uses": "5"})
        assert error == (
            f"discount '{HUGE}' is invalid: give an amount from 0.01 to 10,000,000.00"
        )
        await pilot.press("escape")

        await pilot.press("t")
        await unlock(app, pilot, op_box.pin)
        await pilot.press("n")
        form = form_of(app)
        await pilot.pause()
        # The form's first field has the focus, so Enter and typing work.
        assert form.focused is form.query_one("#field-subject", Select)
        form.query_one("#field-subject", Select).value = "bar-1"
        form.query_one("#field-scopes", SelectionList).select("pos:charge")
        error = await submit_form(app, pilot, {"ttl": f"{HUGE}h"})
        assert error == f"lifetime '{HUGE}h' is invalid: give a duration from 1s to 24h"
        await pilot.press("escape")

        assert app.is_running
        assert app.action_errors == 0


async def test_form_error_shows_markup_as_typed(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "c")
        await pilot.press("n")
        error = await submit_form(
            app,
            pilot,
            {"code": "BIG20", "value": "20", "uses": "5", "expires_at": "ZZ[/]"},
        )

        assert "'ZZ[/]'" in error
        assert app.is_running
        assert app.action_errors == 0


async def test_unencodable_request_is_not_sent(
    op_box: OpBox, caplog: pytest.LogCaptureFixture
) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        screen = app.screen
        screen.start_action(
            screen.send("console", "nearby", {"window_s": 2**64}),
        )
        await wait_until(lambda: "not sent" in message_of(app), "the message")

        assert message_of(app) == (
            "console/nearby not sent: message from terminal/console cannot be "
            "encoded: Integer exceeds 64-bit range"
        )
        assert app.is_running
        assert app.action_errors == 1
        assert "console/nearby not sent" in caplog.text


async def test_failing_worker_is_logged_not_fatal(
    op_box: OpBox, caplog: pytest.LogCaptureFixture
) -> None:
    secret = generate_pin() + "-secret"
    app = op_box.app()

    async def fails() -> None:
        raise RuntimeError(f"failed holding {secret}")

    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        screen = app.screen
        with caplog.at_level(logging.ERROR):
            screen.start_action(fails())
            await wait_until(lambda: "unexpected" in message_of(app), "the message")
        shown = message_of(app)
        assert shown == (
            "action failed with an unexpected RuntimeError (error 1 of this "
            "session); the log file has the details, and the console goes on"
        )
        assert secret not in shown
        failures = [record for record in caplog.records if record.exc_info]
        assert len(failures) == 1
        assert failures[0].levelno == logging.ERROR

        # The screen takes the next action: a failed one does not block it.
        await pilot.press("f2")
        await pilot.pause()
        assert message_of(app) == "band is missing: type it or pick one with F5"

        screen.run_latest(fails, "poll")
        await wait_until(lambda: "poll failed" in message_of(app), "the message")
        assert app.action_errors == 2
        assert app.is_running


async def test_crash_exits_nonzero_without_locals(
    op_box: OpBox,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = op_box.app()

    def crash() -> None:
        token = generate_pin() + "-token"
        raise RuntimeError(f"crash with {len(token)} characters of token")

    with pytest.raises(RuntimeError):
        async with app.run_test(size=SIZE) as pilot:
            await start_console(app, pilot, "p")
            app.call_later(crash)
            await pilot.pause()
            await pilot.pause()

    assert app.return_code == 1
    crashes = [record for record in caplog.records if record.levelno >= 50]
    assert len(crashes) == 1
    assert crashes[0].exc_info is not None
    printed = capsys.readouterr()
    output = printed.out + printed.err
    assert "stopped on an unexpected RuntimeError" in output
    assert "-token" not in output
    assert "locals" not in output.lower()


async def test_esc_leaves_a_field(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        band = app.screen.query_one("#band", Input)
        band.focus()
        await pilot.pause()
        footer = [key.description for key in app.screen.query(FooterKey)]
        assert "Leave field" in footer

        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.focused is app.screen.query_one("#nearby", DataTable)
        footer = [key.description for key in app.screen.query(FooterKey)]
        assert "Leave field" not in footer

        await pilot.press("d")
        await pilot.pause()
        assert app.current_mode == "dashboard"
        assert band.value == ""


async def test_revoked_token_asks_pin_and_retries(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        app.screen.query_one("#band", Input).value = "ib-1-902"
        await pilot.press("f4")
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "balance" in message_of(app), "the first balance")
        token_id = app.session.token_id
        assert token_id is not None
        assert op_box.box.tokens.revoke(token_id)
        app.screen.query_one("#message", Static).update("")

        await pilot.press("f4")
        # The box refuses the revoked token; the console asks for the PIN
        # and sends the request again.
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "balance" in message_of(app), "the retried balance")
        assert message_of(app) == (
            "band ib-1-902: balance 0.00 EUR, spent tonight 0.00 EUR"
        )
        assert app.session.token_id not in (None, token_id)


async def test_refusal_shows_money(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        screen = app.screen
        screen.query_one("#band", Input).value = "ib-1-903"
        screen.query_one("#item", Select).value = "beer"
        screen.query_one("#quantity", Input).value = "2"
        await pilot.press("f2")
        await unlock(app, pilot, op_box.pin)
        await wait_until(lambda: "refused" in message_of(app), "the refusal")
        lines = message_of(app).split("\n")
        assert lines[0].startswith("wallet/charge refused: insufficient-funds:")
        assert lines[1] == "balance 0.00 EUR, charge 9.00 EUR"


# The box's clock: a box on a ManualClock, for the token's lifetime.


@pytest_asyncio.fixture(name="clock_box", scope="module", loop_scope="module")
async def clock_box_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[OpBox, ManualClock]]:
    """The operations test site's box on a clock that moves only when told."""
    # The box judges a request's deadline (the console's wall time) on its
    # own trusted clock, so the night starts an hour back: the 15 minutes the
    # test moves the clock on keep it behind the wall clock.
    clock = ManualClock(time.time() - 3600)
    config = op_site_config(tmp_path_factory.mktemp("clock") / "box", clock.now())
    credentials = SiteCredentials(config.data_dir / "secrets" / "broker.json")
    pin = generate_pin()
    PinFile(pin_path(config.data_dir)).set(pin)
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
        config.commerce.terminals,
    )
    broker = await start_broker(
        BrokerConfig(mode="mosquitto"), config.data_dir / "run", credentials, policy
    )
    try:
        async with Box(
            config,
            clock,
            credentials,
            broker.host,
            broker.port,
            broker_kind=broker.kind,
            health_interval_s=0.05,
        ) as box:
            await asyncio.wait_for(box.bus.connected.wait(), timeout=10)
            yield OpBox(config, credentials, broker, box, pin), clock
    finally:
        await broker.stop()


async def test_token_lifetime_is_box_time(
    clock_box: tuple[OpBox, ManualClock],
) -> None:
    box, clock = clock_box
    account = box.credentials.account("terminal-console")
    app = NightboxApp(
        LinkSettings(
            host=box.broker.host,
            port=box.broker.port,
            site=box.config.site_id,
            box=box.config.box_id,
            username=account.username,
            password=account.password,
        )
    )
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        app.screen.query_one("#band", Input).value = "ib-1-904"
        await pilot.press("f4")
        await unlock(app, pilot, box.pin)
        await wait_until(lambda: "balance" in message_of(app), "the first balance")
        first = app.session.token_id

        # 14.5 minutes of the box's time pass in a moment, as at demo speed:
        # under a minute of the 15-minute token is left.
        clock.advance_to(clock.now() + 14.5 * 60)
        await wait_until(lambda: not app.session.unlocked, "the token to run out")
        app.screen.query_one("#message", Static).update("")
        await pilot.press("f4")
        await unlock(app, pilot, box.pin)
        await wait_until(lambda: "balance" in message_of(app), "the second balance")
        assert app.session.token_id not in (None, first)
        assert "issue a new one" not in message_of(app)


async def test_nearby_rows_stay_under_cursor(op_box: OpBox) -> None:
    app = op_box.app()
    reader_id = "exit-1"
    uuid = op_box.config.ibeacon_uuid or b""
    seq = 0

    async def publish(reader: Any, rssi: dict[int, int]) -> None:
        nonlocal seq
        seq += 1
        now = round(time.time(), 3)
        sightings = [
            {
                "t": now,
                "addr": f"c4:7c:8d:6a:12:{minor % 100:02d}",
                "rssi": value,
                "n": 3,
                "adv": ibeacon(uuid, 1, minor, -59).hex(),
            }
            for minor, value in rssi.items()
        ]
        batch = {
            "reader": reader_id,
            "boot": "stable-test",
            "seq": seq,
            "t": now,
            "heard": len(sightings),
            "sightings": sightings,
        }
        await reader.publish_json(reader.topics.sightings(reader_id), {"data": batch})

    async with (
        op_box.client("reader-exit-1", "reader", reader_id) as reader,
        app.run_test(size=SIZE) as pilot,
    ):
        await start_console(app, pilot, "p")
        nearby = app.screen.query_one("#nearby", DataTable)

        async def both_shown() -> bool:
            await publish(reader, {711: -40, 712: -70})
            await asyncio.sleep(0.3)
            rows = list(table_rows(nearby))
            return rows[:2] == ["ib-1-711", "ib-1-712"]

        await wait_until(both_shown, "the two bands, strongest first")
        nearby.focus()
        nearby.move_cursor(row=nearby.get_row_index("ib-1-712"))

        async def swapped_rssi() -> bool:
            await publish(reader, {711: -75, 712: -35})
            await asyncio.sleep(0.3)
            return table_rows(nearby).get("ib-1-712", ["", ""])[1] == "-35"

        await wait_until(swapped_rssi, "the new RSSI values")
        assert list(table_rows(nearby))[:2] == ["ib-1-711", "ib-1-712"]
        await pilot.press("f5")
        await pilot.pause()
        assert app.screen.query_one("#band", Input).value == "ib-1-712"


async def test_header_fits_80_columns(demo_night: DemoNight) -> None:
    settings = LinkSettings.from_login_file(demo_night.console_file)
    app = NightboxApp(settings, demo_pin=demo_night.pin)
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "p")
        app.screen.query_one("#band", Input).value = "band-1"
        await pilot.press("f4")
        await unlock(app, pilot, demo_night.pin)
        await pilot.pause()
        header = screen_text(app).split("\n")[0]
        assert header.strip().startswith("Nightbox demo")
        assert " live " in header
        assert f"demo PIN {demo_night.pin} admin " in header
        assert re.search(r"[0-9]{2}:[0-9]{2}:[0-9]{2} clock trusted", header)


async def test_reader_without_status_row(op_box: OpBox) -> None:
    app = op_box.app()
    async with app.run_test(size=SIZE) as pilot:
        await start_console(app, pilot, "r")
        readers = app.screen.query_one("#readers", DataTable)
        await wait_until(lambda: "kit-1" in table_rows(readers), "the kit reader")
        row = table_rows(readers)["kit-1"]
        assert row[:4] == ["kit-1", "kit", "cloakroom", "wifi"]
        # One note where the health columns would each show "--".
        assert row[5:12] == ["no status yet", "", "", "", "", "", ""]


async def test_drop_state_follows_box_time() -> None:
    drop = {"state": "scheduled", "starts_at": 1000, "ends_at": 2000}

    assert drop_state_text(drop, 999.0) == "upcoming"
    assert drop_state_text(drop, 1000.0) == "open"
    assert drop_state_text(drop, 2000.0) == "ended"
    assert drop_state_text(drop, None) == "scheduled"
    assert drop_state_text({**drop, "state": "live"}, 999.0) == "live"
    assert drop_state_text({**drop, "state": "stopped"}, 1500.0) == "stopped"
