"""``nightbox demo --data-dir``: the site file it writes, and the organiser commands.

The unit tests check that a site document loads back into the same
configuration, for the shipped sample site and for the demo's own site. The
module fixture runs a held demo night with ``--data-dir`` as a subprocess
and, while the box runs, points ``nightbox report``, ``portal sign``,
``portal band-codes`` and ``guest erase`` at ``DIR/site.toml``. A guest
claims the late drop on the portal after the night is over. Once the demo
stops, ``nightbox run --config DIR/site.toml`` starts the same box again.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import http.cookiejar
import io
import json
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from appliance.config import SiteConfig, load_config, parse_config
from appliance.sim._economy import LATE_DROP, LATE_DROP_AFTER_NIGHT_S
from appliance.sim._portal import demo_portal_site
from appliance.sim._site import demo_config
from appliance.sim._site_file import SITE_FILE_NAME, site_document, write_site_file
from appliance.sim._world import NightPlan
from appliance.sim.demo import DEMO_STUDIO, NIGHT_START_S

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0
HOLD_MESSAGE = "keep running until Ctrl-C or SIGTERM"
NIGHT = "2026-05-28"
RUNNING_MESSAGE = "Box box-1 of site demo running"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM_ID = re.compile(r'name="form_id" value="([^"]+)"')


def nightbox(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox`` with ``arguments`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def comparable(config: SiteConfig) -> SiteConfig:
    """Return ``config`` with its paths resolved, as a site file loads them."""
    preload_dir = config.assets.preload_dir
    return dataclasses.replace(
        config,
        data_dir=config.data_dir.resolve(),
        assets=dataclasses.replace(
            config.assets,
            preload_dir=None if preload_dir is None else preload_dir.resolve(),
        ),
    )


def test_sample_site_loads_back_equal(tmp_path: Path) -> None:
    sample = resources.files("appliance") / "samples" / "site.toml"
    with resources.as_file(sample) as sample_path:
        config = load_config(sample_path)

    document = site_document(config, tmp_path, [])
    loaded = parse_config(document, base_dir=tmp_path)

    assert config.commerce.promo_codes
    assert config.commerce.members
    assert config.bands
    assert loaded == config


def test_demo_site_file_loads_back_equal(tmp_path: Path) -> None:
    plan = NightPlan(40, 2, 1, NIGHT_START_S, 20 * 60.0)
    config = demo_portal_site(
        dataclasses.replace(
            demo_config(plan, tmp_path, "embedded"), studio=DEMO_STUDIO
        ),
        plan,
        "I agree.",
    )

    path = write_site_file(config, NIGHT)

    assert path == tmp_path / SITE_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"--night {NIGHT}" in text
    document = tomllib.loads(text)
    assert document["box"]["data_dir"] == "."
    assert document["assets"]["preload_dir"] == "usb-assets"
    assert len(document["fleet"]["operator_keys"]) == 1
    assert comparable(load_config(path)) == comparable(config)


def test_late_drop_ends_after_night() -> None:
    plan = NightPlan(40, 2, 1, NIGHT_START_S, 20 * 60.0)
    config = demo_config(plan, Path("demo-site-not-written"), "embedded")

    late = next(drop for drop in config.commerce.drops if drop.id == LATE_DROP)

    assert late.starts_at < plan.end_s
    assert late.ends_at == plan.end_s + LATE_DROP_AFTER_NIGHT_S


@dataclass(frozen=True, slots=True)
class HeldNight:
    """What the organiser commands and a phone guest got from a held demo night."""

    box_dir: Path
    site_file: Path
    output: Path
    demo_log: str
    demo_returncode: int
    portal: dict[str, Any]
    report: subprocess.CompletedProcess[str]
    sign: subprocess.CompletedProcess[str]
    band_codes: subprocess.CompletedProcess[str]
    erase: subprocess.CompletedProcess[str]
    erased_email: str
    stock_before: dict[str, Any]
    claim_status: int
    claim_page: str
    run_returncode: int
    run_log: str


def wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    """Wait until the file ``path`` contains ``text``; fail on timeout."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            contents = path.read_text(errors="replace")[-2000:]
            pytest.fail(f"{text!r} did not appear within {timeout_s} s: {contents}")
        time.sleep(0.05)


def fetch_json(url: str) -> dict[str, Any]:
    """GET ``url`` (on loopback) and return its JSON body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        document: dict[str, Any] = json.loads(response.read())
        return document


def claim_on_portal(url: str, drop: str, band_code: str) -> tuple[int, str]:
    """Claim ``drop`` as a phone does: open its page, then post the claim form.

    Returns the response's status and page.
    """
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"{url}/drops/{drop}", timeout=10) as response:
        page = response.read().decode()
    form = re.search(r'<form id="claim".*?</form>', page, re.DOTALL)
    assert form is not None, page
    csrf = CSRF.search(form.group(0))
    form_id = FORM_ID.search(form.group(0))
    assert csrf is not None and form_id is not None, form.group(0)
    body = urllib.parse.urlencode(
        {"csrf": csrf.group(1), "form_id": form_id.group(1), "band_code": band_code}
    ).encode()
    request = urllib.request.Request(
        f"{url}/drops/{drop}/claim", data=body, headers={"Origin": url}
    )
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def first_email(box_dir: Path) -> str:
    """Return an email address that a simulated guest opted in with."""
    rows = query(
        box_dir, "SELECT contact FROM optins WHERE contact_kind = 'email' LIMIT 1"
    )
    assert rows, "no guest of the night opted in with an email address"
    return str(rows[0][0])


def query(box_dir: Path, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    """Return the rows of ``sql`` in the demo box's SQLite database, read-only."""
    uri = f"file:{box_dir / 'nightbox.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return connection.execute(sql, parameters).fetchall()


def run_box(site_file: Path, log_path: Path) -> int:
    """Start ``nightbox run`` on ``site_file`` and stop it; return its exit code."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(site_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_text(log_path, RUNNING_MESSAGE, START_TIMEOUT_S)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def held_night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeldNight]:
    """Run a held demo night and the organiser commands on its site file."""
    folder = tmp_path_factory.mktemp("demo-site-file")
    box_dir = folder / "box"
    site_file = box_dir / SITE_FILE_NAME
    output = folder / "output"
    portal_file = folder / "portal.json"
    log_path = folder / "demo.log"
    command = [sys.executable, "-m", "appliance", "demo", "--headless", "--json"]
    night = ["--speed", "5000", "--guests", "40", "--seed", "1", "--minutes", "20"]
    files = ["--data-dir", str(box_dir), "--portal-file", str(portal_file)]

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *night, *files, "--hold"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for_text(log_path, HOLD_MESSAGE, START_TIMEOUT_S)
        portal = json.loads(portal_file.read_text())

        # The organiser commands, while the held box still runs.
        config = ["--config", str(site_file)]
        report = nightbox("report", *config, "--night", NIGHT, "--output", str(output))
        sign = nightbox("portal", "sign", *config, "--output", str(output / "sign.png"))
        band_codes = nightbox("portal", "band-codes", *config, "--band", portal["band"])
        erased_email = first_email(box_dir)
        erase = nightbox("guest", "erase", *config, "--email", erased_email)

        # A phone guest claims the late drop after the night is over.
        stock_url = f"{portal['url']}/drops/{portal['drop']}/stock"
        stock_before = fetch_json(stock_url)
        claim_status, claim_page = claim_on_portal(
            portal["url"], portal["drop"], portal["band_code"]
        )

        process.send_signal(signal.SIGTERM)
        demo_returncode = process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    # Once the demo has stopped, the same box starts from its site file.
    run_log_path = folder / "run.log"
    run_returncode = run_box(site_file, run_log_path)
    yield HeldNight(
        box_dir=box_dir,
        site_file=site_file,
        output=output,
        demo_log=log_path.read_text(errors="replace"),
        demo_returncode=demo_returncode,
        portal=portal,
        report=report,
        sign=sign,
        band_codes=band_codes,
        erase=erase,
        erased_email=erased_email,
        stock_before=stock_before,
        claim_status=claim_status,
        claim_page=claim_page,
        run_returncode=run_returncode,
        run_log=run_log_path.read_text(errors="replace"),
    )


def test_demo_prints_night_and_site_file(held_night: HeldNight) -> None:
    assert held_night.demo_returncode == 0, held_night.demo_log[-2000:]
    assert f"Night: {NIGHT}\n" in held_night.demo_log
    assert f"Site file: {held_night.site_file} " in held_night.demo_log
    assert "Traceback" not in held_night.demo_log


def test_site_file_points_at_box(held_night: HeldNight) -> None:
    config = load_config(held_night.site_file)

    assert config.site_id == "demo"
    assert config.data_dir == held_night.box_dir.resolve()
    assert config.portal is not None
    assert config.portal.public_url == held_night.portal["url"]
    assert config.commerce.night_of(held_night.portal["night_start"]) == NIGHT


def test_report_on_demo_store(held_night: HeldNight) -> None:
    assert held_night.report.returncode == 0, held_night.report.stderr
    html = held_night.output / f"report-{NIGHT}.html"
    figures = json.loads((held_night.output / f"report-{NIGHT}.json").read_text())

    assert html.stat().st_size > 0
    assert figures["night"] == NIGHT
    assert figures["site"] == "demo"
    assert "tee-drop" in [drop["drop"] for drop in figures["drops"]]


def test_sign_written_for_demo(held_night: HeldNight) -> None:
    sign = held_night.output / "sign.png"

    assert held_night.sign.returncode == 0, held_night.sign.stderr
    assert f"Wrote {sign}" in held_night.sign.stdout
    assert sign.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_band_codes_match_portal(held_night: HeldNight) -> None:
    assert held_night.band_codes.returncode == 0, held_night.band_codes.stderr
    rows = list(csv.DictReader(io.StringIO(held_night.band_codes.stdout)))
    code = held_night.portal["band_code"]

    assert rows == [
        {
            "band": held_night.portal["band"],
            "code": code,
            "url": f"{held_night.portal['url']}/band#{code}",
        }
    ]


def test_guest_erase_on_demo_store(held_night: HeldNight) -> None:
    assert held_night.erase.returncode == 0, held_night.erase.stderr
    assert "rows changed for 1 bands" in held_night.erase.stdout
    assert held_night.erased_email not in held_night.erase.stdout
    left = query(
        held_night.box_dir,
        "SELECT COUNT(*) FROM optins WHERE contact = ?",
        held_night.erased_email,
    )
    coupons = query(
        held_night.box_dir,
        "SELECT COUNT(*) FROM coupons WHERE contact = ?",
        held_night.erased_email,
    )
    erasures = query(held_night.box_dir, "SELECT COUNT(*) FROM erasures")

    assert left == [(0,)]
    assert coupons == [(0,)]
    assert erasures == [(1,)]


def test_late_drop_claimed_after_night(held_night: HeldNight) -> None:
    portal = held_night.portal
    claims = query(
        held_night.box_dir,
        "SELECT status, terminal FROM drop_claims WHERE band = ? AND drop_id = ?",
        portal["band"],
        portal["drop"],
    )

    assert portal["drop"] == LATE_DROP
    assert portal["drop_ends_at"] == portal["night_end"] + LATE_DROP_AFTER_NIGHT_S
    assert held_night.stock_before["available"] >= 1
    assert held_night.claim_status == 200, held_night.claim_page
    assert 'data-testid="claim-result">paid<' in held_night.claim_page
    assert claims == [("paid", "portal")]


def test_run_starts_demo_box(held_night: HeldNight) -> None:
    assert held_night.run_returncode == 0, held_night.run_log[-2000:]
    assert f"data folder {held_night.box_dir.resolve()}" in held_night.run_log
    assert "Stopped." in held_night.run_log
    assert "Traceback" not in held_night.run_log
