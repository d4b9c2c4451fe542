"""Hostile input to the portal: rejected with the right status, nothing stored."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from portal_site import OPEN_DROP, Dom, Guest, PortalSite, running_portal
from yarl import URL

from appliance.portal._forms import FORM_TYPE
from appliance.portal._sessions import SESSION_COOKIE
from appliance.portal.config import PortalConfig

BAND = "ib-1-7"
XSS = "<script>alert(1)</script>"
XSS_PAYLOADS = [
    XSS,
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "javascript:alert(1)",
]


def _stored(site: PortalSite) -> dict[str, list[tuple[object, ...]]]:
    """Return every row a form post could have written."""
    return {
        table: site.rows(f"SELECT * FROM {table}")
        for table in ("optins", "portal_sessions", "drop_claims", "requests")
    }


def _assert_escaped(text: str, payload: str) -> None:
    """Check that ``payload`` left no markup of its own in the page."""
    if any(character in payload for character in "<>\"'"):
        assert payload not in text
    dom = Dom.parse(text)
    for element in dom.elements:
        assert element.tag not in ("img", "iframe", "object"), element
        if element.tag == "svg":
            assert element.attributes.get("class") == "qr", element
        if element.tag == "script":
            assert element.attributes.get("src", "").startswith("/static/"), element
        for name in element.attributes:
            assert not name.startswith("on"), element
        for name in ("href", "src", "action"):
            assert not element.attributes.get(name, "").startswith("javascript:")


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
async def test_xss_in_email_is_escaped(tmp_path: Path, payload: str) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        before = _stored(site)
        async with Guest(site.base_url) as guest:
            page = await guest.submit(
                "/optin",
                "optin",
                {"band_code": code, "email": payload + "@x.org", "consent": "yes"},
            )
        after = _stored(site)
    assert page.status == 400
    assert page.dom().by_testid("error")[0].attributes["data-field"] == "email"
    _assert_escaped(page.text, payload)
    # The value comes back as typed, inside an attribute, escaped.
    assert page.dom().form("optin").inputs["email"]["value"] == payload + "@x.org"
    assert after == before


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
async def test_xss_in_wallet_id_is_escaped(tmp_path: Path, payload: str) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        before = _stored(site)
        async with Guest(site.base_url) as guest:
            page = await guest.submit(
                "/optin",
                "optin",
                {"band_code": code, "wallet_id": payload, "consent": "yes"},
            )
        after = _stored(site)
    assert page.status == 400
    assert page.dom().by_testid("error")[0].attributes["data-field"] == "wallet_id"
    _assert_escaped(page.text, payload)
    assert after == before


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
async def test_xss_in_band_code_is_escaped(tmp_path: Path, payload: str) -> None:
    async with running_portal(tmp_path) as site:
        before = _stored(site)
        async with Guest(site.base_url) as guest:
            band = await guest.submit("/band", "band", {"band_code": payload})
            claim = await guest.submit(
                f"/drops/{OPEN_DROP}", "claim", {"band_code": payload}
            )
        after = _stored(site)
    for page in (band, claim):
        assert page.status == 400
        assert page.dom().by_testid("error")[0].attributes["data-field"] == "band_code"
        _assert_escaped(page.text, payload)
    assert after == before


async def test_xss_in_path_ids_is_escaped(tmp_path: Path) -> None:
    encoded = "%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    async with running_portal(tmp_path) as site:
        before = _stored(site)
        async with Guest(site.base_url) as guest:
            pages = [
                await guest.get(URL(path, encoded=True))
                for path in (
                    f"/drops/{encoded}",
                    f"/drops/{encoded}/stock",
                    f"/items/{encoded}/try-on",
                    f"/c/{encoded}",
                    f"/static/{encoded}.js",
                    f"/assets/{encoded}",
                    f"/{encoded}",
                )
            ]
            posts = [
                await guest.post(URL(path, encoded=True), {"csrf": "x"})
                for path in (f"/drops/{encoded}/claim", f"/items/{encoded}/buy")
            ]
        after = _stored(site)
    for page in pages:
        assert page.status == (400 if "/assets/" in page.url else 404), page.url
        if page.headers["Content-Type"].startswith("application/json"):
            # JSON is never rendered as a page, and nosniff stops a browser
            # from treating it as HTML.
            assert page.headers["X-Content-Type-Options"] == "nosniff"
        else:
            _assert_escaped(page.text, XSS)
    for page in posts:
        assert page.status in (403, 404), page.url
        _assert_escaped(page.text, XSS)
    assert after == before


async def test_consent_text_xss_escaped_stored(tmp_path: Path) -> None:
    consent = '<b onmouseover="alert(1)">I agree</b> & <script>alert(1)</script>'
    async with running_portal(tmp_path, consent_text=consent) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.get("/optin")
            await guest.opt_in(code)
            stored = site.rows("SELECT consent_text FROM optins")
    _assert_escaped(page.text, consent)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    # What the guest read is exactly what is stored.
    assert page.dom().testid_text("consent-text") == " ".join(consent.split())
    assert stored == [(consent,)]


async def test_unknown_field_name_is_escaped(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        before = _stored(site)
        async with Guest(site.base_url) as guest:
            page = await guest.get("/band")
            fields = {**page.dom().form("band").hidden, XSS: "1"}
            result = await guest.post("/band", fields)
        after = _stored(site)
    assert result.status == 400
    assert "unknown field" in result.dom().testid_text("error")
    _assert_escaped(result.text, XSS)
    assert after == before


async def test_post_without_csrf_is_403(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            await guest.get("/optin")
            before = _stored(site)
            optin = await guest.post(
                "/optin",
                {"band_code": code, "email": "guest@example.org", "consent": "yes"},
            )
            band = await guest.post("/band", {"band_code": code})
            claim = await guest.post(
                f"/drops/{OPEN_DROP}/claim", {"band_code": code, "form_id": "a" * 22}
            )
            after = _stored(site)
    for page in (optin, band, claim):
        assert page.status == 403
        assert "reload the page" in page.dom().testid_text("error")
    assert after == before
    assert site.portal.rejections["csrf-missing"] == 3


async def test_post_with_wrong_csrf_is_403(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as victim, Guest(site.base_url) as attacker:
            await victim.get("/optin")
            page = await attacker.get("/optin")
            form = page.dom().form("optin")
            before = _stored(site)
            # The attacker's own token does not fit the victim's cookie.
            stolen = await victim.post(
                "/optin",
                {
                    **form.hidden,
                    "band_code": code,
                    "email": "guest@example.org",
                    "consent": "yes",
                },
            )
            forged = await victim.post(
                "/optin",
                {
                    "csrf": "A" * 43,
                    "form_id": form.hidden["form_id"],
                    "band_code": code,
                    "email": "guest@example.org",
                    "consent": "yes",
                },
            )
            after = _stored(site)
    assert stolen.status == 403
    assert forged.status == 403
    assert after == before
    assert site.portal.rejections["csrf-invalid"] == 2


async def test_sign_out_needs_csrf(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            page = await guest.post("/signout", {})
            me = await guest.get("/me")
    assert page.status == 403
    assert me.url.endswith("/me")


async def test_sign_out_csrf_failures_are_403(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            await guest.submit("/band", "band", {"band_code": code})
            no_body = await guest.post_raw(
                "/signout", b"", None, headers={"Origin": site.base_url}
            )
            empty_form = await guest.post_raw("/signout", b"", FORM_TYPE)
            empty_token = await guest.post("/signout", {"csrf": ""})
            wrong_token = await guest.post("/signout", {"csrf": "A" * 43})
            me = await guest.get("/me")
    for page in (no_body, empty_form, empty_token, wrong_token):
        assert page.status == 403
        assert "reload the page" in page.dom().testid_text("error")
    assert me.url.endswith("/me")
    rejections = site.portal.rejections
    assert rejections["csrf-missing"] == 3
    assert rejections["csrf-invalid"] == 1
    assert "forbidden" not in rejections
    assert "invalid" not in rejections


async def test_csrf_rejection_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        await guest.get("/band")
        with caplog.at_level(logging.WARNING, logger="appliance.portal.service"):
            page = await guest.post_raw("/band", b"", None)
    lines = [record.getMessage() for record in caplog.records]
    assert page.status == 403
    assert lines == [
        "Guest portal rejected a request (csrf-missing): /band: a form came "
        "without a valid token"
    ]


async def _optin_fields(guest: Guest, code: str, email: str) -> dict[str, str]:
    """Open the opt-in page; return its form's fields, filled in with consent."""
    page = await guest.get("/optin")
    return {
        **page.dom().form("optin").hidden,
        "band_code": code,
        "email": email,
        "consent": "yes",
    }


async def test_foreign_origin_is_403(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            fields = await _optin_fields(guest, code, "guest@example.org")
            before = _stored(site)
            by_origin = await guest.post(
                "/optin", fields, headers={"Origin": "http://evil.example"}
            )
            by_referer = await guest.post(
                "/optin", fields, headers={"Referer": "http://evil.example/form"}
            )
            after = _stored(site)
            # A browser posting from the portal's own page under no-referrer
            # sends Origin: null, which passes to the CSRF check.
            own = await guest.post("/optin", fields, headers={"Origin": "null"})
            stored = site.rows("SELECT contact FROM optins")
    assert by_origin.status == 403
    assert by_referer.status == 403
    assert "another site" in by_origin.dom().testid_text("error")
    assert after == before
    assert own.url.endswith("/me")
    assert stored == [("guest@example.org",)]


async def test_public_url_origin_is_accepted(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.get("/band")
            fields = {**page.dom().form("band").hidden, "band_code": code}
            result = await guest.post(
                "/band", fields, headers={"Origin": site.portal.config.public_url}
            )
    assert result.url.endswith("/me")


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            fields = await _optin_fields(guest, code, "a" * 20_000 + "@example.org")
            before = _stored(site)
            sized = await guest.post("/optin", fields)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(40):
                    yield b"email=" + b"a" * 1000 + b"&"

            chunked = await guest.post_raw(
                "/optin", chunks(), "application/x-www-form-urlencoded"
            )
            after = _stored(site)
    assert sized.status == 413
    assert chunked.status == 413
    assert "8192 bytes" in sized.dom().testid_text("error")
    assert after == before


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"band_code=x", "text/plain", "Content-Type"),
        (b'{"band_code": "x"}', "application/json", "Content-Type"),
        (b"band_code=x", None, "Content-Type"),
        (
            b"band_code=x",
            "application/x-www-form-urlencoded; charset=latin-1",
            "Content-Type",
        ),
        (
            b"--b\r\nContent-Disposition: form-data; name=band_code\r\n\r\nx\r\n--b--",
            "multipart/form-data; boundary=b",
            "Content-Type",
        ),
        (
            b"email=%FF%FE@x.org&consent=yes",
            "application/x-www-form-urlencoded",
            "email",
        ),
        (b"email=\xff\xfe", "application/x-www-form-urlencoded", None),
        (b"email=a@x.org&email=b@x.org", "application/x-www-form-urlencoded", "email"),
        (b"email=a%00b@x.org", "application/x-www-form-urlencoded", "email"),
        (b"email", "application/x-www-form-urlencoded", "email"),
    ],
)
async def test_malformed_body_is_400(
    tmp_path: Path, body: bytes, content_type: str | None, field: str | None
) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        await guest.get("/optin")
        before = _stored(site)
        page = await guest.post_raw("/optin", body, content_type)
        after = _stored(site)
    assert page.status == 400
    error = page.dom().by_testid("error")[0]
    assert error.attributes.get("data-field") == field
    if field is not None:
        assert field in error.text
    assert after == before


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"band_code": "CODE", "consent": "yes"}, "email"),
        ({"email": "guest@example.org", "consent": "yes"}, "band_code"),
        (
            {
                "band_code": "CODE",
                "email": "guest@example.org",
                "wallet_id": "wallet:1",
                "consent": "yes",
            },
            "email",
        ),
        (
            {"band_code": "CODE", "email": "guest@example.org", "consent": "no"},
            "consent",
        ),
        (
            {"band_code": "not a code", "email": "g@example.org", "consent": "yes"},
            "band_code",
        ),
    ],
)
async def test_missing_or_invalid_field_is_named(
    tmp_path: Path, values: dict[str, str], field: str
) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        filled = {
            name: code if value == "CODE" else value for name, value in values.items()
        }
        async with Guest(site.base_url) as guest:
            before = _stored(site)
            page = await guest.submit("/optin", "optin", filled)
            after = _stored(site)
    assert page.status == 400
    error = page.dom().by_testid("error")[0]
    assert error.attributes["data-field"] == field
    assert after == before


async def test_missing_form_id_is_named(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        await site.top_up(BAND, 5000)
        async with Guest(site.base_url) as guest:
            page = await guest.get(f"/drops/{OPEN_DROP}")
            hidden = page.dom().form("claim").hidden
            before = _stored(site)
            result = await guest.post(
                f"/drops/{OPEN_DROP}/claim", {"csrf": hidden["csrf"], "band_code": code}
            )
            after = _stored(site)
    assert result.status == 400
    assert result.dom().by_testid("error")[0].attributes["data-field"] == "form_id"
    assert after == before


async def test_page_flood_is_429_other_client_served(tmp_path: Path) -> None:
    async with running_portal(tmp_path, strict=True) as site:
        burst = site.portal.config.page_burst
        async with (
            Guest(site.base_url) as flooder,
            Guest(site.base_url, local_address="127.0.0.2") as neighbour,
        ):
            statuses = [(await flooder.get("/drops")).status for _ in range(burst + 5)]
            limited = await flooder.get(f"/drops/{OPEN_DROP}/stock")
            served = await neighbour.get("/drops")
    assert statuses[:burst] == [200] * burst
    assert 429 in statuses[burst:]
    assert limited.status == 429
    assert limited.headers["Content-Type"].startswith("application/json")
    assert int(limited.headers["Retry-After"]) >= 1
    assert served.status == 200
    assert site.portal.rejections["rate-limited-pages"] >= 6


async def test_form_flood_is_429_pages_still_served(tmp_path: Path) -> None:
    async with running_portal(tmp_path, strict=True) as site:
        burst = site.portal.config.form_burst
        async with Guest(site.base_url) as guest:
            page = await guest.get("/band")
            hidden = page.dom().form("band").hidden
            statuses = [
                (await guest.post("/band", {**hidden, "band_code": "x"})).status
                for _ in range(burst + 3)
            ]
            last = await guest.post("/band", {**hidden, "band_code": "x"})
            still = await guest.get("/band")
    assert statuses[:burst] == [400] * burst
    assert statuses[burst:] == [429, 429, 429]
    assert last.status == 429
    assert int(last.headers["Retry-After"]) >= 1
    assert "wait a moment" in last.dom().testid_text("error")
    assert still.status == 200
    assert site.portal.rejections["rate-limited-forms"] == 4


async def test_session_cookie_flags(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        async with Guest(site.base_url) as guest:
            page = await guest.get("/band")
            fields = {**page.dom().form("band").hidden, "band_code": code}
            async with guest.session.post(
                "/band", data=fields, allow_redirects=False
            ) as response:
                cookies = response.headers.getall("Set-Cookie")
            hashes = site.rows("SELECT id_hash FROM portal_sessions")
    session = [c for c in cookies if c.startswith(f"{SESSION_COOKIE}=")]
    assert len(session) == 1
    parts = [part.strip() for part in session[0].split(";")]
    value = parts[0].split("=", 1)[1]
    assert len(value) == 43
    assert "HttpOnly" in parts
    assert "SameSite=Strict" in parts
    assert "Path=/" in parts
    assert "Secure" not in parts
    import hashlib

    assert hashes == [(hashlib.sha256(value.encode()).hexdigest(),)]
    assert value not in str(hashes)


async def test_https_public_url_sets_secure_cookies(tmp_path: Path) -> None:
    config = PortalConfig(
        public_url="https://nightbox.test", consent_text="x", host="127.0.0.1", port=0
    )
    assert config.secure_cookies is True
    async with running_portal(tmp_path) as site:
        site.portal.config = config
        async with (
            Guest(site.base_url) as guest,
            guest.session.get("/band") as response,
        ):
            cookies = response.headers.getall("Set-Cookie")
    assert cookies
    for cookie in cookies:
        assert "Secure" in [part.strip() for part in cookie.split(";")]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_no_guest_data_in_urls_or_logs(tmp_path: Path) -> None:
    email = "night.owl@example.org"
    wallet = "wallet:owl-77"
    other = "ib-1-8"
    async with running_portal(tmp_path) as site:
        code = site.band_code(BAND)
        other_code = site.band_code(other)
        await site.top_up(BAND, 10_000)
        await site.top_up(other, 10_000)
        secrets = [email, wallet, BAND, other, code, other_code]
        secrets += [c.replace("-", "") for c in (code, other_code)]
        handler = _Lines()
        handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
        root = logging.getLogger()
        previous = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        guest = Guest(site.base_url)
        friend = Guest(site.base_url)
        links: list[str] = []
        try:
            pages = [
                await guest.submit(
                    "/optin",
                    "optin",
                    {"band_code": code, "email": email, "consent": "yes"},
                ),
                await guest.submit(f"/drops/{OPEN_DROP}", "claim", {}),
                await guest.get("/items/tee/try-on"),
                await guest.get("/me"),
                await guest.submit(
                    "/optin", "optin", {"email": "bad", "consent": "yes"}
                ),
                await friend.submit(
                    "/optin",
                    "optin",
                    {"band_code": other_code, "wallet_id": wallet, "consent": "yes"},
                ),
                await friend.submit("/band", "band", {"band_code": other_code}),
                await friend.get("/me"),
                await friend.submit("/me", "signout", {}),
            ]
            for page in pages:
                links += page.dom().links()
            await site.issue_kit(BAND)
            pages.append(await guest.get("/me"))
            links += pages[-1].dom().links()
        finally:
            await guest.close()
            await friend.close()
            root.removeHandler(handler)
            root.setLevel(previous)
    assert pages[0].url.endswith("/me")
    assert pages[1].dom().testid_text("claim-result") == "paid"
    assert pages[5].url.endswith("/me")
    assert any("appliance.portal.service.access" in line for line in handler.lines)
    urls = links + guest.visited + friend.visited
    for secret in secrets:
        for url in urls:
            assert secret.lower() not in url.lower(), (secret, url)
    for secret in [email, wallet, code, other_code]:
        for line in handler.lines:
            assert secret not in line, (secret, line)
    # The kit station's service logs the band it handed a kit to. No other
    # part of the box, the portal included, logs a band id in this flow.
    for secret in [BAND, other]:
        for line in handler.lines:
            if not line.startswith("appliance.kits.service "):
                assert secret not in line, (secret, line)
