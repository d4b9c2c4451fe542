"""A guest's night on the portal of a running demo, in headless Chromium.

``nightbox demo --portal-file --hold`` runs a slow night as a subprocess.
``walkthrough.mjs`` (playwright-core driving Debian's /usr/bin/chromium)
plays the guest the demo chose. The guest opts in on the portal and waits
until the demo's kit station hands them a kit. Then they read the coupon,
claim the late drop with one tap and open the tee's try-on page until
``<model-viewer>`` has loaded the model from the box's asset cache. Every
request the browser makes must go to the portal on 127.0.0.1, and no page
may report a CSP violation.
``make test`` installs chromium (tests/ensure-chromium) and the npm packages
(tests/ensure-node).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("walkthrough.mjs")
CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = ROOT / "node_modules" / "playwright-core" / "package.json"
# A 20-minute night at 24 simulated seconds per second lasts 50 s. The
# demo's guest takes a kit about 30 s in, which leaves the browser time to
# opt in first and to claim before the late drop closes with the night.
NIGHT = ["--guests", "40", "--seed", "1", "--minutes", "20", "--speed", "24"]
START_TIMEOUT_S = 60.0
# After the guest's kit time, /me may take this long to show the kit.
KIT_MARGIN_S = 30.0
WALK_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0
HOLD_MESSAGE = "keep running until Ctrl-C or SIGTERM"
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Walkthrough:
    """What the browser saw and what the demo's box stored."""

    portal: dict[str, Any]
    browser: dict[str, Any]
    demo_returncode: int
    demo_results: dict[str, Any]
    demo_log: str
    box_dir: Path


def require_browser() -> str:
    """Return the path of node; fail with the install command when parts are missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; run 'make deps' (tests/ensure-node)")
    if not PLAYWRIGHT.is_file():
        pytest.fail(
            f"{PLAYWRIGHT.parent} is missing; run 'npm ci' in {ROOT} or "
            "'make deps' (tests/ensure-node)"
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is not installed; run 'sh tests/ensure-chromium' or "
            "'make deps', which install Debian's chromium with apt-get"
        )
    return node


def wait_for_file(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``path`` exists; fail when the demo exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the demo exited early: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no portal file within {START_TIMEOUT_S} s: {log.read_text()}")
        time.sleep(0.1)


def wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    """Wait until the file ``path`` contains ``text``; fail on timeout."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            contents = path.read_text(errors="replace")[-2000:]
            pytest.fail(f"{text!r} did not appear within {timeout_s} s: {contents}")
        time.sleep(0.1)


def run_browser(node: str, portal_file: Path, kit_timeout_s: float) -> dict[str, Any]:
    """Run the walkthrough script and return its JSON output."""
    completed = subprocess.run(
        [node, str(SCRIPT), str(portal_file), f"{kit_timeout_s:.1f}"],
        capture_output=True,
        text=True,
        timeout=WALK_TIMEOUT_S,
        check=False,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.strip().splitlines()
    assert lines, f"the script printed nothing: {completed.stderr[-2000:]}"
    browser: dict[str, Any] = json.loads(lines[-1])
    return browser


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    """Run one demo night with the browser on its portal."""
    node = require_browser()
    folder = tmp_path_factory.mktemp("portal-e2e")
    box_dir = folder / "box"
    portal_file = folder / "portal.json"
    stdout_path = folder / "demo.out"
    log_path = folder / "demo.log"
    command = [sys.executable, "-m", "appliance", "demo", "--headless", "--json"]
    options = ["--data-dir", str(box_dir), "--portal-file", str(portal_file)]
    with stdout_path.open("wb") as stdout, log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *NIGHT, *options, "--hold"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=log,
            cwd=ROOT,
        )
    try:
        wait_for_file(portal_file, process, log_path)
        portal = json.loads(portal_file.read_text())
        # The portal file appears as the night starts, so the kit comes
        # about this many wall-clock seconds from now.
        kit_in_s = (portal["kit_at"] - portal["night_start"]) / portal["speed"]
        browser = run_browser(node, portal_file, kit_in_s + KIT_MARGIN_S)

        # The demo keeps running once the night is over, until SIGTERM ends the hold.
        night_s = (portal["night_end"] - portal["night_start"]) / portal["speed"]
        wait_for_text(log_path, HOLD_MESSAGE, night_s + STOP_TIMEOUT_S)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    output = stdout_path.read_text()
    yield Walkthrough(
        portal=portal,
        browser=browser,
        demo_returncode=returncode,
        demo_results=json.loads(output) if output.strip() else {},
        demo_log=log_path.read_text(errors="replace"),
        box_dir=box_dir,
    )


def query(box_dir: Path, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    """Return the rows of ``sql`` in the demo box's SQLite database, read-only."""
    uri = f"file:{box_dir / 'nightbox.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return connection.execute(sql, parameters).fetchall()


def step(walkthrough: Walkthrough, name: str) -> dict[str, Any]:
    """Return what the browser recorded for step ``name``; fail when it never ran."""
    steps: dict[str, Any] = walkthrough.browser["steps"]
    assert walkthrough.browser["error"] is None, walkthrough.browser["error"]
    assert name in steps, f"step {name!r} did not run; ran {sorted(steps)}"
    recorded: dict[str, Any] = steps[name]
    return recorded


def test_demo_prints_portal_address(walkthrough: Walkthrough) -> None:
    assert f"Portal: {walkthrough.portal['url']}/" in walkthrough.demo_log
    assert urlsplit(walkthrough.portal["url"]).hostname == "127.0.0.1"


def test_demo_holds_then_reports(walkthrough: Walkthrough) -> None:
    assert walkthrough.demo_returncode == 0, walkthrough.demo_log[-2000:]
    assert walkthrough.demo_results["guests"] == 40
    assert walkthrough.demo_results["ledger_ok"] is True
    assert "Traceback" not in walkthrough.demo_log


def test_optin_lands_on_me(walkthrough: Walkthrough) -> None:
    optin = step(walkthrough, "optin")

    assert optin["url"] == f"{walkthrough.portal['url']}/me"
    assert optin["consent_text"]
    assert "not yet" in optin["kit_status"]
    assert optin["coupons"] == 0


def test_optin_stored_with_consent(walkthrough: Walkthrough) -> None:
    optin = step(walkthrough, "optin")
    rows = query(
        walkthrough.box_dir,
        "SELECT contact_kind, consent_text FROM optins WHERE band = ?",
        walkthrough.portal["band"],
    )

    assert rows == [("email", optin["consent_text"])]


def test_kit_brings_coupon(walkthrough: Walkthrough) -> None:
    kit = step(walkthrough, "kit")

    assert "not yet" not in kit["kit_status"], kit
    assert "kit-1" in kit["kit_status"]
    assert len(kit["coupon_codes"]) == 1, kit


def test_coupon_matches_store(walkthrough: Walkthrough) -> None:
    kit = step(walkthrough, "kit")
    stored = query(
        walkthrough.box_dir,
        "SELECT code FROM coupons WHERE band = ?",
        walkthrough.portal["band"],
    )

    assert stored == [(kit["coupon_codes"][0].strip(),)]


def test_drop_claim_paid(walkthrough: Walkthrough) -> None:
    claim = step(walkthrough, "claim")

    assert int(claim["stock_before"]) >= 1
    assert claim["error"] is None
    assert "paid" in claim["claim_result"]
    assert claim["pickup_code"]


def test_drop_claim_matches_store(walkthrough: Walkthrough) -> None:
    claim = step(walkthrough, "claim")
    rows = query(
        walkthrough.box_dir,
        "SELECT status, terminal, pickup_code FROM drop_claims"
        " WHERE band = ? AND drop_id = ?",
        walkthrough.portal["band"],
        walkthrough.portal["drop"],
    )

    assert len(rows) == 1, rows
    status, terminal, pickup_code = rows[0]
    assert status == "paid"
    assert terminal == "portal"
    assert pickup_code == claim["pickup_code"].replace("-", "")


def test_try_on_model_loads(walkthrough: Walkthrough) -> None:
    try_on = step(walkthrough, "try_on")

    assert try_on["defined"] is True
    assert try_on["load"]["event"] in ("load", "already-loaded"), try_on["load"]
    assert try_on["loaded"] is True
    assert try_on["model_is_visible"] is True


def test_try_on_model_from_box(walkthrough: Walkthrough) -> None:
    try_on = step(walkthrough, "try_on")
    model = (walkthrough.box_dir / "usb-assets" / "tee.glb").read_bytes()
    sha256 = hashlib.sha256(model).hexdigest()

    assert try_on["src"] == f"/assets/{sha256}"
    responses = try_on["model_responses"]
    assert len(responses) == 1, responses
    response = responses[0]
    assert response["url"] == f"{walkthrough.portal['url']}/assets/{sha256}"
    assert response["status"] == 200
    assert response["cache_control"] == IMMUTABLE
    assert response["etag"] == f'"{sha256}"'
    assert response["content_type"] == "model/gltf-binary"
    assert response["bytes"] == len(model)
    assert response["magic"] == "glTF"


def test_requests_stay_on_portal(walkthrough: Walkthrough) -> None:
    origin = walkthrough.browser["origin"]
    requests = walkthrough.browser["requests"]
    elsewhere = [
        request["url"]
        for request in requests
        if urlsplit(request["url"]).hostname != "127.0.0.1"
    ]
    other_origin = [
        request["url"] for request in requests if not request["url"].startswith(origin)
    ]

    assert len(requests) > 0
    assert walkthrough.browser["foreign_requests"] == []
    assert elsewhere == []
    assert other_origin == []
    assert walkthrough.browser["failed_requests"] == []


def test_model_viewer_served_by_box(walkthrough: Walkthrough) -> None:
    urls = [request["url"] for request in walkthrough.browser["requests"]]

    assert f"{walkthrough.portal['url']}/static/vendor/model-viewer.min.js" in urls


def test_no_csp_violations(walkthrough: Walkthrough) -> None:
    assert walkthrough.browser["csp_violations"] == []
    assert walkthrough.browser["page_errors"] == []


def test_no_console_errors(walkthrough: Walkthrough) -> None:
    assert walkthrough.browser["console_errors"] == []
