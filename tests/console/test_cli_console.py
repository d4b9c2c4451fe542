"""``nightbox console set-pin`` and ``nightbox console login-file``."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.console.pin import PinFile, pin_path
from provisioning import SiteCredentials
from tests.reader_provisioning.provisioning_site import write_site

BROKER = '\n[broker]\nmode = "mosquitto"\nhost = "192.168.4.1"\nport = 18830\n'


def nightbox(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_set_pin_from_stdin(tmp_path: Path) -> None:
    site = write_site(tmp_path, network=False, extra=BROKER)
    result = nightbox(
        "console", "set-pin", "--config", str(site), "--pin-stdin", stdin="480213\n"
    )

    pins = PinFile(pin_path(load_config(site).data_dir))
    assert result.returncode == 0, result.stderr
    assert "480213" not in result.stdout + result.stderr
    assert pins.verify("480213")


def test_set_pin_rejects_weak_pin(tmp_path: Path) -> None:
    site = write_site(tmp_path, network=False, extra=BROKER)
    result = nightbox(
        "console", "set-pin", "--config", str(site), "--pin-stdin", stdin="123456\n"
    )

    assert result.returncode == 2
    assert "straight run" in result.stderr
    assert "nothing was changed" in result.stderr
    assert not PinFile(pin_path(load_config(site).data_dir)).exists()


@pytest.mark.parametrize("stdin", ["", "\n", "   \n"])
def test_set_pin_empty_stdin_named(tmp_path: Path, stdin: str) -> None:
    site = write_site(tmp_path, network=False, extra=BROKER)
    result = nightbox(
        "console", "set-pin", "--config", str(site), "--pin-stdin", stdin=stdin
    )

    assert result.returncode == 2
    assert "no PIN on standard input" in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not PinFile(pin_path(load_config(site).data_dir)).exists()


def test_login_file(tmp_path: Path) -> None:
    site = write_site(tmp_path, network=False, extra=BROKER)
    output = tmp_path / "laptop" / "console.json"
    output.parent.mkdir()
    first = nightbox(
        "console", "login-file", "--config", str(site), "--output", str(output)
    )
    again = nightbox(
        "console", "login-file", "--config", str(site), "--output", str(output)
    )
    forced = nightbox(
        "console",
        "login-file",
        "--config",
        str(site),
        "--output",
        str(output),
        "--force",
        "--host",
        "10.0.0.2",
    )

    config = load_config(site)
    password = (
        SiteCredentials(config.data_dir / "secrets" / "broker.json")
        .account("terminal-console")
        .password
    )
    assert first.returncode == 0, first.stderr
    assert password not in first.stdout
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert json.loads(output.read_text()) == {
        "broker": "mqtt://10.0.0.2:18830",
        "site": "test",
        "box": "box-1",
        "username": "terminal-console",
        "password": password,
    }


def test_login_file_needs_fixed_port(tmp_path: Path) -> None:
    site = write_site(tmp_path, network=False)
    output = tmp_path / "console.json"
    result = nightbox(
        "console", "login-file", "--config", str(site), "--output", str(output)
    )

    assert result.returncode == 2
    assert "broker.port" in result.stderr
    assert not output.exists()
