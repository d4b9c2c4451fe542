"""``nightbox token``, run as a subprocess against a site file in a temporary folder."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.clock import SystemClock, TimeSource
from appliance.store import Store
from appliance.tokens import SCOPES

TIMEOUT_S = 60.0
SITE_TOML = """\
[site]
id = "club"
name = "Club"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"

[[terminals]]
id = "bar-1"

[[terminals]]
id = "bar-2"
"""
ISSUER = "nightbox:club:box-1"
AUDIENCE = "club"
JWT_PATTERN = re.compile(r"^[\w-]+\.[\w-]+\.[\w-]+$")
TOKEN_ID_PATTERN = re.compile(r"^Token id: ([0-9a-f]{32})$", re.MULTILINE)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The site file; its data folder is ``data`` beside it."""
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML)
    return path


def nightbox(
    *arguments: str, cwd: Path, config_env: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox``, with NIGHTBOX_CONFIG set to ``config_env`` or unset."""
    env = {
        name: value for name, value in os.environ.items() if name != "NIGHTBOX_CONFIG"
    }
    if config_env is not None:
        env["NIGHTBOX_CONFIG"] = str(config_env)
    return subprocess.run(
        [sys.executable, "-m", "appliance", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=cwd,
        env=env,
        check=False,
    )


def issue_pos_charge(config: Path, subject: str) -> subprocess.CompletedProcess[str]:
    """Run ``nightbox token issue`` for a pos:charge token to ``subject``."""
    return nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        subject,
        "--scope",
        "pos:charge",
        cwd=config.parent,
    )


def issue_json(config: Path, *arguments: str) -> dict[str, Any]:
    """Issue a pos:charge token to bar-1 with ``--json`` and return the object."""
    result = nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:charge",
        "--json",
        *arguments,
        cwd=config.parent,
    )
    assert result.returncode == 0, result.stderr
    issued: dict[str, Any] = json.loads(result.stdout)
    return issued


def verify_with_box_key(config: Path, token: str) -> dict[str, Any]:
    """Return the token's claims after checking them with the box's public key."""
    pem = (config.parent / "data" / "secrets" / "edge-token-key.pem").read_bytes()
    private_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private_key, Ed25519PrivateKey)
    payload: dict[str, Any] = jwt.decode(
        token,
        private_key.public_key(),
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    return payload


def list_line(config: Path, token_id: str) -> str:
    result = nightbox("token", "list", "--config", str(config), cwd=config.parent)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if token_id in line]
    assert len(lines) == 1, result.stdout
    return lines[0]


def store_path(config: Path) -> Path:
    return config.parent / "data" / "nightbox.sqlite3"


def query(config: Path, sql: str) -> list[Any]:
    """Run a read-only query on the box's store file and return every row."""
    with contextlib.closing(sqlite3.connect(store_path(config))) as database:
        return database.execute(sql).fetchall()


def test_issue_prints_token_and_qr(config: Path) -> None:
    result = nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:refund",
        "--scope",
        "pos:charge",
        "--ttl",
        "8h",
        cwd=config.parent,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tokens = [line for line in lines if JWT_PATTERN.match(line)]
    assert len(tokens) == 1, result.stdout
    claims = verify_with_box_key(config, tokens[0])
    token_id = TOKEN_ID_PATTERN.search(result.stdout)
    assert token_id is not None, result.stdout
    assert token_id.group(1) == claims["jti"]
    assert "Subject:  bar-1" in lines
    assert "Scopes:   pos:charge pos:refund" in lines
    expires = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    assert f"Expires:  {expires:%Y-%m-%d %H:%M:%S} UTC" in lines
    assert claims["exp"] - claims["iat"] == 8 * 3600
    assert "█" in result.stdout
    assert "▀" in result.stdout or "▄" in result.stdout


def test_issue_no_qr(config: Path) -> None:
    result = nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:charge",
        "--no-qr",
        cwd=config.parent,
    )

    assert result.returncode == 0, result.stderr
    assert any(JWT_PATTERN.match(line) for line in result.stdout.splitlines())
    assert "█" not in result.stdout


def test_issue_json_verifies(config: Path) -> None:
    issued = issue_json(config, "--scope", "pos:refund", "--ttl", "90m")

    claims = verify_with_box_key(config, issued["token"])

    assert set(issued) == {"token", "token_id", "subject", "scopes", "expires_at"}
    assert issued["subject"] == "bar-1"
    assert issued["scopes"] == ["pos:charge", "pos:refund"]
    assert claims["scope"] == "pos:charge pos:refund"
    assert claims["sub"] == "bar-1"
    assert claims["jti"] == issued["token_id"]
    assert claims["exp"] == issued["expires_at"]
    assert claims["exp"] - claims["iat"] == 90 * 60


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [("8h", 8 * 3600), ("90m", 90 * 60), ("1h30m", 90 * 60), ("45s", 45)],
)
def test_issue_ttl_forms(config: Path, ttl: str, seconds: int) -> None:
    issued = issue_json(config, "--ttl", ttl)

    claims = verify_with_box_key(config, issued["token"])

    assert claims["exp"] - claims["iat"] == seconds


@pytest.mark.parametrize("ttl", ["2x", "0m", "", "8", "1h-5m"])
def test_issue_invalid_ttl(config: Path, ttl: str) -> None:
    result = nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:charge",
        "--ttl",
        ttl,
        cwd=config.parent,
    )

    assert result.returncode == 2
    assert "--ttl" in result.stderr
    assert repr(ttl) in result.stderr
    assert result.stdout == ""
    assert not store_path(config).exists()


def test_issue_unknown_scope(config: Path) -> None:
    result = nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:charge",
        "--scope",
        "pos:teleport",
        cwd=config.parent,
    )

    assert result.returncode == 2
    assert "'pos:teleport'" in result.stderr
    for scope in SCOPES:
        assert scope in result.stderr
    assert result.stdout == ""
    assert query(config, "SELECT id FROM edge_tokens") == []


def test_issue_invalid_subject(config: Path) -> None:
    result = issue_pos_charge(config, "Bar 1")

    assert result.returncode == 2
    assert "'Bar 1'" in result.stderr
    assert result.stdout == ""


def test_list_active_then_revoked(config: Path) -> None:
    issued = issue_json(config)
    active = list_line(config, issued["token_id"])

    result = nightbox(
        "token",
        "revoke",
        "--config",
        str(config),
        issued["token_id"],
        cwd=config.parent,
    )
    revoked = list_line(config, issued["token_id"])

    assert "active" in active
    assert "bar-1" in active
    assert "pos:charge" in active
    assert result.returncode == 0, result.stderr
    assert f"Revoked token {issued['token_id']}" in result.stdout
    assert "revoked" in revoked
    assert "active" not in revoked


def test_list_without_tokens(config: Path) -> None:
    # A box that has run once but issued no token.
    Store(store_path(config), SystemClock(TimeSource.NTP)).close()

    result = nightbox("token", "list", "--config", str(config), cwd=config.parent)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "No tokens issued yet.\n"


def test_revoke_twice_already_revoked(config: Path) -> None:
    issued = issue_json(config)
    revoke = ("token", "revoke", "--config", str(config), issued["token_id"])

    first = nightbox(*revoke, cwd=config.parent)
    second = nightbox(*revoke, "--reason", "lost", cwd=config.parent)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "already revoked" in second.stdout
    reasons = query(config, "SELECT reason FROM revoked_tokens")
    assert reasons == [("revoked by the operator",)]


@pytest.mark.parametrize("token_id", ["not-an-id", "0123", "g" * 32])
def test_revoke_invalid_id(config: Path, token_id: str) -> None:
    issue_json(config)

    result = nightbox(
        "token", "revoke", "--config", str(config), token_id, cwd=config.parent
    )

    assert result.returncode == 2
    assert f"token id {token_id!r} is invalid" in result.stderr
    assert "nightbox token list" in result.stderr


def test_revoke_id_not_issued(config: Path) -> None:
    issue_json(config)
    token_id = "0123456789abcdef0123456789abcdef"

    result = nightbox(
        "token", "revoke", "--config", str(config), token_id, cwd=config.parent
    )

    assert result.returncode == 2
    assert f"token {token_id} was not issued by this box" in result.stderr
    assert query(config, "SELECT id FROM revoked_tokens") == []


def test_revoke_without_store(config: Path) -> None:
    result = nightbox(
        "token",
        "revoke",
        "--config",
        str(config),
        "0123456789abcdef0123456789abcdef",
        cwd=config.parent,
    )

    assert result.returncode == 2
    assert str(store_path(config)) in result.stderr
    assert not store_path(config).exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ("token", "list"),
        ("token", "issue", "--subject", "bar-1", "--scope", "pos:charge"),
        ("token", "revoke", "0123456789abcdef0123456789abcdef"),
    ],
    ids=["list", "issue", "revoke"],
)
def test_missing_config(tmp_path: Path, arguments: tuple[str, ...]) -> None:
    result = nightbox(*arguments, cwd=tmp_path)

    assert result.returncode == 2
    assert "--config" in result.stderr
    assert "NIGHTBOX_CONFIG" in result.stderr
    assert result.stdout == ""


def test_scopes_lists_every_scope(tmp_path: Path) -> None:
    result = nightbox("token", "scopes", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert "pos:charge" in names
    assert names == list(SCOPES)


def test_config_from_environment(config: Path) -> None:
    issued = nightbox(
        "token",
        "issue",
        "--subject",
        "bar-2",
        "--scope",
        "pos:void",
        "--json",
        cwd=config.parent,
        config_env=config,
    )
    listed = nightbox("token", "list", cwd=config.parent, config_env=config)

    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)
    assert verify_with_box_key(config, token["token"])["sub"] == "bar-2"
    assert listed.returncode == 0, listed.stderr
    assert token["token_id"] in listed.stdout


def test_token_not_in_store(config: Path) -> None:
    printed = nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:charge",
        "--no-qr",
        cwd=config.parent,
    )
    issued = issue_json(config)
    revoked = nightbox(
        "token",
        "revoke",
        "--config",
        str(config),
        issued["token_id"],
        cwd=config.parent,
    )
    tokens = [issued["token"]]
    tokens += [line for line in printed.stdout.splitlines() if JWT_PATTERN.match(line)]

    rows = query(config, "SELECT type, body FROM outbox")
    files = [path for path in store_path(config).parent.iterdir() if path.is_file()]
    stored = b"".join(path.read_bytes() for path in files)

    assert printed.returncode == 0, printed.stderr
    assert revoked.returncode == 0, revoked.stderr
    assert len(tokens) == 2
    assert [kind for kind, _ in rows] == [
        "token_issued",
        "token_issued",
        "token_revoked",
    ]
    for token in tokens:
        signature = token.split(".")[2]
        for _, body in rows:
            assert token not in body
            assert signature not in body
        assert signature.encode() not in stored


def test_issue_subject_not_terminal(config: Path) -> None:
    result = issue_pos_charge(config, "exit-1")

    assert result.returncode == 2
    assert (
        "'exit-1' is not a terminal of this site (desk, bar-1, bar-2)" in result.stderr
    )
    assert "[[terminals]]" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_into_closed_pipe(config: Path) -> None:
    # `nightbox token list | head -0`: the reader closes the pipe at once.
    nightbox(
        "token",
        "issue",
        "--config",
        str(config),
        "--subject",
        "bar-1",
        "--scope",
        "pos:charge",
        "--json",
        cwd=config.parent,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "token", "list", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=config.parent,
    )
    assert process.stdout is not None
    process.stdout.close()
    _output, errors = process.communicate(timeout=TIMEOUT_S)

    assert b"Traceback" not in errors
    assert process.returncode in (0, 141)


def test_list_json(config: Path) -> None:
    issued = issue_json(config)
    listed = nightbox(
        "token", "list", "--config", str(config), "--json", cwd=config.parent
    )

    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(records) == 1
    assert records[0]["token_id"] == issued["token_id"]
    assert records[0]["subject"] == "bar-1"
    assert records[0]["scopes"] == ["pos:charge"]
    assert records[0]["revoked_at"] is None


def test_issue_subject_invalid_id(config: Path) -> None:
    result = issue_pos_charge(config, "BAR-1")

    assert result.returncode == 2
    assert "'BAR-1' is not a terminal id" in result.stderr
    assert "id = 'BAR-1'" not in result.stderr
