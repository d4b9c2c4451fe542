"""Bad input to ``nightbox reader provision``: a clear error, and nothing changed."""

from __future__ import annotations

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
