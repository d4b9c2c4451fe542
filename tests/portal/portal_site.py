"""A box with the guest portal on a free loopback port, and a guest's browser.

The site sells a tee through a drop that is open now (three units), a cap
through a drop that opens in an hour, a poster at a fixed price and water
at an open price. A USB folder signed by a trusted operator key gives the
tee a 3D model. The portal listens on 127.0.0.1 port 0 with rate limits
high enough for a test to make many requests. ``running_portal(...,
strict=True)`` keeps the small default limits for the flood tests.

:class:`Guest` is a browser: an aiohttp session with its own cookie jar
that reads a form's hidden fields from the page and posts them back.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from conftest import running_site_box
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from appliance.assets.config import AssetsConfig
from appliance.assets.pack import pack_folder
from appliance.assets.sample import write_sample_model
from appliance.bus.broker import BrokerHandle
from appliance.commerce.config import (
    CommerceConfig,
    Creator,
    DropConfig,
    Item,
    Tier,
)
from appliance.config import ReaderConfig, SiteConfig
from appliance.portal.config import PortalConfig
from appliance.portal.service import Portal
from appliance.remote.config import FleetConfig
from appliance.runtime import Box
from appliance.signed_documents import key_id

SITE_UUID = bytes.fromhex("426c7565436861726d426561636f6e73")
PUBLIC_URL = "http://nightbox.test:8080"
CONSENT_TEXT = "I agree that the Test Club keeps my contact for one offer."
# A band of the early-access tier "crew".
EARLY_MEMBER = "ib-1-90"
OPEN_DROP = "tee-drop"
LATER_DROP = "cap-drop"
DROP_PRICE = 2000
POSTER_PRICE = 1500
TIMEOUT_S = 15.0


def portal_site_config(
    data_dir: Path,
    now: float,
    *,
    usb_folder: Path,
    fleet: FleetConfig,
    portal: PortalConfig,
    extra_drops: tuple[DropConfig, ...] = (),
) -> SiteConfig:
    """Return the portal test site around Unix time ``now``.

    The night rolls over twelve hours away from ``now``, so every drop of
    the site and every test time within hours of ``now`` is on one night.
    """
    rollover_hour = (time.gmtime(now).tm_hour + 12) % 24
    commerce = CommerceConfig(
        night_rollover_hour=rollover_hour,
        tiers=(Tier("crew", early_access=True),),
        members={EARLY_MEMBER: "crew"},
        items=(
            Item("tee", "Night tee", price=3500),
            Item("cap", "Cap", price=2500),
            Item("poster", "Poster", price=POSTER_PRICE),
            Item("water", "Water", price=None),
        ),
        creators=(Creator("maya", "Maya", "MAYA"),),
        drops=(
            DropConfig(
                OPEN_DROP, "tee", DROP_PRICE, 3, starts_at=now - 60, ends_at=now + 3600
            ),
            DropConfig(
                LATER_DROP, "cap", DROP_PRICE, 5, now + 3600, ends_at=now + 7200
            ),
            *extra_drops,
        ),
        portal_url=PUBLIC_URL,
    )
    return SiteConfig(
        site_id="test",
        site_name="Test Club",
        box_id="box-1",
        data_dir=data_dir,
        ibeacon_uuid=SITE_UUID,
        readers=(
            ReaderConfig("exit-1", "exit"),
            ReaderConfig("kit-1", "kit", kit_stock=5),
        ),
        commerce=commerce,
        fleet=fleet,
        portal=portal,
        assets=AssetsConfig(preload_dir=usb_folder),
    )


def portal_settings(
    *,
    strict: bool = False,
    consent_text: str = CONSENT_TEXT,
    settings: dict[str, Any] | None = None,
) -> PortalConfig:
    """Return the test portal's [portal] settings on 127.0.0.1 port 0.

    ``settings`` replaces any other [portal] values.
    """
    limits: dict[str, Any] = {}
    if not strict:
        limits = {
            "page_requests_per_minute": 60_000,
            "page_burst": 10_000,
            "form_posts_per_minute": 6_000,
            "form_burst": 1_000,
        }
    return PortalConfig(
        public_url=PUBLIC_URL,
        consent_text=consent_text,
        host="127.0.0.1",
        port=0,
        **{**limits, **(settings or {})},
    )


def write_usb_folder(folder: Path, key: Ed25519PrivateKey) -> str:
    """Write the tee's sample model and a signed manifest; return its SHA-256."""
    folder.mkdir(parents=True)
    write_sample_model(folder / "tee.glb")
    (folder / "assets.toml").write_text(
        '[[assets]]\nitem = "tee"\nname = "Night tee, 3D"\nfile = "tee.glb"\n'
    )
    packed, _manifest = pack_folder(
        folder, key, site="test", version=1, issued_at=time.time()
    )
    return packed[0].sha256


@dataclass
class PortalSite:
    """The running box and portal, with helpers that act as staff terminals."""

    config: SiteConfig
    box: Box
    broker: BrokerHandle
    model_sha256: str

    @property
    def portal(self) -> Portal:
        """The box's portal (the site has a [portal] table)."""
        portal = self.box.portal
        if portal is None:
            raise AssertionError("the portal test box runs no portal")
        return portal

    @property
    def base_url(self) -> str:
        """The portal's loopback address."""
        return f"http://127.0.0.1:{self.portal.port}"

    def band_code(self, band: str) -> str:
        """Register and return the code printed on ``band``."""
        return self.portal.band_code(band)

    async def staff(
        self, service: str, action: str, data: dict[str, Any], scope: str
    ) -> dict[str, Any]:
        """Run a request as the desk terminal; return the reply data."""
        token = self.box.tokens.issue("desk", [scope], 600).token
        fields = {"idempotency_key": uuid.uuid4().hex, **data}
        reply = await self.box.requests.call(
            service, action, fields, token=token, terminal="desk"
        )
        assert reply["ok"], reply
        data_out: dict[str, Any] = reply["data"]
        return data_out

    async def top_up(self, band: str, amount: int) -> None:
        """Put ``amount`` cents on ``band``'s wallet, paid in cash at the desk."""
        await self.staff(
            "wallet",
            "topup",
            {"band": band, "amount": amount, "currency": "EUR", "method": "cash"},
            "wallet:topup",
        )

    async def issue_kit(self, band: str) -> dict[str, Any]:
        """Hand ``band`` a recovery kit at kit-1; return the reply data."""
        return await self.staff(
            "kits", "issue", {"station": "kit-1", "band": band}, "kits:issue"
        )

    def add_drop(self, drop: DropConfig) -> None:
        """Create ``drop`` on the box while it runs, as the console does."""
        with self.box.store.transaction() as transaction:
            self.box.drops.create(transaction, drop, by="test")

    async def claim(self, drop: str, band: str) -> dict[str, Any]:
        """Claim and pay one unit of ``drop`` for ``band`` at the merch desk."""
        return await self.staff(
            "drops", "claim", {"drop": drop, "band": band, "pay": True}, "drops:claim"
        )

    def rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Return the rows of a query on the box's store."""
        return self.box.store.query(sql, parameters)


@contextlib.asynccontextmanager
async def running_portal(
    tmp_path: Path,
    *,
    strict: bool = False,
    consent_text: str = CONSENT_TEXT,
    settings: dict[str, Any] | None = None,
    extra_drops: Callable[[float], tuple[DropConfig, ...]] | None = None,
) -> AsyncIterator[PortalSite]:
    """Start the test site's broker, box and portal; stop them on exit.

    ``strict`` keeps the default rate limits; ``consent_text`` replaces the
    site's consent text, and ``settings`` other [portal] values.
    ``extra_drops`` returns drops for the site file from the start time.
    """
    now = time.time()
    operator_key = Ed25519PrivateKey.generate()
    public_key = operator_key.public_key()
    usb_folder = tmp_path / "usb"
    model_sha256 = write_usb_folder(usb_folder, operator_key)
    config = portal_site_config(
        tmp_path / "box",
        now,
        usb_folder=usb_folder,
        fleet=FleetConfig(operator_keys={key_id(public_key): public_key}),
        portal=portal_settings(
            strict=strict, consent_text=consent_text, settings=settings
        ),
        extra_drops=() if extra_drops is None else extra_drops(now),
    )
    async with running_site_box(config, timeout_s=TIMEOUT_S) as (broker, box):
        site = PortalSite(config, box, broker, model_sha256)
        await site.portal.serve_http()
        yield site


@dataclass
class Page:
    """A response as a guest's browser received it."""

    status: int
    body: bytes
    headers: dict[str, str]
    url: str

    @property
    def text(self) -> str:
        """The body as text (bytes that are not UTF-8 replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def dom(self) -> Dom:
        """Return the page's elements."""
        return Dom.parse(self.text)


class Guest:
    """A phone's browser: cookies kept, redirects followed, forms posted back."""

    def __init__(self, base_url: str, *, local_address: str | None = None) -> None:
        connector = None
        if local_address is not None:
            connector = aiohttp.TCPConnector(local_addr=(local_address, 0))
        # unsafe=True keeps cookies of a host given as an IP address.
        self.session = aiohttp.ClientSession(
            base_url,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )
        self.visited: list[str] = []

    async def close(self) -> None:
        """Close the session."""
        await self.session.close()

    async def __aenter__(self) -> Guest:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, path: str | URL, **kwargs: Any) -> Page:
        """GET ``path``, following redirects."""
        async with self.session.get(path, **kwargs) as response:
            return await self._page(response)

    async def post(
        self,
        path: str | URL,
        fields: dict[str, str] | list[tuple[str, str]],
        *,
        headers: dict[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> Page:
        """POST ``fields`` form-encoded to ``path``, as the browser would."""
        async with self.session.post(
            path, data=fields, headers=headers, allow_redirects=allow_redirects
        ) as response:
            return await self._page(response)

    async def post_raw(
        self,
        path: str,
        body: bytes | AsyncIterator[bytes],
        content_type: str | None,
        **kwargs: Any,
    ) -> Page:
        """POST raw bytes with ``content_type`` (no header when None)."""
        headers = dict(kwargs.pop("headers", {}))
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with self.session.post(
            path, data=body, headers=headers, **kwargs
        ) as response:
            return await self._page(response)

    async def submit(
        self, page_path: str, form_id: str, values: dict[str, str]
    ) -> Page:
        """Open ``page_path``, fill ``form#<form_id>`` with ``values`` and send it."""
        page = await self.get(page_path)
        assert page.status == 200, (page.status, page.text[:300])
        form = page.dom().form(form_id)
        fields = {**form.hidden, **values}
        return await self.post(form.action, fields)

    async def opt_in(self, band_code: str, email: str = "guest@example.org") -> Page:
        """Submit the opt-in form with ``band_code``, ``email`` and consent given."""
        return await self.submit(
            "/optin",
            "optin",
            {"band_code": band_code, "email": email, "consent": "yes"},
        )

    async def _page(self, response: aiohttp.ClientResponse) -> Page:
        for step in (*response.history, response):
            self.visited.append(str(step.url))
        return Page(
            response.status,
            await response.read(),
            dict(response.headers),
            str(response.url),
        )


@dataclass
class Element:
    """One element: its tag, attributes and text."""

    tag: str
    attributes: dict[str, str]
    text: str = ""


@dataclass
class Form:
    """A form's action, hidden fields and every input's name."""

    action: str
    hidden: dict[str, str]
    inputs: dict[str, dict[str, str]]


class Dom(HTMLParser):
    """The elements of a page, in document order, with their text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    @classmethod
    def parse(cls, text: str) -> Dom:
        dom = cls()
        dom.feed(text)
        dom.close()
        return dom

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in ("input", "meta", "link", "br", "img", "path"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def by_testid(self, testid: str) -> list[Element]:
        """Return the elements whose data-testid is ``testid``."""
        return [e for e in self.elements if e.attributes.get("data-testid") == testid]

    def testid_text(self, testid: str) -> str:
        """Return the text of the one element whose data-testid is ``testid``."""
        found = self.by_testid(testid)
        assert len(found) == 1, f"{len(found)} elements with data-testid={testid}"
        return " ".join(found[0].text.split())

    def by_id(self, element_id: str) -> Element | None:
        """Return the element with id ``element_id``, or None."""
        return next(
            (e for e in self.elements if e.attributes.get("id") == element_id), None
        )

    def form(self, form_id: str) -> Form:
        """Return ``form#<form_id>`` with its inputs."""
        start = next(
            (
                index
                for index, e in enumerate(self.elements)
                if e.tag == "form" and e.attributes.get("id") == form_id
            ),
            None,
        )
        assert start is not None, f"no form#{form_id} on the page"
        form = self.elements[start]
        hidden: dict[str, str] = {}
        inputs: dict[str, dict[str, str]] = {}
        for element in self.elements[start + 1 :]:
            if element.tag == "form":
                break
            if element.tag == "input" and "name" in element.attributes:
                inputs[element.attributes["name"]] = element.attributes
                if element.attributes.get("type") == "hidden":
                    hidden[element.attributes["name"]] = element.attributes.get(
                        "value", ""
                    )
        return Form(form.attributes.get("action", ""), hidden, inputs)

    def links(self) -> list[str]:
        """Return every URL the page links to or loads."""
        urls = []
        for element in self.elements:
            for name in ("href", "src", "action", "poster", "data-stock-url"):
                if name in element.attributes:
                    urls.append(element.attributes[name])
        return urls
