"""The ``[studio]`` table: the sample parses, and every bad value names its key."""

from __future__ import annotations

import errno
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.studio.config import (
    StudioConfig,
    listen_failure_advice,
    parse_studio,
)

SAMPLE = Path(__file__).parents[2] / "appliance" / "samples" / "site.toml"


def sample_with_studio() -> str:
    """Return the sample site file with its commented [studio] table enabled."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [studio]")
    enabled = [line.removeprefix("# ") for line in lines[start:]]
    return "\n".join([*lines[:start], *enabled]) + "\n"


def studio(**values: Any) -> dict[str, Any]:
    """Return a parsed document whose [studio] table has ``values``."""
    return {"studio": {"camera": "simulator", **values}}


def test_no_table_means_no_studio() -> None:
    assert parse_studio({}) is None


def test_defaults() -> None:
    config = parse_studio(studio())

    assert config == StudioConfig(camera="simulator")
    assert config.http_host == "127.0.0.1"
    assert config.clip_seconds == 30.0
    assert config.clips_keep == 50


def test_sample_studio_table_parses(tmp_path: Path) -> None:
    raw = tomllib.loads(sample_with_studio())
    config = parse_config(raw, base_dir=tmp_path)

    assert config.studio is not None
    assert config.studio.camera == "picamera2"
    assert config.studio.audio == "alsa:hw:1,0"
    assert config.studio.http_host == "0.0.0.0"
    assert config.studio.button_pin == 17
    assert config.studio.push_url == "rtmp://live.example.com/app/<stream key>"


def test_sample_runs_without_studio(tmp_path: Path) -> None:
    raw = tomllib.loads(SAMPLE.read_text(encoding="utf-8"))

    assert parse_config(raw, base_dir=tmp_path).studio is None


BAD_VALUES = [
    ({"camera": "webcam"}, "studio.camera = 'webcam' is invalid"),
    ({"width": 641}, "studio.width = 641 is odd"),
    ({"height": 4000}, "studio.height = 4000 is above the maximum"),
    ({"fps": 0}, "studio.fps = 0 is below the minimum"),
    ({"fps": 29.97}, "studio.fps must be a whole number"),
    ({"bitrate_kbps": 50}, "studio.bitrate_kbps = 50 is below the minimum"),
    ({"preset": "turbo"}, "studio.preset = 'turbo' is invalid"),
    ({"audio": "mic"}, "studio.audio = 'mic' is invalid"),
    ({"audio": "alsa:"}, "studio.audio = 'alsa:' is invalid"),
    ({"audio": "alsa:hw:1,0"}, "needs a real camera"),
    ({"keyframe_interval_s": 3.0}, "longer than studio.segment_s = 2.0"),
    ({"part_s": 3.0, "segment_s": 2.5}, "studio.part_s = 3.0 is longer"),
    ({"clip_seconds": 3.0, "keyframe_interval_s": 2.0}, "studio.clip_seconds = 3.0"),
    ({"clips_keep": 0}, "studio.clips_keep = 0 is below the minimum"),
    ({"hls_window": 2}, "studio.hls_window = 2 is below the minimum"),
    ({"http_host": "my host"}, "studio.http_host = 'my host' is invalid"),
    ({"http_port": 70000}, "studio.http_port = 70000 is above the maximum"),
    ({"push_url": "ftp://example.com/x"}, "studio.push_url (scheme 'ftp')"),
    ({"push_url": "srt://ingest.example.com"}, "has no port"),
    ({"button_pin": 40}, "studio.button_pin = 40 is above the maximum"),
    ({"clip_on_set_end": "yes"}, "studio.clip_on_set_end must be true or false"),
    ({"slate_after_s": 0.1}, "studio.slate_after_s = 0.1 is below the minimum"),
    ({"slate_after_s": float("nan")}, "studio.slate_after_s must be a finite"),
    ({"zoom": 2}, "unknown key 'zoom' in [studio]"),
]


@pytest.mark.parametrize(("values", "expected"), BAD_VALUES)
def test_bad_value_rejected(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_studio(studio(**values))

    assert expected in str(raised.value)


def test_missing_camera_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_studio({"studio": {"width": 640}})

    assert "missing studio.camera" in str(raised.value)


def test_push_url_key_not_in_message() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_studio(studio(push_url="ftp://example.com/app/secret-key"))

    assert "secret-key" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("rtmp://127.0.0.1:notaport/app/KEY", "notaport"),
        ("rtmps://live.example.com:99999/app/KEY", "99999"),
        ("srt://ingest.example.com:0", "0"),
    ],
)
def test_push_url_bad_port_named(url: str, port: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_studio(studio(push_url=url))
    message = str(raised.value)

    assert f"has the invalid port {port!r}" in message
    assert "scheme" not in message
    assert "KEY" not in message


def test_push_url_bad_port_hides_credentials() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_studio(studio(push_url="rtmp://user:hunter2@127.0.0.1:x/app/KEY"))
    message = str(raised.value)

    assert "rtmp://127.0.0.1" in message
    assert "hunter2" not in message
    assert "user" not in message


def test_listen_advice_port_in_use() -> None:
    with socket.socket() as taken, socket.socket() as second:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as raised:
            second.bind(taken.getsockname())
    advice = listen_failure_advice(raised.value.errno)

    assert raised.value.errno == errno.EADDRINUSE
    assert "http_port" in advice
    assert "http_host" not in advice


@pytest.mark.parametrize("error_number", [errno.EADDRNOTAVAIL, socket.EAI_NONAME])
def test_listen_advice_address_not_local(error_number: int) -> None:
    advice = listen_failure_advice(error_number)

    assert "http_host" in advice
    assert "http_port" not in advice
    assert "0.0.0.0" in advice
    assert "127.0.0.1" in advice
    assert "the box's own addresses" in advice


def test_listen_advice_privileged_port() -> None:
    advice = listen_failure_advice(errno.EACCES)

    assert "http_port to 1024 or above" in advice
