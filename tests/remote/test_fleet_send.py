"""``nightbox fleet`` against a real box on its own mosquitto.

The box runs every service with a site file whose ``[fleet] operator_keys``
lists the public key that ``nightbox fleet keygen`` wrote. The commands log
in to the box's broker on loopback (``mqtt://127.0.0.1:<port>``) with the
site's ``operator`` account from the box's credentials file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import fleet_command
import pytest
from fleet_command import fleet, fleet_async
from management_site import (
    BOX_ID,
    DROP_ID,
    SITE_ID,
    management_box,  # noqa: F401
    management_site_config,  # noqa: F401
    site_toml,
)

from appliance.bus.broker import BrokerHandle, free_port
from appliance.remote import site_file
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.secret_file import write_secret_file
from provisioning.site_access import OPERATOR

TIMEOUT_S = 60.0
NIGHTBOX = Path(sys.executable).parent / "nightbox"
# The keygen fixture, bound to its fixture name so that pytest finds it.
key_folder = fleet_command.key_folder


@pytest.fixture(name="config_path")
def fleet_config_path(tmp_path: Path, key_folder: Path) -> Path:
    """The site file, whose box trusts the key pair in ``key_folder``."""
    path = tmp_path / "site.toml"
    text = site_toml(tmp_path / "box", [key_folder / "operator.pub"])
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def operator_login(tmp_path: Path, credentials: SiteCredentials) -> Path:
    """The login file of the site's operator account on the box's broker."""
    account = credentials.account(OPERATOR)
    path = tmp_path / "operator.json"
    login = {"username": account.username, "password": account.password}
    write_secret_file(path, json.dumps(login).encode())
    return path


@pytest.fixture
def operator_password(credentials: SiteCredentials) -> str:
    return credentials.account(OPERATOR).password


def local_options(mosquitto: BrokerHandle, login: Path) -> list[str]:
    return [
        "--broker",
        f"mqtt://127.0.0.1:{mosquitto.port}",
        "--credentials",
        str(login),
    ]


def send_options(
    mosquitto: BrokerHandle, login: Path, key_folder: Path, box_id: str = BOX_ID
) -> list[str]:
    options = local_options(mosquitto, login)
    options += ["--site", SITE_ID, "--box", box_id]
    options += ["--key", str(key_folder / "operator.key")]
    return options


def drop_state(box: Box) -> str:
    row = box.store.query_one("SELECT state FROM drops WHERE id = ?", (DROP_ID,))
    assert row is not None
    return str(row[0])


def assert_no_secrets(password: str, *texts: str) -> None:
    for text in texts:
        assert password not in text
        assert "PRIVATE KEY" not in text
        assert "Traceback" not in text


async def test_send_status(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    operator_password: str,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await fleet_async(
        capsys,
        "send",
        *send_options(mosquitto, operator_login, key_folder),
        "status",
        "--json",
    )

    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True
    assert result["kind"] == "command"
    assert result["type"] == "status"
    assert result["site"] == SITE_ID
    assert result["box"] == BOX_ID
    assert result["result"]["kit_stock"] == {"kit-1": {"initial": 5, "remaining": 5}}
    assert box.management.accepted["status"] == 1
    assert_no_secrets(operator_password, out, err)


async def test_send_drop_stop(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await fleet_async(
        capsys,
        "send",
        *send_options(mosquitto, operator_login, key_folder),
        "drop-stop",
        f"drop={DROP_ID}",
    )

    assert code == 0, err
    assert out.splitlines()[0] == f"{SITE_ID}/{BOX_ID}: command drop-stop ok"
    assert drop_state(box) == "stopped"


async def test_send_config_set_string(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    key_folder: Path,
    config_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await fleet_async(
        capsys,
        "send",
        *send_options(mosquitto, operator_login, key_folder),
        "config-set",
        "key=site.name",
        "value=Late venue",
        "--json",
    )

    assert code == 0, err
    assert json.loads(out)["result"]["restart_required"] is True
    assert site_file.config_get(config_path, "site.name") == "Late venue"


async def test_send_wrong_key_rejected(
    tmp_path: Path,
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    operator_password: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    untrusted_folder = tmp_path / "other-keys"
    keygen_code, _out, keygen_err = fleet(
        capsys, "keygen", "--out", str(untrusted_folder)
    )
    assert keygen_code == 0, keygen_err

    code, out, err = await fleet_async(
        capsys,
        "send",
        *send_options(mosquitto, operator_login, untrusted_folder),
        "drop-stop",
        f"drop={DROP_ID}",
    )

    assert code == 1
    assert out == ""
    assert f"{SITE_ID}/{BOX_ID} rejected command drop-stop: unknown-key:" in err
    assert box.management.rejected["unknown-key"] == 1
    assert drop_state(box) != "stopped"
    assert_no_secrets(operator_password, out, err)


async def test_send_invalid_argument_rejected(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _out, err = await fleet_async(
        capsys,
        "send",
        *send_options(mosquitto, operator_login, key_folder),
        "token-revoke",
        "token=not-a-token-id",
    )

    assert code == 1
    assert "rejected command token-revoke: invalid-argument:" in err
    assert "'not-a-token-id'" in err


async def test_send_unknown_box(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await fleet_async(
        capsys,
        "send",
        *send_options(mosquitto, operator_login, key_folder, box_id="box-9"),
        "status",
    )

    assert code == 2
    assert out == ""
    assert f"box 'box-9' of site '{SITE_ID}' has never announced itself" in err
    assert f"nightbox fleet list --site {SITE_ID}" in err
    assert sum(box.management.accepted.values()) == 0
    assert sum(box.management.rejected.values()) == 0


async def test_send_broker_unreachable(
    box: Box,
    operator_login: Path,
    operator_password: str,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"

    code, out, err = await fleet_async(
        capsys,
        "send",
        "--broker",
        url,
        "--credentials",
        str(operator_login),
        "--site",
        SITE_ID,
        "--box",
        BOX_ID,
        "--key",
        str(key_folder / "operator.key"),
        "status",
    )

    assert code == 2
    assert out == ""
    assert f"cannot use broker {url}: the connection was refused" in err
    assert_no_secrets(operator_password, out, err)


async def test_list_local_broker(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await fleet_async(
        capsys,
        "list",
        *local_options(mosquitto, operator_login),
        "--site",
        SITE_ID,
        "--json",
        "--wait",
        "1",
    )

    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1
    assert rows[0]["site"] == SITE_ID
    assert rows[0]["box"] == BOX_ID
    assert rows[0]["availability"] == "online"
    assert rows[0]["guests_in"] == 0
    assert rows[0]["readers"] == 3
    assert "not an operator account" not in err


async def test_local_broker_ignores_environment_ca(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca_path = tmp_path / "ca.pem"
    monkeypatch.setenv("NIGHTBOX_FLEET_CA", str(ca_path))
    caplog.set_level(logging.INFO, logger="appliance.cli_fleet")
    options = [*local_options(mosquitto, operator_login), "--wait", "1"]

    from_environment = await fleet_async(capsys, "list", *options)
    cleared = await fleet_async(capsys, "list", *options, "--ca", "")
    explicit = await fleet_async(capsys, "list", *options, "--ca", str(ca_path))

    assert from_environment.code == 0, from_environment.err
    assert f"Ignored NIGHTBOX_FLEET_CA={ca_path}" in caplog.text
    assert cleared.code == 0, cleared.err
    assert explicit.code == 2
    assert f"--ca {ca_path} is given" in explicit.err


async def test_bundle_local_broker_not_authorized(
    tmp_path: Path,
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    key_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = tmp_path / "members.json"
    body.write_text('{"members": []}')

    code, _out, err = await fleet_async(
        capsys,
        "bundle",
        *send_options(mosquitto, operator_login, key_folder),
        "members",
        "--version",
        "1",
        "--file",
        str(body),
    )

    assert code == 2
    assert f"nightbox/{SITE_ID}/box/{BOX_ID}/bundle/members" in err
    assert "Not authorized" in err
    assert "check that 'operator' is an operator account" in err


async def test_send_subprocess(
    box: Box,
    mosquitto: BrokerHandle,
    operator_login: Path,
    operator_password: str,
    key_folder: Path,
) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("NIGHTBOX_FLEET_")
    }
    process = await asyncio.create_subprocess_exec(
        str(NIGHTBOX),
        "fleet",
        "send",
        *send_options(mosquitto, operator_login, key_folder),
        "status",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)

    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["ok"] is True
    assert result["result"]["drops"][DROP_ID]["quota"] == 20
    assert_no_secrets(operator_password, out.decode(), err.decode())
