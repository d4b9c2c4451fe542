"""``nightbox demo``'s guest portal: the preloaded model, the portal file, ``--hold``.

The browser walkthrough itself is in tests/portal/e2e. These tests check
which guest the demo picks for a browser and what the portal file holds.
They also check that the box serves the signed sample model, and that
``--hold`` keeps the box up until SIGTERM and then reports the night.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from appliance.assets.manifest import parse_manifest_document
from appliance.clock import ManualClock
from appliance.sim._economy import LATE_DROP, TEE_PRICE, plan_purchases
from appliance.sim._portal import (
    NoPortalGuestError,
    choose_portal_guest,
    demo_portal_site,
    local_time,
)
from appliance.sim._site import KIT_STATION, demo_config
from appliance.sim._world import NightPlan
from appliance.sim.demo import NIGHT_START_S

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
HOLD_MESSAGE = "keep running until Ctrl-C or SIGTERM"
PORTAL_FILE_KEYS = {
    "url",
    "band",
    "band_code",
    "drop",
    "item",
    "price",
    "balance",
    "checkout_at",
    "kit_at",
    "drop_starts_at",
    "drop_ends_at",
    "drop_open_until",
    "night_start",
    "night_end",
    "speed",
    "pid",
}


def night(guests: int, seed: int, minutes: float) -> tuple[NightPlan, Any]:
    """Return a night's plan and the demo site's configuration for it."""
    plan = NightPlan(guests, 2, seed, NIGHT_START_S, minutes * 60.0)
    return plan, demo_config(plan, Path("demo-site-not-written"), "embedded")


def kit_stock(config: Any) -> int:
    """Return the kit station's stock in ``config``."""
    return sum(r.kit_stock for r in config.readers if r.id == KIT_STATION)


@pytest.mark.parametrize("seed", range(1, 9))
def test_portal_guest_fits_walkthrough(seed: int) -> None:
    plan, config = night(100, seed, 30)
    purchases = plan_purchases(plan, config.commerce)
    stock = kit_stock(config)

    chosen = choose_portal_guest(plan, config.commerce, purchases, stock)

    guest = chosen.guest
    assert guest.opt_in is None
    assert not guest.asks_twice
    assert guest.leave_s is not None
    assert guest.kit_visit_s is not None
    assert chosen.checkout_at < chosen.kit_at
    assert chosen.drop.id == LATE_DROP
    assert chosen.drop.item == "tee"
    assert chosen.drop.starts_at <= chosen.kit_at < chosen.drop.ends_at
    visits = sorted(
        (g.kit_visit_s, g.band.index) for g in plan.guests if g.kit_visit_s is not None
    )
    assert visits.index((chosen.kit_at, guest.band.index)) < stock
    assert chosen.balance >= TEE_PRICE
    rush = {p.guest.band.index for p in purchases if p.kind == "drop"}
    assert guest.band.index not in rush


def test_portal_guest_balance_from_plan() -> None:
    plan, config = night(60, 1, 30)
    purchases = plan_purchases(plan, config.commerce)

    chosen = choose_portal_guest(plan, config.commerce, purchases, kit_stock(config))

    own = [p for p in purchases if p.guest.band.index == chosen.guest.band.index]
    top_ups = sum(p.amount for p in own if p.kind == "topup")
    drinks = sum(p.amount for p in own if p.kind == "drink")
    assert top_ups > 0
    assert chosen.balance == top_ups - drinks


def test_portal_guest_none_fits() -> None:
    plan, config = night(1, 1, 30)
    purchases = plan_purchases(plan, config.commerce)

    with pytest.raises(NoPortalGuestError, match="run more guests"):
        choose_portal_guest(plan, config.commerce, purchases, kit_stock(config))


def test_late_drop_not_in_purchase_plan() -> None:
    plan, config = night(200, 1, 60)
    late = next(drop for drop in config.commerce.drops if drop.id == LATE_DROP)

    claims = [p for p in plan_purchases(plan, config.commerce) if p.kind == "drop"]

    assert claims, "the first drop's rush is missing"
    assert {p.at for p in claims} == {config.commerce.drops[0].starts_at}
    assert late.starts_at > config.commerce.drops[0].starts_at
    assert late.quantity == 200 // 50


def test_portal_site_signed_folder(tmp_path: Path) -> None:
    plan, config = night(40, 1, 20)
    config = demo_config(plan, tmp_path, "embedded")

    site = demo_portal_site(config, plan, "I agree.")

    assert site.portal is not None
    assert site.portal.host == "127.0.0.1"
    assert site.portal.public_url == f"http://127.0.0.1:{site.portal.port}"
    assert site.portal.consent_text == "I agree."
    assert site.assets.preload_dir == tmp_path / "usb-assets"
    key_file = tmp_path / "secrets" / "demo-operator.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(site.fleet.operator_keys) == 1
    payload = (tmp_path / "usb-assets" / "manifest.json").read_bytes()
    model = (tmp_path / "usb-assets" / "tee.glb").read_bytes()
    # Verified as the box verifies it: its operator keys and its clock.
    _signed, manifest = parse_manifest_document(
        payload,
        site.fleet.operator_keys,
        site="demo",
        clock=ManualClock(plan.start_s),
    )
    assert model[:4] == b"glTF"
    assert len(manifest.entries) == 1
    entry = manifest.entries[0]
    assert entry.sha256 == hashlib.sha256(model).hexdigest()
    assert entry.size == len(model)
    assert entry.item == "tee"
    assert entry.media_type == "model/gltf-binary"


def test_portal_file_without_guest_fails(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "appliance", "demo", "--headless", "--json"]
    night_options = ["--speed", "5000", "--guests", "1", "--minutes", "10"]
    portal_file = tmp_path / "portal.json"

    result = subprocess.run(
        [*command, *night_options, "--portal-file", str(portal_file)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 2, result.stderr[-2000:]
    assert "no guest of this night" in result.stderr
    assert "Traceback" not in result.stderr
    assert not portal_file.exists()


def wait_for(condition: Any, failure: str, log: Path, timeout_s: float) -> None:
    """Wait until ``condition()`` is true; fail with the demo's log on timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:]
            pytest.fail(f"{failure} within {timeout_s} s: {tail}")
        time.sleep(0.05)


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` (on loopback) and return status, headers and body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_hold_serves_portal_until_sigterm(tmp_path: Path) -> None:
    portal_file = tmp_path / "portal.json"
    box_dir = tmp_path / "box"
    stdout_path = tmp_path / "demo.out"
    log_path = tmp_path / "demo.log"
    command = [sys.executable, "-m", "appliance", "demo", "--headless", "--json"]
    night_options = ["--speed", "5000", "--guests", "40", "--minutes", "20"]
    files = ["--data-dir", str(box_dir), "--portal-file", str(portal_file)]
    with stdout_path.open("wb") as stdout, log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *night_options, *files, "--hold"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=log,
        )
    try:
        wait_for(
            lambda: HOLD_MESSAGE in log_path.read_text(),
            "the demo did not hold",
            log_path,
            START_TIMEOUT_S,
        )
        assert process.poll() is None
        mode = stat.S_IMODE(portal_file.stat().st_mode)
        portal = json.loads(portal_file.read_text())
        model = (box_dir / "usb-assets" / "tee.glb").read_bytes()
        sha256 = hashlib.sha256(model).hexdigest()
        page_status, _headers, page = fetch(f"{portal['url']}/items/tee/try-on")
        _status, _headers, optin_page = fetch(f"{portal['url']}/optin")
        asset_status, asset_headers, asset = fetch(f"{portal['url']}/assets/{sha256}")

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    demo_log = log_path.read_text()
    assert returncode == 0, demo_log[-2000:]
    assert f"Portal: {portal['url']}/" in demo_log
    assert mode == 0o600
    assert set(portal) == PORTAL_FILE_KEYS
    assert portal["url"].startswith("http://127.0.0.1:")
    assert portal["drop"] == LATE_DROP
    assert portal["item"] == "tee"
    assert portal["night_start"] <= portal["checkout_at"] < portal["kit_at"]
    assert portal["kit_at"] < portal["night_end"]
    assert portal["drop_ends_at"] > portal["night_end"]
    assert portal["drop_open_until"] == local_time(portal["drop_ends_at"], "UTC")
    assert f"until {portal['drop_open_until']} on the simulated clock" in demo_log
    assert portal["speed"] == 5000
    assert page_status == 200
    assert f'src="/assets/{sha256}"' in page.decode()
    assert "until I ask the staff to delete it" in optin_page.decode()
    assert "30 days" not in optin_page.decode()
    assert asset_status == 200
    assert asset == model
    assert asset_headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert not portal_file.exists()
    results = json.loads(stdout_path.read_text())
    assert results["guests"] == 40
    assert results["ledger_ok"] is True
    uri = f"file:{box_dir / 'nightbox.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        late_claims = connection.execute(
            "SELECT COUNT(*) FROM drop_claims WHERE drop_id = ?", (LATE_DROP,)
        ).fetchone()
        optin = connection.execute(
            "SELECT COUNT(*) FROM optins WHERE band = ?", (portal["band"],)
        ).fetchone()
        blobs = connection.execute("SELECT sha256 FROM asset_blobs").fetchall()
    assert late_claims == (0,)
    assert optin == (0,)
    assert blobs == [(sha256,)]
