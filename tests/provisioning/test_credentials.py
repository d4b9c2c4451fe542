"""Broker passwords: mosquitto's ``$7$`` hashes and the per-site credentials file."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from provisioning import BrokerAccount, SiteCredentials, hash_password, verify_password

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_hash_password_mosquitto_format() -> None:
    hashed = hash_password("correct horse")

    empty, kind, iterations, salt, digest = hashed.split("$")

    assert empty == ""
    assert kind == "7"
    assert iterations == "101"
    assert len(base64.b64decode(salt, validate=True)) == 12
    # PBKDF2-HMAC-SHA512 yields a 64-byte digest.
    assert len(base64.b64decode(digest, validate=True)) == 64


def test_hash_password_fresh_salt_per_call() -> None:
    first = hash_password("same password")
    second = hash_password("same password")

    assert first != second
    assert verify_password("same password", first)
    assert verify_password("same password", second)


def test_hash_password_custom_iterations() -> None:
    hashed = hash_password("pw", iterations=1000)

    assert hashed.split("$")[2] == "1000"
    assert verify_password("pw", hashed)


def test_verify_password_right_and_wrong() -> None:
    hashed = hash_password("correct horse")

    assert verify_password("correct horse", hashed) is True
    assert verify_password("correct horsE", hashed) is False
    assert verify_password("", hashed) is False


def test_verify_password_non_ascii() -> None:
    hashed = hash_password("pässwörd-日本")

    assert verify_password("pässwörd-日本", hashed)
    assert not verify_password("passwort-日本", hashed)


@pytest.mark.parametrize(
    "hashed",
    [
        pytest.param("", id="empty"),
        pytest.param("plain-text-password", id="clear text"),
        pytest.param("$6$101$c2FsdA==$ZGlnZXN0", id="other scheme"),
        pytest.param("$7$101$c2FsdA==", id="missing digest"),
        pytest.param("$7$many$c2FsdA==$ZGlnZXN0", id="iterations not a number"),
        pytest.param("$7$0$c2FsdA==$ZGlnZXN0", id="zero iterations"),
        pytest.param("$7$101$not base64!$ZGlnZXN0", id="salt not base64"),
        pytest.param("$7$101$c2FsdA==$ZGlnZXN0$extra", id="extra field"),
    ],
)
def test_verify_password_malformed_hash_false(hashed: str) -> None:
    assert verify_password("anything", hashed) is False


@pytest.mark.skipif(
    MOSQUITTO_PASSWD is None,
    reason="mosquitto_passwd is not installed, so no hash made by mosquitto exists",
)
def test_verify_password_mosquitto_passwd_hash(tmp_path: Path) -> None:
    assert MOSQUITTO_PASSWD is not None
    password_file = tmp_path / "passwd"
    password_file.touch()

    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", str(password_file), "alice", "s3cret pass"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    username, hashed = password_file.read_text().strip().split(":", 1)

    assert username == "alice"
    assert hashed.startswith("$7$")
    assert verify_password("s3cret pass", hashed)
    assert not verify_password("s3cret-pass", hashed)


def test_site_credentials_generates_once(tmp_path: Path) -> None:
    credentials = SiteCredentials(tmp_path / "secrets" / "broker.json")

    first = credentials.account("reader-exit-1")
    again = credentials.account("reader-exit-1")
    other = credentials.account("reader-exit-2")

    assert first == again
    assert first.username == "reader-exit-1"
    assert len(first.password) >= 32
    assert other.password != first.password


def test_site_credentials_persist_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "broker.json"
    credentials = SiteCredentials(path)
    credentials.ensure(["box-box-1", "observer"])

    reloaded = SiteCredentials(path)

    assert reloaded.account("box-box-1") == credentials.account("box-box-1")
    assert reloaded.account("observer") == credentials.account("observer")
    assert json.loads(path.read_text()) == {
        "box-box-1": credentials.account("box-box-1").password,
        "observer": credentials.account("observer").password,
    }


def test_site_credentials_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "broker.json"
    credentials = SiteCredentials(path)

    credentials.account("observer")

    assert credentials.path == path
    assert _mode(path) == 0o600
    assert not path.with_suffix(".tmp").exists()


def test_site_credentials_mode_0600_after_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "broker.json"
    path.write_text("{}")
    path.chmod(0o644)

    SiteCredentials(path).account("observer")

    assert _mode(path) == 0o600


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="invalid JSON"),
        pytest.param("", id="empty file"),
        pytest.param('["observer"]', id="list"),
        pytest.param('{"observer": 42}', id="password not a string"),
        pytest.param('{"observer": null}', id="password null"),
    ],
)
def test_site_credentials_corrupt_file_names_path(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broker.json"
    path.write_text(text)

    with pytest.raises(ValueError, match="broker credentials") as caught:
        SiteCredentials(path)

    assert str(path) in str(caught.value)
    assert "move the file away" in str(caught.value)


def test_site_credentials_password_file_holds_only_hashes(tmp_path: Path) -> None:
    credentials = SiteCredentials(tmp_path / "broker.json")
    credentials.ensure(["box-box-1", "reader-exit-1", "observer"])

    rendered = credentials.render_password_file()

    lines = rendered.splitlines()
    assert rendered.endswith("\n")
    assert [line.split(":", 1)[0] for line in lines] == [
        "box-box-1",
        "reader-exit-1",
        "observer",
    ]
    for line in lines:
        username, hashed = line.split(":", 1)
        password = credentials.account(username).password
        assert hashed.startswith("$7$")
        assert password not in rendered
        assert verify_password(password, hashed)


def test_site_credentials_password_file_salts_differ(tmp_path: Path) -> None:
    credentials = SiteCredentials(tmp_path / "broker.json")
    credentials.ensure(["observer"])

    assert credentials.render_password_file() != credentials.render_password_file()


def test_broker_account_repr_hides_password() -> None:
    account = BrokerAccount("observer", "very-secret-value")

    assert "very-secret-value" not in repr(account)
    assert "observer" in repr(account)
