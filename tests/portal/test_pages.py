"""Every page of the guest portal, with the DOM hooks browsers and tests use."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from portal_site import (
    CONSENT_TEXT,
    LATER_DROP,
    OPEN_DROP,
    PUBLIC_URL,
    Guest,
    running_portal,
)

from appliance.portal.service import (
    SECURITY_HEADERS,
    content_security_policy,
    model_viewer_style_hash,
)


async def test_home_links_every_part(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get("/")
    assert page.status == 200
    links = page.dom().links()
    for path in (
        "/optin",
        "/band",
        "/drops",
        "/static/portal.css",
        "/static/portal.js",
    ):
        assert path in links
    svg_titles = [e.text for e in page.dom().elements if e.tag == "title"]
    assert f"{PUBLIC_URL}/optin" in svg_titles


async def test_optin_page_has_form_hooks(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get("/optin")
    assert page.status == 200
    dom = page.dom()
    form = dom.form("optin")
    assert form.action == "/optin"
    for name in ("band_code", "email", "wallet_id", "consent", "csrf"):
        assert name in form.inputs
    assert form.inputs["consent"]["type"] == "checkbox"
    assert form.inputs["consent"]["value"] == "yes"
    assert form.hidden["csrf"]
    assert dom.by_id("optin-submit") is not None
    assert dom.testid_text("consent-text") == CONSENT_TEXT


async def test_band_page_has_form_hooks(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get("/band")
    dom = page.dom()
    form = dom.form("band")
    assert form.action == "/band"
    assert "band_code" in form.inputs
    assert form.hidden["csrf"]
    assert dom.by_id("band-submit") is not None


async def test_me_without_session_goes_to_band(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get("/me", allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"] == "/band"


async def test_drops_list_links_drops_of_box(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get("/drops")
    links = [e.attributes["href"] for e in page.dom().by_testid("drop-link")]
    assert links == [f"/drops/{OPEN_DROP}", f"/drops/{LATER_DROP}"]
    assert "Night tee" in page.text
    assert "20.00 EUR" in page.text


async def test_drop_page_shows_stock_and_claim_form(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get(f"/drops/{OPEN_DROP}")
        views = site.rows("SELECT page, subject, views FROM page_views")
    dom = page.dom()
    stock = dom.by_testid("stock")
    assert len(stock) == 1
    assert stock[0].text == "3"
    assert stock[0].attributes["data-stock-url"] == f"/drops/{OPEN_DROP}/stock"
    form = dom.form("claim")
    assert form.action == f"/drops/{OPEN_DROP}/claim"
    assert form.hidden["csrf"]
    assert form.hidden["form_id"]
    # Without a session the form has a band code input too.
    assert "band_code" in form.inputs
    assert dom.by_id("claim-submit") is not None
    titles = [e.text for e in dom.elements if e.tag == "title"]
    assert f"{PUBLIC_URL}/drops/{OPEN_DROP}" in titles
    assert views == [("drop", OPEN_DROP, 1)]


async def test_drop_stock_is_json(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get(f"/drops/{OPEN_DROP}/stock")
        later = await guest.get(f"/drops/{LATER_DROP}/stock")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("application/json")
    figures = json.loads(page.text)
    assert list(figures) == ["available", "quota", "state", "state_text"]
    assert figures["available"] == 3
    assert figures["quota"] == 3
    assert figures["state"] == "open"
    assert figures["state_text"].startswith("open until ")
    later_figures = json.loads(later.text)
    assert later_figures["state"] == "scheduled"
    assert later_figures["state_text"].startswith("opens ")


async def test_try_on_loads_model_from_box(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        page = await guest.get("/items/tee/try-on")
        model = await guest.get(f"/assets/{site.model_sha256}")
        script = await guest.get("/static/portal.js")
        views = site.rows("SELECT page, subject, views FROM page_views")
    dom = page.dom()
    viewers = [e for e in dom.elements if e.tag == "model-viewer"]
    assert len(viewers) == 1
    viewer = viewers[0].attributes
    assert viewer["data-testid"] == "model"
    assert viewer["src"] == f"/assets/{site.model_sha256}"
    assert "ar" in viewer
    assert "camera-controls" in viewer
    assert viewer["alt"] == "3D model of Night tee"
    modules = [
        e.attributes
        for e in dom.elements
        if e.tag == "script" and e.attributes.get("type") == "module"
    ]
    assert modules == [{"type": "module", "src": "/static/vendor/model-viewer.min.js"}]
    assert dom.form("buy").action == "/items/tee/buy"
    assert dom.by_id("buy-submit") is not None
    assert model.status == 200
    assert model.body[:4] == b"glTF"
    assert model.headers["Content-Type"] == "model/gltf-binary"
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert views == [("try-on", "tee", 1)]


async def test_try_on_without_model_or_drop(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        poster = await guest.get("/items/poster/try-on")
        water = await guest.get("/items/water/try-on")
    assert poster.status == 200
    assert poster.dom().by_testid("no-model")
    # Items without a drop tonight are sold at the bar, not from the phone.
    for page in (poster, water):
        assert page.status == 200
        assert page.dom().by_id("buy") is None
        assert "sold at the bar" in page.dom().testid_text("offer-state")


async def test_unknown_pages_are_404(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        pages = {
            path: await guest.get(path)
            for path in (
                "/nothing",
                "/drops/no-such-drop",
                "/drops/no-such-drop/stock",
                "/items/no-such-item/try-on",
                "/static/missing.css",
                "/static/../service.py",
                "/static/.hidden.js",
                "/c/NOBODY",
            )
        }
    for path, page in pages.items():
        assert page.status == 404, path
    assert pages["/nothing"].headers["Content-Type"].startswith("text/html")
    assert pages["/nothing"].dom().by_testid("error")
    stock = pages["/drops/no-such-drop/stock"]
    assert stock.headers["Content-Type"].startswith("application/json")
    assert '"error": "not-found"' in stock.text


async def test_security_headers_on_every_response(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        paths = [
            "/",
            "/optin",
            "/band",
            "/drops",
            f"/drops/{OPEN_DROP}",
            f"/drops/{OPEN_DROP}/stock",
            "/items/tee/try-on",
            "/static/portal.css",
            "/static/portal.js",
            f"/assets/{site.model_sha256}",
            "/assets/not-a-hash",
            "/nothing",
        ]
        pages = [await guest.get(path) for path in paths]
        pages.append(await guest.post("/band", {"band_code": "x"}))
    for page in pages:
        for name, value in SECURITY_HEADERS.items():
            assert page.headers.get(name) == value, (page.url, name)
        assert "Cache-Control" in page.headers, page.url
    for page in pages[:7]:
        assert page.headers["Cache-Control"] == "no-store", page.url
    assert pages[9].headers["Cache-Control"] == "public, max-age=31536000, immutable"


async def test_pages_have_no_inline_scripts(tmp_path: Path) -> None:
    async with running_portal(tmp_path) as site, Guest(site.base_url) as guest:
        pages = [
            await guest.get(path)
            for path in ("/", "/optin", "/band", "/drops", f"/drops/{OPEN_DROP}")
        ]
        pages.append(await guest.get("/items/tee/try-on"))
    for page in pages:
        scripts = [e for e in page.dom().elements if e.tag == "script"]
        assert scripts, page.url
        for script in scripts:
            assert script.attributes.get("src", "").startswith("/static/"), page.url
            assert script.text.strip() == "", page.url
        assert "style=" not in page.text
        assert " on" not in "".join(
            f" {name}" for e in page.dom().elements for name in e.attributes
        )


def test_csp_allows_model_viewer_style_only(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.js"
    bundle.write_text('const a = "<style>:host{display:block}</style>";')
    digest = model_viewer_style_hash(bundle)
    # SHA-256 of ':host{display:block}' in base64.
    assert (
        digest
        == "'sha256-"
        + base64.b64encode(hashlib.sha256(b":host{display:block}").digest()).decode()
        + "'"
    )
    assert model_viewer_style_hash(tmp_path / "missing.js") is None
    bundle.write_text("no style here")
    assert model_viewer_style_hash(bundle) is None
    policy = content_security_policy(digest)
    assert f"style-src 'self' {digest};" in policy
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy
    assert "unsafe-inline" not in policy
    assert "'unsafe-eval'" not in policy
    assert "style-src 'self';" in content_security_policy(None)
    shipped = SECURITY_HEADERS["Content-Security-Policy"]
    assert shipped == content_security_policy(model_viewer_style_hash())
    assert "'sha256-" in shipped
