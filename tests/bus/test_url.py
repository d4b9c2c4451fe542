"""Tests of which broker hosts count as this machine, where plain mqtt:// is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bus.url import is_loopback
from appliance.errors import ConfigError
from appliance.remote.config import parse_sync


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("192.0.2.10", False),
        ("fleet.example.org", False),
        ("127.example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_sync_plain_broker_on_loopback(tmp_path: Path) -> None:
    raw = {"sync": {"broker": "mqtt://127.0.0.1:1883"}}
    sync = parse_sync(raw, base_dir=tmp_path, data_dir=tmp_path)
    assert sync is not None
    assert str(sync.broker) == "mqtt://127.0.0.1:1883"


def test_sync_plain_broker_elsewhere(tmp_path: Path) -> None:
    raw = {"sync": {"broker": "mqtt://fleet.example.org:1883"}}
    with pytest.raises(ConfigError, match="unencrypted; use mqtts://"):
        parse_sync(raw, base_dir=tmp_path, data_dir=tmp_path)
