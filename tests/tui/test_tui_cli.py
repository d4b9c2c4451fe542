"""``nightbox tui`` options and the clear errors it gives before any screen opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import appliance
from appliance.errors import ConfigError
from tui.cli import local_link_settings, setup_progress_path
from tui.link import LinkSettings

SAMPLE = Path(appliance.__file__).parent / "samples" / "site.toml"
REPOSITORY = Path(__file__).resolve().parents[2]


def _site_file(folder: Path) -> Path:
    """Write the sample site with its data folder under ``folder``."""
    text = SAMPLE.read_text().replace(
        'data_dir = "../../var/sample"', f'data_dir = "{folder / "box"}"'
    )
    path = folder / "site.toml"
    path.write_text(text)
    return path


def _nightbox_tui(
    *arguments: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    environment = {
        key: value for key, value in os.environ.items() if key != "NIGHTBOX_CONFIG"
    }
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "tui", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPOSITORY,
        env=environment,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stderr


def test_missing_login_file_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"

    code, stderr = _nightbox_tui("--login", str(missing))

    assert code == 2
    assert f"cannot read login file {missing}" in stderr
    assert "nightbox console login-file" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "is not valid JSON"),
        ("[1, 2]", "must contain a JSON object"),
        (
            '{"broker": "mqtt://127.0.0.1:1883", "site": "s", "box": "b", '
            '"username": "terminal-console"}',
            "has no valid 'password'",
        ),
        (
            '{"broker": "http://example", "site": "s", "box": "b", '
            '"username": "terminal-console", "password": "p"}',
            "must start with mqtts:// (TLS) or mqtt://",
        ),
        (
            '{"broker": "mqtt://127.0.0.1:1883", "site": "[bold red]X[/]", '
            '"box": "b", "username": "terminal-console", "password": "p"}',
            "site = '[bold red]X[/]' is invalid; use 1-32 lowercase letters",
        ),
        (
            '{"broker": "mqtt://127.0.0.1:1883", "site": "s", "box": "box/#", '
            '"username": "terminal-console", "password": "p"}',
            "box = 'box/#' is invalid; use 1-32 lowercase letters",
        ),
    ],
)
def test_invalid_login_file_named(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "login.json"
    path.write_text(content)

    with pytest.raises(ConfigError) as caught:
        LinkSettings.from_login_file(path)

    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_login_file_bad_site_exits(tmp_path: Path) -> None:
    path = tmp_path / "login.json"
    login = {
        "broker": "mqtt://127.0.0.1:1883",
        "site": "club/+",
        "box": "box-2",
        "username": "terminal-console",
        "password": "generated-secret",
    }
    path.write_text(json.dumps(login))

    code, stderr = _nightbox_tui("--login", str(path))

    assert code == 2
    assert f"login file {path}: site = 'club/+' is invalid" in stderr
    assert "nightbox console login-file" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr


def test_login_file_read(tmp_path: Path) -> None:
    path = tmp_path / "login.json"
    login = {
        "broker": "mqtt://192.0.2.7:18830",
        "site": "club",
        "box": "box-2",
        "username": "terminal-console",
        "password": "generated-secret",
        "pin": "836104",
    }
    path.write_text(json.dumps(login))

    settings = LinkSettings.from_login_file(path)

    assert (settings.host, settings.port) == ("192.0.2.7", 18830)
    assert (settings.site, settings.box) == ("club", "box-2")
    assert settings.username == "terminal-console"
    assert settings.password == "generated-secret"
    assert "generated-secret" not in repr(settings)


def test_no_box_given_explained() -> None:
    code, stderr = _nightbox_tui()

    assert code == 2
    assert "pass --config FILE" in stderr
    assert "--login FILE" in stderr
    assert "Traceback" not in stderr


def test_demo_options_need_demo(tmp_path: Path) -> None:
    code, stderr = _nightbox_tui("--login", str(tmp_path / "x.json"), "--speed", "5")

    assert code == 2
    assert "--guests and --speed apply only with --demo" in stderr


def test_config_without_credentials_explained(tmp_path: Path) -> None:
    site_file = _site_file(tmp_path)

    code, stderr = _nightbox_tui("--config", str(site_file))

    assert code == 2
    assert "no broker credentials at" in stderr
    assert f"nightbox run --config {site_file}" in stderr
    assert "Traceback" not in stderr


def test_config_from_environment(tmp_path: Path) -> None:
    site_file = _site_file(tmp_path)

    code, stderr = _nightbox_tui(env={"NIGHTBOX_CONFIG": str(site_file)})

    assert code == 2
    assert "no broker credentials at" in stderr


def test_local_settings_from_site_file(tmp_path: Path) -> None:
    site_file = _site_file(tmp_path)
    secrets = tmp_path / "box" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "broker.json").write_text(
        json.dumps({"terminal-console": "console-secret", "box-box-1": "other"})
    )

    settings = local_link_settings(site_file)

    assert (settings.host, settings.port) == ("127.0.0.1", 18830)
    assert (settings.site, settings.box) == ("sample", "box-1")
    assert settings.username == "terminal-console"
    assert settings.password == "console-secret"
    assert (
        settings.start_fix == f"start the box with 'nightbox run --config {site_file}'"
    )


def test_local_settings_without_console_account(tmp_path: Path) -> None:
    site_file = _site_file(tmp_path)
    secrets = tmp_path / "box" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "broker.json").write_text(json.dumps({"box-box-1": "other"}))

    with pytest.raises(ConfigError) as caught:
        local_link_settings(site_file)

    assert "has no 'terminal-console' account" in str(caught.value)


def test_setup_progress_beside_site_file(tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"

    assert setup_progress_path(site_file) == tmp_path / "site.toml.setup.json"
