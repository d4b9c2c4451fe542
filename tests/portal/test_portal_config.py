"""The ``[portal]`` table: defaults, and every bad value named with its fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.kits import _validation
from appliance.portal.config import (
    MAX_CONSENT_TEXT,
    PortalConfig,
    default_consent_text,
    parse_portal,
)

SITE = """
[site]
id = "club"
name = "Club Nord"
portal_url = "http://club.local:8080"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"
"""


def test_portal_absent_is_none() -> None:
    assert parse_portal({"site": {"id": "club"}}) is None


def test_portal_defaults() -> None:
    config = parse_portal({"site": {"id": "club", "name": "Club Nord"}, "portal": {}})
    assert config == PortalConfig(
        public_url="http://nightbox.local:8080",
        consent_text=default_consent_text("Club Nord"),
        public_url_given=False,
    )
    assert config.unknown_band_codes_per_minute == 120
    assert config.host == "0.0.0.0"
    assert config.port == 8080
    assert config.secure_cookies is False
    assert "Club Nord" in config.consent_text
    assert len(config.consent_text) <= MAX_CONSENT_TEXT


def test_public_url_defaults_to_site_portal_url() -> None:
    raw = {"site": {"portal_url": "https://club.example/"}, "portal": {}}
    config = parse_portal(raw)
    assert config is not None
    assert config.public_url == "https://club.example"
    assert config.secure_cookies is True
    assert config.url("/optin") == "https://club.example/optin"


def test_port_80_default_url_has_no_port() -> None:
    config = parse_portal({"portal": {"port": 80}})
    assert config is not None
    assert config.public_url == "http://nightbox.local"


def test_portal_from_site_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        SITE
        + """
[portal]
host = "127.0.0.1"
port = 8090
public_url = "http://192.168.4.1:8090"
consent_text = "Keep my email for one offer."
session_hours = 6
page_requests_per_minute = 300
page_burst = 80
form_posts_per_minute = 30
form_burst = 12
max_connections = 200
max_connections_per_address = 8
"""
    )
    config = load_config(path)
    assert config.portal == PortalConfig(
        public_url="http://192.168.4.1:8090",
        consent_text="Keep my email for one offer.",
        host="127.0.0.1",
        port=8090,
        session_hours=6.0,
        page_requests_per_minute=300,
        page_burst=80,
        form_posts_per_minute=30,
        form_burst=12,
        max_connections=200,
        max_connections_per_address=8,
    )


def test_site_without_portal_table(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE)
    assert load_config(path).portal is None


def test_consent_limit_matches_optin_request() -> None:
    assert MAX_CONSENT_TEXT == _validation.MAX_CONSENT_TEXT


@pytest.mark.parametrize(
    ("portal", "words"),
    [
        ({"port": 70000}, ["portal.port", "70000"]),
        ({"port": "8080"}, ["portal.port"]),
        ({"host": "not a host!"}, ["portal.host", "0.0.0.0"]),
        ({"public_url": "nightbox.local"}, ["portal.public_url", "http://"]),
        ({"public_url": "ftp://nightbox.local"}, ["portal.public_url"]),
        ({"public_url": "http://nightbox.local/portal"}, ["portal.public_url"]),
        ({"public_url": "http://user:pw@nightbox.local"}, ["portal.public_url"]),
        ({"public_url": "http://nightbox.local?x=1"}, ["portal.public_url"]),
        ({"public_url": "http://nightbox.local:99999"}, ["portal.public_url"]),
        ({"consent_text": "  "}, ["portal.consent_text", "empty"]),
        ({"consent_text": "x" * 501}, ["portal.consent_text", "501", "500"]),
        ({"consent_text": "ok\x1b[2J"}, ["portal.consent_text", "U+001B"]),
        ({"consent_text": "ok\u202eevil"}, ["portal.consent_text", "U+202E"]),
        ({"session_hours": 0}, ["portal.session_hours"]),
        ({"page_burst": 1}, ["portal.page_burst"]),
        ({"form_posts_per_minute": 0}, ["portal.form_posts_per_minute"]),
        ({"max_connections": 0}, ["portal.max_connections"]),
        ({"colour": "red"}, ["'colour'", "[portal]"]),
    ],
)
def test_bad_values_are_named(portal: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_portal({"site": {"id": "club"}, "portal": portal})
    for word in words:
        assert word in str(caught.value)


def test_portal_table_must_be_table() -> None:
    with pytest.raises(ConfigError, match=r"\[portal\] must be a table"):
        parse_portal({"portal": "yes"})


def test_site_portal_url_checked_for_portal() -> None:
    with pytest.raises(ConfigError, match=r"site\.portal_url"):
        parse_portal({"site": {"portal_url": "http://club.local/guests"}, "portal": {}})


def test_studio_port_clash_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_portal({"studio": {"camera": "simulator"}, "portal": {}})
    assert "portal.port = 8080" in str(caught.value)
    assert "8081" in str(caught.value)
    parsed = parse_portal(
        {"studio": {"camera": "simulator", "http_port": 8081}, "portal": {}}
    )
    assert parsed is not None


def test_terminal_named_portal_rejected() -> None:
    raw = tomllib.loads(
        '[portal]\n[[terminals]]\nid = "bar-1"\n[[terminals]]\nid = "portal"\n'
    )
    with pytest.raises(ConfigError, match=r"terminals\[1\].id = 'portal'"):
        parse_portal(raw)
