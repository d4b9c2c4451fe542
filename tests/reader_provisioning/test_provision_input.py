"""Bad input to ``nightbox reader provision``: a clear error, and nothing changed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_config
from provisioning.readers import build_bundle
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    mip_index_fixture,
    site_file_fixture,
    umqtt_sources_fixture,
)
from tests.reader_provisioning.test_bundle import ESP32_HEADER

TIMEOUT_S = 60.0


@pytest.fixture
def bundle(site_file: Path, mip_index: Path, tmp_path: Path) -> Path:
    """A valid bundle in the site's data folder."""
    image = tmp_path / "ESP32_GENERIC.bin"
    image.write_bytes(ESP32_HEADER + bytes(256))
    folder = load_config(site_file).data_dir / "reader-bundle"
    build_bundle(folder, index=str(mip_index), image=image)
    return folder


def provision(site_file: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "reader",
            "provision",
            "--config",
            str(site_file),
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


GOOD = ("--port", "/dev/null", "--role", "exit", "--zone", "main-door")


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (
            ("--port", "/dev/null", "--role", "door", "--zone", "main-door"),
            2,
            "role 'door' is unknown; use --role exit or --role kit",
        ),
        (
            ("--port", "/dev/null", "--role", "exit", "--zone", "Main Door"),
            2,
            "zone 'Main Door' is invalid; use 1-32 lowercase letters",
        ),
        (
            ("--role", "exit", "--zone", "main-door"),
            2,
            "the following arguments are required: --port",
        ),
        (
            ("--port", "/dev/ttyNIGHTBOX9", "--role", "exit", "--zone", "main-door"),
            3,
            "serial port /dev/ttyNIGHTBOX9 not found; plug the reader in",
        ),
        (
            (*GOOD, "--id", "kit-1"),
            2,
            "reader kit-1 is already in the site file as a kit reader",
        ),
        (
            (*GOOD, "--bundle", "/nonexistent/reader-bundle"),
            2,
            "no reader bundle in /nonexistent/reader-bundle",
        ),
        (
            (*GOOD, "--kit-stock", "-1"),
            2,
            "--kit-stock: must be from 0 to",
        ),
    ],
)
def test_bad_input_changes_nothing(
    site_file: Path, bundle: Path, arguments: tuple[str, ...], code: int, message: str
) -> None:
    site_before = site_file.read_bytes()
    accounts = load_config(site_file).data_dir / "secrets" / "broker.json"
    result = provision(site_file, *arguments)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert site_file.read_bytes() == site_before
    assert not accounts.exists()
    assert not (site_file.parent / "site.toml.previous").exists()


def closed_loopback_port() -> int:
    """Return a loopback TCP port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("port", "code", "message"),
    [
        ("foo://bar", 2, "port foo://bar is invalid: pyserial has no protocol 'foo'"),
        ("{folder}", 2, "port {folder} is a folder, not a serial device"),
        ("{file}", 2, "port {file} is a regular file, not a serial device"),
        ("/dev/null", 3, "cannot open serial port /dev/null: Could not configure"),
        (
            "socket://127.0.0.1:{closed}",
            3,
            "cannot open serial port socket://127.0.0.1:{closed}: [Errno 111] "
            "Connection refused",
        ),
        (
            "socket://127.0.0.1:99999",
            2,
            "a socket:// URL needs a host and a TCP port from 1 to 65535",
        ),
        ("socket://127.0.0.1", 2, "a socket:// URL needs a host and a TCP port"),
        ("loop://", 2, "port loop:// is pyserial's loopback port"),
    ],
)
def test_bad_port_named(
    site_file: Path, bundle: Path, tmp_path: Path, port: str, code: int, message: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a port")
    values = {
        "folder": str(tmp_path),
        "file": str(tmp_path / "notes.txt"),
        "closed": str(closed_loopback_port()),
    }
    port = port.format(**values)
    site_before = site_file.read_bytes()
    result = provision(site_file, "--port", port, "--role", "exit", "--zone", "bar")
    assert result.returncode == code, result.stderr
    assert message.format(**values) in result.stderr
    assert "Traceback" not in result.stderr
    assert site_file.read_bytes() == site_before


@pytest.mark.parametrize("name", ["", ".", "lib/a\x00b", "lib/" + "b" * 5000])
def test_malformed_manifest_exit_2(site_file: Path, bundle: Path, name: str) -> None:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "size": 0}
    manifest_path.write_text(json.dumps(manifest))
    result = provision(site_file, *GOOD)
    assert result.returncode == 2, result.stderr
    assert "the bundle manifest in" in result.stderr
    assert "build the bundle again" in result.stderr
    assert "Traceback" not in result.stderr
    assert "\x00" not in result.stderr
    assert len(result.stderr) < 500


def test_empty_id_rejected(site_file: Path, bundle: Path) -> None:
    result = provision(site_file, *GOOD, "--id", "")
    assert result.returncode == 2, result.stderr
    assert "reader id '' is invalid" in result.stderr


def test_readable_password_warned(site_file: Path, bundle: Path) -> None:
    password_file = site_file.parent / "wifi-password.txt"
    password_file.chmod(0o644)
    result = provision(
        site_file, "--port", "/dev/ttyNIGHTBOX9", "--role", "exit", "--zone", "bar"
    )
    assert result.returncode == 3, result.stderr
    assert f"The Wi-Fi password file {password_file} has mode 0644" in result.stderr
    assert f"run chmod 600 {password_file}" in result.stderr
    assert "serial port /dev/ttyNIGHTBOX9 not found" in result.stderr
