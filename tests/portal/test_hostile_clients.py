"""Clients that guess band codes from many addresses or send unreadable HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from portal_site import Guest, running_portal

from appliance.portal.band_codes import band_code
from appliance.portal.service import SECURITY_HEADERS

BAND = "ib-1-7"
SITE_LIMIT = 10


def unknown_codes(count: int) -> list[str]:
    """Return well-formed band codes that no band of the box has."""
    key = os.urandom(32)
    return [band_code(key, f"ib-9-{index}") for index in range(count)]


async def test_unknown_codes_over_site_limit_get_429(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"unknown_band_codes_per_minute": SITE_LIMIT}
    async with running_portal(tmp_path, settings=settings) as site:
        known = site.band_code(BAND)
        # Each guesser comes from its own loopback address, so no per-address
        # limit is reached.
        guessers = [
            Guest(site.base_url, local_address=f"127.0.5.{index + 1}")
            for index in range(SITE_LIMIT + 2)
        ]
        guest = Guest(site.base_url, local_address="127.0.6.1")
        try:
            with caplog.at_level(logging.WARNING, logger="appliance.portal"):
                statuses = []
                pages = []
                for guesser, code in zip(
                    guessers, unknown_codes(len(guessers)), strict=True
                ):
                    page = await guesser.submit("/band", "band", {"band_code": code})
                    statuses.append(page.status)
                    pages.append(page)
                optin = await guest.submit(
                    "/optin",
                    "optin",
                    {
                        "band_code": unknown_codes(1)[0],
                        "email": "guest@example.org",
                        "consent": "yes",
                    },
                )
                signed_in = await guest.submit("/band", "band", {"band_code": known})
            optins = site.rows("SELECT COUNT(*) FROM optins")
        finally:
            for client in (*guessers, guest):
                await client.close()
    assert statuses == [400] * SITE_LIMIT + [429, 429]
    assert pages[-1].headers["Retry-After"].isdigit()
    assert "too many unknown band codes" in pages[-1].dom().testid_text("error")
    assert optin.status == 429
    assert optins == [(0,)]
    # A guest with a real code still signs in during the cool-down.
    assert signed_in.status == 200
    assert signed_in.url.endswith("/me")
    alarms = [r for r in caplog.records if "from all addresses" in r.getMessage()]
    assert len(alarms) == 1
    assert site.portal.rejections["band-codes-site-limit"] == 3


async def raw_exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` as it is; return the status line, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"G<T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: <script>alert(1)</script>"
        + b"a" * 9000
        + b"\r\n\r\n",
        b"POST /band HTTP/1.1\r\nHost: x\r\nContent-Length: <script>\r\n\r\n",
    ],
    ids=["bad-method", "bad-version", "huge-header", "bad-length"],
)
async def test_unreadable_request_gets_portal_headers(
    tmp_path: Path, request_bytes: bytes
) -> None:
    async with running_portal(tmp_path) as site:
        status, headers, body = await raw_exchange(site.portal.port, request_bytes)
    assert status.split()[1].startswith("4"), status
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, name
    assert headers["cache-control"] == "no-store"
    assert headers["server"] == "Nightbox"
    assert b"script" not in body
    assert b"aiohttp" not in body.lower()
    assert b"could not read this request" in body


async def test_pages_name_no_server_version(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        pages = [
            await guest.get(path) for path in ("/", "/nothing", "/static/portal.js")
        ]
    for page in pages:
        assert page.headers["Server"] == "Nightbox", page.url
