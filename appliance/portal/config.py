"""The ``[portal]`` table of the site configuration: the guest portal.

Without the table the box serves no portal. Every value is checked here, so
a typing error stops ``nightbox run`` with the key, the value and the fix
instead of showing up on a guest's phone in the middle of the night.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from appliance._toml_values import (
    integer,
    listen_host,
    number,
    reject_unknown,
    string,
    table,
)
from appliance.errors import ConfigError

PORTAL_KEYS = {
    "host",
    "port",
    "public_url",
    "consent_text",
    "session_hours",
    "page_requests_per_minute",
    "page_burst",
    "form_posts_per_minute",
    "form_burst",
    "max_connections",
    "max_connections_per_address",
    "unknown_band_codes_per_minute",
}
# The maximum length in characters of the consent text that api/optin/register
# stores. It repeats MAX_CONSENT_TEXT of appliance/kits/_validation.py, which
# imports the site configuration and so cannot be imported here.
MAX_CONSENT_TEXT = 500
# The studio listens on 8080 unless [studio] http_port sets another port.
_STUDIO_DEFAULT_PORT = 8080
# Bidirectional marks and overrides can make a text read differently from
# what it contains, which must not happen to the text a guest agrees to.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """The portal's listening address, the URL of its QR codes, and its limits.

    ``public_url`` is the address guests' phones reach the portal at
    (``scheme://host[:port]``, no path); QR codes and the night sign point
    there. ``consent_text`` is shown on the opt-in page and stored with each
    opt-in exactly as shown. Rates are per client address: page and file
    requests, and form posts, each a token bucket of ``*_burst`` requests
    that refills at ``*_per_minute``. ``unknown_band_codes_per_minute``
    is site-wide: over it, unknown band codes get 429 from every address for
    a short time.
    """

    public_url: str
    consent_text: str
    host: str = "0.0.0.0"
    port: int = 8080
    session_hours: float = 12.0
    page_requests_per_minute: int = 240
    page_burst: int = 60
    form_posts_per_minute: int = 20
    form_burst: int = 10
    max_connections: int = 512
    max_connections_per_address: int = 16
    unknown_band_codes_per_minute: int = 120
    # False when public_url is the default made from the port, not a key.
    public_url_given: bool = True

    @property
    def secure_cookies(self) -> bool:
        """Whether cookies carry ``Secure``: the portal is reached over HTTPS."""
        return self.public_url.startswith("https://")

    def url(self, path: str) -> str:
        """Return the public address of ``path`` (which starts with '/')."""
        return f"{self.public_url}{path}"


def default_consent_text(site_name: str) -> str:
    """Return the consent text used when ``[portal]`` sets none."""
    return (
        f"I agree that {site_name} keeps my email address or wallet id to send "
        "me one follow-up offer after tonight's recovery kit. It is kept on "
        "the venue's box only, never shared, and deleted when I ask staff."
    )


def parse_portal(raw: dict[str, Any]) -> PortalConfig | None:
    """Return the ``[portal]`` table, or None when the site serves no portal.

    ``raw`` is the whole parsed site file: the default ``public_url`` comes
    from ``site.portal_url``, the default consent text names ``site.name``,
    and the port is checked against the studio's. Raises ConfigError naming
    the key, the value and what is accepted.
    """
    if "portal" not in raw:
        return None
    section = table(raw, "portal")
    reject_unknown(section, "portal", PORTAL_KEYS)
    defaults = PortalConfig(public_url="", consent_text="")
    port = integer(section, "portal.port", defaults.port, minimum=0, maximum=65535)
    host = listen_host(section, "portal.host", default="0.0.0.0")
    _check_studio_port(raw, port)
    _check_terminals(raw)
    site_table = raw.get("site")
    site: dict[str, Any] = site_table if isinstance(site_table, dict) else {}
    site_name = site.get("name", site.get("id", "this venue"))
    public_url_given = "public_url" in section or isinstance(
        site.get("portal_url"), str
    )
    return PortalConfig(
        public_url=_public_url(section, site, port),
        public_url_given=public_url_given,
        consent_text=_consent_text(section, str(site_name)),
        host=host,
        port=port,
        session_hours=number(
            section, "portal.session_hours", defaults.session_hours, 0.25, 72.0
        ),
        page_requests_per_minute=integer(
            section,
            "portal.page_requests_per_minute",
            defaults.page_requests_per_minute,
            minimum=10,
            maximum=60_000,
        ),
        page_burst=integer(
            section, "portal.page_burst", defaults.page_burst, minimum=5, maximum=10_000
        ),
        form_posts_per_minute=integer(
            section,
            "portal.form_posts_per_minute",
            defaults.form_posts_per_minute,
            minimum=1,
            maximum=6_000,
        ),
        form_burst=integer(
            section, "portal.form_burst", defaults.form_burst, minimum=1, maximum=1_000
        ),
        max_connections=integer(
            section,
            "portal.max_connections",
            defaults.max_connections,
            minimum=1,
            maximum=65_536,
        ),
        max_connections_per_address=integer(
            section,
            "portal.max_connections_per_address",
            defaults.max_connections_per_address,
            minimum=1,
            maximum=1_024,
        ),
        unknown_band_codes_per_minute=integer(
            section,
            "portal.unknown_band_codes_per_minute",
            defaults.unknown_band_codes_per_minute,
            minimum=10,
            maximum=100_000,
        ),
    )


def _public_url(section: dict[str, Any], site: dict[str, Any], port: int) -> str:
    if "public_url" in section:
        key = "portal.public_url"
        value = string(section, key)
    elif isinstance(site.get("portal_url"), str):
        key = "site.portal_url"
        value = site["portal_url"]
    else:
        suffix = "" if port in (0, 80) else f":{port}"
        return f"http://nightbox.local{suffix}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or parts.path not in ("", "/")
    ):
        raise ConfigError(
            f"{key} = {value!r:.80} is invalid; give the address guests' phones "
            "reach the portal at, scheme, host and port only, such as "
            "http://nightbox.local:8080"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _consent_text(section: dict[str, Any], site_name: str) -> str:
    if "consent_text" not in section:
        return default_consent_text(site_name)
    value = string(section, "portal.consent_text")
    if not value.strip():
        raise ConfigError(
            "portal.consent_text is empty; write the sentence guests agree to, or "
            "remove the key to use the default text"
        )
    if len(value) > MAX_CONSENT_TEXT:
        raise ConfigError(
            f"portal.consent_text has {len(value)} characters; the opt-in stores "
            f"at most {MAX_CONSENT_TEXT}, so shorten it"
        )
    for position, character in enumerate(value):
        # Line breaks are allowed; every other control character is not.
        if character in "\n\t":
            continue
        if unicodedata.category(character) == "Cc" or character in _BIDI_CONTROLS:
            raise ConfigError(
                f"portal.consent_text contains the control character "
                f"U+{ord(character):04X} at position {position}; remove it"
            )
    return value


def _check_studio_port(raw: dict[str, Any], port: int) -> None:
    studio = raw.get("studio")
    if not isinstance(studio, dict) or port == 0:
        return
    studio_port = studio.get("http_port", _STUDIO_DEFAULT_PORT)
    if studio_port == port:
        raise ConfigError(
            f"portal.port = {port} is also the studio's HTTP port; set portal.port "
            f"to another port, such as {port + 1}, or studio.http_port"
        )


def _check_terminals(raw: dict[str, Any]) -> None:
    terminals = raw.get("terminals")
    if not isinstance(terminals, list):
        return
    for index, entry in enumerate(terminals):
        if isinstance(entry, dict) and entry.get("id") == "portal":
            raise ConfigError(
                f"terminals[{index}].id = 'portal' is the guest portal's own "
                "terminal on a site with a [portal] table; rename that terminal"
            )
