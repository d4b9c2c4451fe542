"""A drop page left open in headless Chromium follows the drop's state.

The test starts the portal test site (tests/portal/portal_site.py) and runs
``drop_state.mjs`` (playwright-core driving Debian's /usr/bin/chromium).
While the browser shows the open drop's page, the test stops the drop as the
console does: the page must hide "Claim and pay" and show that the venue
closed it. While the browser shows the scheduled drop's page, the test starts the
drop: the claim form must appear, and claiming with it must work.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from test_portal_walkthrough import ROOT, require_browser

sys.path.insert(0, str(Path(__file__).parents[1]))
from portal_site import LATER_DROP, OPEN_DROP, PortalSite, running_portal

SCRIPT = Path(__file__).with_name("drop_state.mjs")
BAND = "ib-1-40"
BROWSER_TIMEOUT_S = 90.0


async def _run_browser(site: PortalSite, node: str) -> dict[str, Any]:
    """Run the script, change each drop when the browser shows its page."""
    code = site.band_code(BAND)
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        site.base_url,
        OPEN_DROP,
        LATER_DROP,
        code,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    changes = {
        "stop": ("stop", OPEN_DROP),
        "start": ("start", LATER_DROP),
    }
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(BROWSER_TIMEOUT_S):
            async for line in process.stdout:
                last = json.loads(line)
                ready = last.get("ready")
                if ready in changes:
                    action, drop = changes[ready]
                    await site.staff("drops", action, {"drop": drop}, "drops:manage")
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    stderr = (await process.stderr.read()).decode(errors="replace")
    assert process.returncode == 0, stderr[-2000:]
    return last


async def test_drop_page_follows_state(tmp_path: Path) -> None:
    node = require_browser()
    async with running_portal(tmp_path) as site:
        await site.top_up(BAND, 5000)
        browser = await _run_browser(site, node)
        claims = site.rows(
            "SELECT drop_id, status, terminal FROM drop_claims WHERE band = ?",
            (BAND,),
        )
    assert browser["error"] is None, browser["error"]
    stop = browser["stop"]
    start = browser["start"]

    assert stop["before"]["state"] == "open"
    assert stop["before"]["form_visible"] is True
    assert stop["before"]["closed_hint_visible"] is False
    assert stop["after"]["state_text"] == "closed by the venue"
    assert stop["after"]["form_visible"] is False
    assert stop["after"]["button_visible"] is False
    assert stop["after"]["closed_hint_visible"] is True

    assert start["before"]["state"] == "scheduled"
    assert start["before"]["state_text"].startswith("opens ")
    assert start["before"]["form_visible"] is False
    assert start["before"]["later_hint_visible"] is True
    assert start["after"]["state_text"].startswith("open until ")
    assert start["after"]["form_visible"] is True
    assert start["after"]["button_visible"] is True
    assert start["after"]["later_hint_visible"] is False

    assert browser["claim"]["error"] is None
    assert "paid" in browser["claim"]["claim_result"]
    assert browser["claim"]["pickup_code"]
    assert claims == [(LATER_DROP, "paid", "portal")]
    assert browser["foreign_requests"] == []
    assert browser["console_errors"] == []
    assert browser["page_errors"] == []
