"""``nightbox fleet`` against a real TLS mosquitto on loopback.

The fleet broker comes from the ``upstream`` fixture. Boxes are played by
:class:`BoxPeer`, a paho client logged in with a box's own fleet account.
It publishes retained availability and telemetry as a box does. When given
trusted keys, it also verifies each command and bundle with
``verify_document`` and publishes a result in the box's result format.
``test_fleet_send.py`` sends to a real ``Box`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import json
import os
import pwd
import queue
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import upstream_broker
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from fleet_command import Outcome, fleet, fleet_async, operator_options
from paho.mqtt.subscribeoptions import SubscribeOptions
from upstream_broker import OPERATOR, Upstream

from appliance.bus import envelope
from appliance.bus.broker import (
    TlsFiles,
    find_mosquitto,
    free_port,
    start_fleet_mosquitto,
)
from appliance.bus.topics import Topics
from appliance.bus.url import client_tls_context, parse_broker_url
from appliance.cli import main
from appliance.clock import SystemClock, TimeSource
from appliance.remote.config import load_public_key
from appliance.remote.fleet_client import FleetError, check_transport
from appliance.signed_documents import SignatureError, key_id, verify_document
from provisioning.credentials import SiteCredentials, verify_password
from provisioning.fleet_access import FleetBox, fleet_policy, operator_username

TIMEOUT_S = 20.0
# The fleet broker fixture, bound to its fixture name so that pytest finds it.
upstream = upstream_broker.upstream
NIGHTBOX = Path(sys.executable).parent / "nightbox"
TELEMETRY = {
    "guests_in": 42,
    "checkouts": 7,
    "kits_issued": 5,
    "kits_left": {"kit-1": 3, "total": 3},
    "sales_minor": 12_345,
    "currency": "EUR",
    "drop_stock": {},
    "sync_backlog": 12,
    "sync_last_success": 1_780_000_000.0,
    "readers_online": 2,
    "readers": 3,
    "uptime_s": 3600,
    "version": "0.1.0",
}
SYNC_STATE = {
    "connected": True,
    "backlog": 12,
    "sent": 800,
    "last_success": 1_780_000_000.0,
    "last_error": None,
    "broker": "mqtts://127.0.0.1:8883",
}


def operator_password(upstream: Upstream) -> str:
    return upstream.accounts.account(operator_username(OPERATOR)).password


def offline_send_options(key_path: Path) -> list[str]:
    """Return the options of a send to club/box-1 on a port where nothing listens.

    The send fails on its input before it would connect to the broker.
    """
    return [
        "--broker",
        "mqtt://127.0.0.1:1",
        "--site",
        "club",
        "--box",
        "box-1",
        "--key",
        str(key_path),
    ]


def assert_no_secrets(outcome: Outcome, *passwords: str) -> None:
    for text in (outcome.out, outcome.err):
        assert "PRIVATE KEY" not in text
        assert "Traceback" not in text
        for password in passwords:
            assert password not in text


def telemetry_payload(data: dict[str, Any], box_id: str = "box-1") -> bytes:
    return envelope.encode(f"box/{box_id}", {"data": data})


class BoxPeer:
    """A box's MQTT client on the fleet broker, used as a context manager.

    With ``trusted_keys`` it verifies each command and bundle as a box does
    (signature, site, kind, times, the topic's name equals the document
    type, ``body.box`` is this box) and publishes the result on its
    ``stat/result`` topic. Results echo the verified body and version, so
    tests can check what was signed.
    """

    def __init__(
        self,
        upstream: Upstream,
        site: str = "club",
        box_id: str = "box-1",
        *,
        trusted_keys: dict[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.site = site
        self.box_id = box_id
        self.topics = Topics(site)
        self.documents: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._trusted_keys = trusted_keys
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        login = json.loads(upstream.box_credentials(site, box_id).read_text())
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"peer-{site}-{box_id}",
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(login["username"], login["password"])
        self._client.tls_set_context(client_tls_context(upstream.ca.ca_certificate))
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._port = upstream.broker.port

    def __enter__(self) -> BoxPeer:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        assert self._connected.wait(TIMEOUT_S), "the box peer did not connect"
        filters = [
            self.topics.box_topic(self.box_id, "cmnd/+"),
            self.topics.box_topic(self.box_id, "bundle/+"),
            self.topics.bundle(None, "+"),
        ]
        self._client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in filters])
        assert self._subscribed.wait(TIMEOUT_S), "the box peer did not subscribe"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, suffix: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish on the box's own ``suffix`` topic and wait for the PUBACK."""
        topic = self.topics.box_topic(self.box_id, suffix)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def announce(self, availability: str = "online") -> None:
        self.publish("availability", availability.encode())

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        document = orjson.loads(message.payload)
        self.documents.put((message.topic, document))
        if self._trusted_keys is not None:
            data = self._verify(message.topic, document)
            result = envelope.encode(f"box/{self.box_id}", {"data": data})
            client.publish(self.topics.command_result(self.box_id), result, qos=1)

    def _verify(self, topic: str, document: dict[str, Any]) -> dict[str, Any]:
        kind = "command" if "/cmnd/" in topic else "bundle"
        name = topic.rsplit("/", 1)[1]
        data: dict[str, Any] = {"kind": kind, "type": name}
        data["nonce"] = document.get("nonce")
        try:
            verified = verify_document(
                document,
                self._trusted_keys or {},
                site=self.site,
                kind=kind,
                clock=SystemClock(TimeSource.NTP),
            )
            if verified.type != name:
                raise SignatureError("malformed", "the topic names another type")
            if kind == "command" and verified.body.get("box") != self.box_id:
                raise SignatureError("malformed", "the command is for another box")
        except SignatureError as err:
            data.update(ok=False, reason=err.reason, message=err.message)
            return data
        data.update(
            ok=True, result={"body": verified.body, "version": verified.version}
        )
        return data

    def next_document(self, timeout_s: float = TIMEOUT_S) -> tuple[str, dict[str, Any]]:
        return self.documents.get(timeout=timeout_s)


@dataclass(frozen=True, slots=True)
class OperatorKey:
    """An operator key pair that ``nightbox fleet keygen`` wrote."""

    private_path: Path
    public_path: Path
    public_key: Ed25519PublicKey

    @property
    def trusted(self) -> dict[str, Ed25519PublicKey]:
        return {key_id(self.public_key): self.public_key}


@pytest.fixture
def operator_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> OperatorKey:
    outcome = fleet(capsys, "keygen", "--out", str(tmp_path / "keys"))
    assert outcome.code == 0, outcome.err
    public_path = tmp_path / "keys" / "operator.pub"
    public_key = load_public_key(public_path, "test")
    return OperatorKey(tmp_path / "keys" / "operator.key", public_path, public_key)


# keygen


def test_keygen_writes_key_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = fleet(capsys, "keygen", "--out", str(tmp_path / "keys"))

    private_path = tmp_path / "keys" / "operator.key"
    public_path = tmp_path / "keys" / "operator.pub"
    assert outcome.code == 0, outcome.err
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private_key = serialization.load_pem_private_key(
        private_path.read_bytes(), password=None
    )
    assert isinstance(private_key, Ed25519PrivateKey)
    assert b"BEGIN PRIVATE KEY" in private_path.read_bytes()
    public_key = load_public_key(public_path, "test")
    assert public_key == private_key.public_key()
    assert f"Key id:     {key_id(public_key)}" in outcome.out.splitlines()
    assert f"Public key: {public_path}" in outcome.out.splitlines()
    assert_no_secrets(outcome)
    names = sorted(path.name for path in (tmp_path / "keys").iterdir())
    assert names == ["operator.key", "operator.pub"]


def test_keygen_never_overwrites(
    operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    before = operator_key.private_path.read_bytes()

    outcome = fleet(capsys, "keygen", "--out", str(operator_key.private_path.parent))

    assert outcome.code == 2
    assert str(operator_key.private_path) in outcome.err
    assert "already exists" in outcome.err
    assert "choose another --out folder" in outcome.err
    assert operator_key.private_path.read_bytes() == before
    assert_no_secrets(outcome)


# ca


async def test_ca_serves_tls_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "tls"
    accounts_path = tmp_path / "accounts.json"
    created = fleet(
        capsys, "ca", "--out", str(folder), "--host", "localhost", "--host", "127.0.0.1"
    )
    assert created.code == 0, created.err
    again = fleet(capsys, "ca", "--out", str(folder), "--host", "localhost")
    login = fleet(
        capsys,
        "account",
        "--accounts",
        str(accounts_path),
        "--operator",
        "ops",
        "--out",
        str(tmp_path / "ops.json"),
    )
    assert login.code == 0, login.err
    broker = await start_fleet_mosquitto(
        tmp_path / "run",
        "127.0.0.1",
        free_port(),
        SiteCredentials(accounts_path),
        fleet_policy([FleetBox("club", "box-1")], operators=["ops"]),
        TlsFiles(folder / "broker.pem", folder / "broker.key"),
    )
    try:
        listed = await fleet_async(
            capsys,
            "list",
            "--broker",
            f"mqtts://localhost:{broker.port}",
            "--ca",
            str(folder / "ca.pem"),
            "--credentials",
            str(tmp_path / "ops.json"),
            "--wait",
            "0.5",
        )
    finally:
        await broker.stop()

    assert f"CA certificate:     {folder / 'ca.pem'}" in created.out
    assert "(for localhost, 127.0.0.1)" in created.out
    for name in ("ca.key", "broker.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert_no_secrets(created)
    assert again.code == 2
    assert "ca.key already exists" in again.err
    assert "--reissue" in again.err
    # TLS and the login succeeded: the broker simply has no box yet.
    assert listed.code == 1
    assert "no boxes seen" in listed.err


async def test_ca_reissue_adds_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "tls"
    accounts_path = tmp_path / "accounts.json"
    created = fleet(capsys, "ca", "--out", str(folder), "--host", "127.0.0.1")
    assert created.code == 0, created.err
    ca_pem = (folder / "ca.pem").read_bytes()
    ca_key = (folder / "ca.key").read_bytes()
    reissued = fleet(
        capsys,
        "ca",
        "--out",
        str(folder),
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        "--reissue",
    )
    make_account(capsys, accounts_path, tmp_path / "ops.json", "--operator", "ops")
    broker = await start_fleet_mosquitto(
        tmp_path / "run",
        "127.0.0.1",
        free_port(),
        SiteCredentials(accounts_path),
        fleet_policy([FleetBox("club", "box-1")], operators=["ops"]),
        TlsFiles(folder / "broker.pem", folder / "broker.key"),
    )
    try:
        # The old ca.pem, as every box has it, trusts the new host name.
        listed = await fleet_async(
            capsys,
            "list",
            "--broker",
            f"mqtts://localhost:{broker.port}",
            "--ca",
            str(tmp_path / "tls" / "ca.pem"),
            "--credentials",
            str(tmp_path / "ops.json"),
            "--wait",
            "0.5",
        )
    finally:
        await broker.stop()

    assert reissued.code == 0, reissued.err
    assert "(for 127.0.0.1, localhost)" in reissued.out
    assert "The CA is unchanged" in reissued.out
    assert (folder / "ca.pem").read_bytes() == ca_pem
    assert (folder / "ca.key").read_bytes() == ca_key
    assert stat.S_IMODE((folder / "broker.key").stat().st_mode) == 0o600
    assert_no_secrets(reissued)
    # TLS and the login succeeded: the broker simply has no box yet.
    assert listed.code == 1
    assert "no boxes seen" in listed.err


def test_ca_reissue_needs_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = fleet(
        capsys, "ca", "--out", str(tmp_path), "--host", "127.0.0.1", "--reissue"
    )

    assert outcome.code == 2
    assert f"{tmp_path / 'ca.key'} not found" in outcome.err
    assert not (tmp_path / "broker.key").exists()


def test_ca_host_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fleet", "ca", "--out", str(tmp_path), "--host", "bad host"])

    assert exited.value.code == 2
    assert "'bad host' is neither an IP address nor a DNS name" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "ca.key").exists()


# account and broker-files


def test_account_creates_then_reuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "fleet" / "accounts.json"
    login_path = tmp_path / "box-1.json"
    arguments = ["account", "--accounts", str(accounts), "--site", "club"]
    arguments += ["--box", "box-1", "--out", str(login_path)]

    created = fleet(capsys, *arguments)
    first = json.loads(login_path.read_text())
    reused = fleet(capsys, *arguments)
    second = json.loads(login_path.read_text())

    assert created.code == 0, created.err
    assert "Created account box-club.box-1" in created.out
    assert "broker-files" in created.out
    assert "[sync] credentials_file" in created.out
    assert first["username"] == "box-club.box-1"
    assert json.loads(accounts.read_text())["box-club.box-1"] == first["password"]
    assert stat.S_IMODE(login_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(accounts.stat().st_mode) == 0o600
    assert reused.code == 0, reused.err
    assert "already exists" in reused.out
    assert "broker-files" not in reused.out
    assert second == first
    assert_no_secrets(created, first["password"])
    assert_no_secrets(reused, first["password"])


def test_account_operator_and_collector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"

    operator = fleet(
        capsys,
        "account",
        "--accounts",
        str(accounts),
        "--operator",
        "ops",
        "--out",
        str(tmp_path / "ops.json"),
    )
    collector = fleet(
        capsys,
        "account",
        "--accounts",
        str(accounts),
        "--collector",
        "--out",
        str(tmp_path / "collector.json"),
    )

    assert operator.code == 0, operator.err
    assert json.loads((tmp_path / "ops.json").read_text())["username"] == "operator-ops"
    assert collector.code == 0, collector.err
    login = json.loads((tmp_path / "collector.json").read_text())
    assert login["username"] == "collector"


def test_account_site_needs_box(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    out = str(tmp_path / "login.json")

    without_site = fleet(
        capsys, "account", "--accounts", str(accounts), "--box", "box-1", "--out", out
    )
    site_for_operator = fleet(
        capsys,
        "account",
        "--accounts",
        str(accounts),
        "--site",
        "club",
        "--operator",
        "ops",
        "--out",
        out,
    )

    assert without_site.code == 2
    assert "--box needs --site" in without_site.err
    assert site_for_operator.code == 2
    assert "--site belongs to --box" in site_for_operator.err
    assert not accounts.exists()


def test_account_file_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text("{not json")

    outcome = fleet(
        capsys,
        "account",
        "--accounts",
        str(accounts),
        "--operator",
        "ops",
        "--out",
        str(tmp_path / "ops.json"),
    )

    assert outcome.code == 2
    assert str(accounts) in outcome.err
    assert "restore the file from a backup" in outcome.err
    assert "move the file away" not in outcome.err
    assert not (tmp_path / "ops.json").exists()


def test_broker_files_hash_and_acl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    fleet(
        capsys,
        "account",
        "--accounts",
        str(accounts),
        "--site",
        "old",
        "--box",
        "box-9",
        "--out",
        str(tmp_path / "old.json"),
    )

    outcome = fleet(
        capsys,
        "broker-files",
        "--accounts",
        str(accounts),
        "--boxes",
        "club/box-1, annex/box-2",
        "--operators",
        "ops",
        "--out",
        str(tmp_path / "broker"),
    )

    passwords = json.loads(accounts.read_text())
    password_file = (tmp_path / "broker" / "mosquitto.passwd").read_text()
    acl_file = (tmp_path / "broker" / "mosquitto.acl").read_text()
    hashes = dict(line.split(":", 1) for line in password_file.splitlines())
    assert outcome.code == 0, outcome.err
    assert set(hashes) == {
        "box-club.box-1",
        "box-annex.box-2",
        "operator-ops",
        "collector",
    }
    for username, hashed in hashes.items():
        assert hashed.startswith("$7$")
        assert verify_password(passwords[username], hashed)
        assert passwords[username] not in password_file
    assert "user box-club.box-1" in acl_file
    assert "topic write nightbox/club/box/box-1/events/#" in acl_file
    assert "user operator-ops" in acl_file
    assert "topic write nightbox/+/box/+/cmnd/+" in acl_file
    assert "box-old.box-9" not in acl_file
    assert "box-old.box-9" in outcome.err
    assert "cannot log in" in outcome.err
    assert "Created accounts" in outcome.out
    for name in ("mosquitto.passwd", "mosquitto.acl"):
        mode = (tmp_path / "broker" / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
    assert f"password_file {(tmp_path / 'broker' / 'mosquitto.passwd')}" in (
        outcome.out
    )
    assert_no_secrets(outcome, *passwords.values())


def test_broker_files_bad_box_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "fleet",
                "broker-files",
                "--accounts",
                str(tmp_path / "accounts.json"),
                "--boxes",
                "club-box-1",
                "--out",
                str(tmp_path / "broker"),
            ]
        )

    assert exited.value.code == 2
    assert "'club-box-1' is not site/box" in capsys.readouterr().err


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "mosquitto exited at start-up"
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"mosquitto did not listen on port {port}")


@dataclass(frozen=True, slots=True)
class RunningMosquitto:
    """A mosquitto process that reads the broker-files, and its port."""

    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def mosquitto_with_files(
    folder: Path, user: str | None = None
) -> Iterator[RunningMosquitto]:
    """Run mosquitto on a loopback port with the broker-files in ``folder``.

    Started as root, mosquitto drops to ``user``, by default this process's
    user.
    """
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    port = free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {folder / 'mosquitto.passwd'}",
        f"acl_file {folder / 'mosquitto.acl'}",
        "persistence false",
    ]
    if os.geteuid() == 0:
        lines.append(f"user {user or getpass.getuser()}")
    config = folder / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    with open(folder / "mosquitto.log", "wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stderr=log)
    try:
        wait_for_port(port, process)
        yield RunningMosquitto(port, process)
    finally:
        process.terminate()
        process.wait(TIMEOUT_S)


def plain_publish(port: int, login_path: Path, topic: str, payload: bytes) -> int:
    """Log in with ``login_path`` on plain loopback and publish one retained message.

    Returns the CONNACK reason code's value (0 is success).
    """
    login = json.loads(login_path.read_text())
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(login["username"], login["password"])
    connack: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, code, _p: connack.put(code.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        code = connack.get(timeout=TIMEOUT_S)
        if code == 0:
            info = client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(TIMEOUT_S)
        return code
    finally:
        client.disconnect()
        client.loop_stop()


def test_broker_files_run_mosquitto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    for account_options, login in (
        (["--site", "club", "--box", "box-1"], "box.json"),
        (["--site", "club", "--box", "box-7"], "unlisted.json"),
        (["--operator", "ops"], "ops.json"),
    ):
        outcome = fleet(
            capsys,
            "account",
            "--accounts",
            str(accounts),
            *account_options,
            "--out",
            str(tmp_path / login),
        )
        assert outcome.code == 0, outcome.err
    files = fleet(
        capsys,
        "broker-files",
        "--accounts",
        str(accounts),
        "--boxes",
        "club/box-1",
        "--operators",
        "ops",
        "--out",
        str(tmp_path / "broker"),
    )
    assert files.code == 0, files.err

    with mosquitto_with_files(tmp_path / "broker") as mosquitto:
        port = mosquitto.port
        announced = plain_publish(
            port,
            tmp_path / "box.json",
            "nightbox/club/box/box-1/availability",
            b"online",
        )
        unlisted = plain_publish(
            port,
            tmp_path / "unlisted.json",
            "nightbox/club/box/box-7/availability",
            b"online",
        )
        listed = fleet(
            capsys,
            "list",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--credentials",
            str(tmp_path / "ops.json"),
            "--json",
            "--wait",
            "1",
        )

    assert announced == 0
    assert unlisted != 0
    assert listed.code == 0, listed.err
    rows = [json.loads(line) for line in listed.out.splitlines()]
    assert [(row["site"], row["box"]) for row in rows] == [("club", "box-1")]
    assert rows[0]["availability"] == "online"


def make_account(
    capsys: pytest.CaptureFixture[str], accounts: Path, login: Path, *options: str
) -> None:
    outcome = fleet(
        capsys, "account", "--accounts", str(accounts), *options, "--out", str(login)
    )
    assert outcome.code == 0, outcome.err


def write_broker_files(
    capsys: pytest.CaptureFixture[str], accounts: Path, boxes: str, folder: Path
) -> Outcome:
    return fleet(
        capsys,
        "broker-files",
        "--accounts",
        str(accounts),
        "--boxes",
        boxes,
        "--operators",
        "ops",
        "--out",
        str(folder),
    )


def test_broker_files_keep_owner_and_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    make_account(capsys, accounts, tmp_path / "ops.json", "--operator", "ops")
    folder = tmp_path / "broker"
    assert write_broker_files(capsys, accounts, "club/box-1", folder).code == 0
    # root can give the files to another user, as an operator gives them to
    # the user mosquitto runs as.
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    for name in ("mosquitto.passwd", "mosquitto.acl"):
        os.chown(folder / name, *owner)
        (folder / name).chmod(0o640)

    outcome = write_broker_files(capsys, accounts, "club/box-1,club/box-2", folder)

    assert outcome.code == 0, outcome.err
    for name in ("mosquitto.passwd", "mosquitto.acl"):
        status = (folder / name).stat()
        assert stat.S_IMODE(status.st_mode) == 0o640
        assert (status.st_uid, status.st_gid) == owner
        assert f"{folder / name} (owner, group and mode kept)" in outcome.out
    assert "box-club.box-2" in (folder / "mosquitto.acl").read_text()
    assert "chown" not in outcome.out
    assert sorted(path.name for path in folder.iterdir()) == [
        "mosquitto.acl",
        "mosquitto.passwd",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops users only as root")
def test_broker_files_reload_as_mosquitto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    make_account(capsys, accounts, tmp_path / "ops.json", "--operator", "ops")
    make_account(
        capsys, accounts, tmp_path / "box-1.json", "--site", "club", "--box", "box-1"
    )
    # pytest's tmp_path is private to root, so the user mosquitto could not
    # reach files under it.
    parent = Path(tempfile.mkdtemp(prefix="nightbox-broker-files-"))
    parent.chmod(0o755)
    folder = parent / "broker"
    try:
        first = write_broker_files(capsys, accounts, "club/box-1", folder)
        assert first.code == 0, first.err
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        chown = [
            line.strip()
            for line in first.out.splitlines()
            if line.strip().startswith("chown ")
        ]
        assert chown == [
            f"chown mosquitto: {folder} {folder / 'mosquitto.passwd'} "
            f"{folder / 'mosquitto.acl'}"
        ]
        subprocess.run(shlex.split(chown[0]), check=True)

        with mosquitto_with_files(folder, user="mosquitto") as mosquitto:
            first_box = plain_publish(
                mosquitto.port,
                tmp_path / "box-1.json",
                "nightbox/club/box/box-1/availability",
                b"online",
            )
            make_account(
                capsys,
                accounts,
                tmp_path / "box-2.json",
                "--site",
                "club",
                "--box",
                "box-2",
            )
            second = write_broker_files(
                capsys, accounts, "club/box-1,club/box-2", folder
            )
            assert second.code == 0, second.err
            owners = {
                (folder / name).stat().st_uid
                for name in ("mosquitto.passwd", "mosquitto.acl")
            }
            mosquitto.process.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            second_box = plain_publish(
                mosquitto.port,
                tmp_path / "box-2.json",
                "nightbox/club/box/box-2/availability",
                b"online",
            )
    finally:
        shutil.rmtree(parent)

    assert first_box == 0
    assert second_box == 0
    assert "chown" not in second.out
    assert owners == {pwd.getpwnam("mosquitto").pw_uid}


def test_broker_files_need_accounts_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "missing" / "accounts.json"

    outcome = write_broker_files(capsys, accounts, "club/box-1", tmp_path / "broker")

    assert outcome.code == 2
    assert f"accounts file {accounts} not found" in outcome.err
    assert "nightbox fleet account" in outcome.err
    assert not accounts.parent.exists()
    assert not (tmp_path / "broker").exists()


def test_broker_files_accounts_readable_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    make_account(capsys, accounts, tmp_path / "ops.json", "--operator", "ops")
    accounts.chmod(0o644)

    outcome = write_broker_files(capsys, accounts, "club/box-1", tmp_path / "broker")

    assert outcome.code == 0, outcome.err
    assert f"accounts file {accounts}" in outcome.err
    assert f"chmod 600 {accounts}" in outcome.err


def test_broker_files_accounts_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text("{")
    accounts.chmod(0o600)

    outcome = write_broker_files(capsys, accounts, "club/box-1", tmp_path / "broker")

    assert outcome.code == 2
    assert f"broker credentials {accounts}" in outcome.err
    assert "restore the file from a backup or fix its JSON" in outcome.err
    assert "move the file away" not in outcome.err
    assert accounts.read_text() == "{"


# list


async def test_list_table_and_json(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box_1, BoxPeer(upstream, "annex", "box-2") as box_2:
        box_1.announce()
        box_1.publish("tele/state", telemetry_payload(TELEMETRY))
        box_1.publish("tele/sync", telemetry_payload(SYNC_STATE))
        box_2.announce("offline")

        table = await fleet_async(capsys, "list", *operator_options(upstream))
        rows = await fleet_async(capsys, "list", *operator_options(upstream), "--json")
        club = await fleet_async(
            capsys, "list", *operator_options(upstream), "--json", "--site", "club"
        )

    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == [
        "SITE",
        "BOX",
        "STATE",
        "LAST",
        "TELEMETRY",
        "GUESTS",
        "BACKLOG",
        "READERS",
    ]
    assert lines[1].split()[:3] == ["annex", "box-2", "offline"]
    assert lines[1].split()[3:] == ["-", "-", "-", "-"]
    assert lines[2].split()[:3] == ["club", "box-1", "online"]
    assert lines[2].split()[4:] == ["42", "12", "2/3"]
    assert rows.code == 0, rows.err
    records = [json.loads(line) for line in rows.out.splitlines()]
    assert [(record["site"], record["box"]) for record in records] == [
        ("annex", "box-2"),
        ("club", "box-1"),
    ]
    assert records[1]["availability"] == "online"
    assert records[1]["guests_in"] == 42
    assert records[1]["sync_backlog"] == 12
    assert records[1]["readers_online"] == 2
    assert records[1]["readers"] == 3
    assert isinstance(records[1]["telemetry_at"], float)
    assert records[0]["availability"] == "offline"
    assert records[0]["telemetry_at"] is None
    assert club.code == 0, club.err
    assert [json.loads(line)["box"] for line in club.out.splitlines()] == ["box-1"]
    assert_no_secrets(table, operator_password(upstream))


def payload_at(data: dict[str, Any], ts: float) -> bytes:
    """Return a telemetry payload of box-1 with the envelope time ``ts``."""
    return orjson.dumps(
        {"v": 1, "id": f"m-{ts}", "ts": ts, "src": "box/box-1", "data": data}
    )


@pytest.mark.parametrize(
    ("state_ts", "sync_ts", "expected"),
    [(100.0, 105.0, 3), (105.0, 100.0, 12)],
)
async def test_list_backlog_from_newer(
    upstream: Upstream,
    capsys: pytest.CaptureFixture[str],
    state_ts: float,
    sync_ts: float,
    expected: int,
) -> None:
    now = time.time()
    with BoxPeer(upstream) as box:
        box.announce()
        box.publish("tele/state", payload_at(TELEMETRY, now - 200 + state_ts))
        box.publish(
            "tele/sync", payload_at({**SYNC_STATE, "backlog": 3}, now - 200 + sync_ts)
        )

        outcome = await fleet_async(
            capsys, "list", *operator_options(upstream), "--json"
        )

    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)["sync_backlog"] == expected


async def test_list_no_boxes(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await fleet_async(
        capsys, "list", *operator_options(upstream), "--wait", "0.5"
    )

    assert outcome.code == 1
    assert outcome.out == ""
    assert "no boxes seen" in outcome.err
    assert upstream.url in outcome.err
    assert "nightbox/+/box/+/#" in outcome.err


async def test_list_skips_unreadable_telemetry(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce()
        box.publish("tele/state", b"not json")

        outcome = await fleet_async(capsys, "list", *operator_options(upstream))

    assert outcome.code == 0, outcome.err
    assert "nightbox/club/box/box-1/tele/state" in outcome.err
    assert "not UTF-8 JSON" in outcome.err
    assert outcome.out.splitlines()[1].split()[:4] == ["club", "box-1", "online", "-"]


async def test_list_box_account_warns(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials = upstream.box_credentials()
    with BoxPeer(upstream) as box:
        box.announce()
        outcome = await fleet_async(
            capsys,
            "list",
            "--broker",
            upstream.url,
            "--ca",
            str(upstream.ca.ca_certificate),
            "--credentials",
            str(credentials),
            "--wait",
            "0.5",
        )
        operator = await fleet_async(capsys, "list", *operator_options(upstream))

    assert outcome.code == 1
    assert "'box-club.box-1', which is not an operator account" in outcome.err
    assert "may deliver few or none of the boxes' topics" in outcome.err
    assert "or the account may not read these topics" in outcome.err
    assert operator.code == 0, operator.err
    assert "not an operator account" not in operator.err


# Telemetry with wrong types and with terminal control sequences: a title
# change (OSC), a screen clear (CSI), a C1 CSI, DEL and a bidi override.
HOSTILE_STATE = {
    "guests_in": "\u001b[2J",
    "readers_online": 2,
    "readers": "\u009b31m",
    "currency": "\u202eRUE",
    "version": "1\u007f",
}
HOSTILE_SYNC = {"backlog": "\u001b]0;pwned\u0007", "connected": "\u001b[2J"}


def assert_printable(text: str) -> None:
    for line in text.splitlines():
        assert line.isprintable(), f"non-printable characters in {line!r}"


async def test_list_escapes_hostile_telemetry(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce()
        box.publish("tele/state", telemetry_payload(HOSTILE_STATE))
        box.publish("tele/sync", telemetry_payload(HOSTILE_SYNC))

        table = await fleet_async(capsys, "list", *operator_options(upstream))
        rows = await fleet_async(capsys, "list", *operator_options(upstream), "--json")

    assert table.code == 0, table.err
    assert_printable(table.out)
    assert_printable(table.err)
    assert table.out.splitlines()[1].split()[4:] == ["invalid", "invalid", "2/invalid"]
    assert rows.code == 0, rows.err
    assert rows.out.isascii()
    record = json.loads(rows.out)
    assert record["guests_in"] is None
    assert record["sync_backlog"] is None
    assert record["readers_online"] == 2
    assert record["readers"] is None
    assert record["invalid"] == ["guests_in", "readers", "sync_backlog"]


async def test_tail_escapes_hostile_telemetry(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce()
        box.publish("tele/state", telemetry_payload(HOSTILE_STATE))
        box.publish("tele/sync", telemetry_payload(HOSTILE_SYNC))
        tail_options = [*operator_options(upstream), "--box", "box-1", "--count", "3"]

        lines = await fleet_async(capsys, "tail", *tail_options)
        records = await fleet_async(capsys, "tail", *tail_options, "--json")

    assert lines.code == 0, lines.err
    assert_printable(lines.out)
    by_kind = {line.split()[2]: line for line in lines.out.splitlines()}
    assert "guests_in=invalid" in by_kind["state"]
    assert "readers_online=2 readers=invalid" in by_kind["state"]
    assert "currency=\\u202eRUE" in by_kind["state"]
    assert "version=1\\x7f" in by_kind["state"]
    assert "connected=invalid backlog=invalid" in by_kind["sync"]
    assert records.code == 0, records.err
    assert records.out.isascii()
    data = {
        record["topic"]: record.get("data")
        for record in map(json.loads, records.out.splitlines())
    }
    assert data["tele/state"] == HOSTILE_STATE
    assert data["tele/sync"] == HOSTILE_SYNC


# connection and input errors


async def test_broker_unreachable(
    tmp_path: Path, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"mqtts://127.0.0.1:{free_port()}"
    options = operator_options(upstream)
    options[1] = url

    outcome = await fleet_async(capsys, "list", *options)

    assert outcome.code == 2
    assert f"cannot use broker {url}" in outcome.err
    assert "connection was refused" in outcome.err
    assert_no_secrets(outcome, operator_password(upstream))


async def test_broker_unknown_ca(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await fleet_async(
        capsys,
        "list",
        "--broker",
        upstream.url,
        "--credentials",
        str(upstream.operator_credentials()),
    )

    assert outcome.code == 2
    assert f"cannot use broker {upstream.url}" in outcome.err
    assert "TLS certificate was rejected" in outcome.err
    assert "pass --ca" in outcome.err


async def test_broker_rejects_login(
    tmp_path: Path, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"username": "operator-ops", "password": "wrong-pw"}))
    wrong.chmod(0o600)
    options = operator_options(upstream)
    options[5] = str(wrong)

    outcome = await fleet_async(capsys, "list", *options)

    assert outcome.code == 2
    assert "rejected the login of 'operator-ops'" in outcome.err
    assert "Not authorized" in outcome.err
    assert_no_secrets(outcome, "wrong-pw")


async def test_plain_mqtt_to_tls_port(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = upstream.url.replace("mqtts://", "mqtt://")

    outcome = await fleet_async(
        capsys,
        "list",
        "--broker",
        plain,
        "--credentials",
        str(upstream.operator_credentials()),
    )

    assert outcome.code == 2
    assert f"cannot use broker {plain}" in outcome.err
    assert f"use mqtts://127.0.0.1:{upstream.broker.port}" in outcome.err


async def test_ca_file_missing(
    tmp_path: Path, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    options = operator_options(upstream)
    options[3] = str(tmp_path / "missing-ca.pem")

    outcome = await fleet_async(capsys, "list", *options)

    assert outcome.code == 2
    assert f"CA file {tmp_path / 'missing-ca.pem'} not found" in outcome.err
    assert "CA certificate (PEM)" in outcome.err


async def test_environment_ca_and_empty_option(
    upstream: Upstream,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NIGHTBOX_FLEET_CA", str(upstream.ca.ca_certificate))
    login = [
        "--broker",
        upstream.url,
        "--credentials",
        str(upstream.operator_credentials()),
        "--wait",
        "0.5",
    ]

    from_environment = await fleet_async(capsys, "list", *login)
    cleared = await fleet_async(capsys, "list", *login, "--ca", "")

    # The broker has no box yet, so a working login exits 1.
    assert from_environment.code == 1, from_environment.err
    assert "no boxes seen" in from_environment.err
    # Without the test CA, the system's CAs reject the broker's certificate.
    assert cleared.code == 2
    assert "the TLS certificate was rejected" in cleared.err


def test_plain_mqtt_only_on_loopback() -> None:
    # Checked before any connection is made.
    for text in ("mqtt://127.0.0.1:1883", "mqtt://localhost:1883", "mqtt://[::1]"):
        check_transport(parse_broker_url(text), None)
    with pytest.raises(FleetError, match="not encrypted and not on this machine"):
        check_transport(parse_broker_url("mqtt://192.0.2.10:1883"), None)
    with pytest.raises(FleetError, match=r"--ca ca\.pem is given"):
        check_transport(parse_broker_url("mqtt://127.0.0.1"), Path("ca.pem"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read credentials file"),
        ("{not json", "is not valid JSON"),
        ('["operator-ops"]', "is not a JSON object"),
        ('{"username": "operator-ops", "password": 7}', "non-empty string 'password'"),
        ('{"password": "secret-value"}', "non-empty string 'username'"),
    ],
)
def test_credentials_file_invalid(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    expected: str,
) -> None:
    path = tmp_path / "login.json"
    if content is not None:
        path.write_text(content)

    outcome = fleet(
        capsys, "list", "--broker", "mqtt://127.0.0.1:1", "--credentials", str(path)
    )

    assert outcome.code == 2
    assert str(path) in outcome.err
    assert expected in outcome.err
    assert '{"username": ..., "password": ...}' in outcome.err
    assert_no_secrets(outcome, "secret-value")


def test_connection_options_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_broker = fleet(capsys, "list")
    no_credentials = fleet(capsys, "list", "--broker", "mqtt://127.0.0.1:1")

    assert no_broker.code == 2
    assert "no broker given" in no_broker.err
    assert "NIGHTBOX_FLEET_BROKER" in no_broker.err
    assert no_credentials.code == 2
    assert "no credentials given" in no_credentials.err
    assert "--credentials FILE" in no_credentials.err


async def test_credentials_readable_warns(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    options = operator_options(upstream)
    login = Path(options[5])
    await asyncio.to_thread(login.chmod, 0o644)

    outcome = await fleet_async(capsys, "list", *options, "--wait", "0.5")

    assert outcome.code == 1
    assert f"credentials file {login} is accessible to other users" in outcome.err
    assert f"chmod 600 {login}" in outcome.err


def write_ec_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_send_key_file_invalid(
    tmp_path: Path, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    ec_key = tmp_path / "ec.key"
    write_ec_key(ec_key)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases = {
        tmp_path / "missing.key": "cannot read key file",
        operator_key.public_path: "is a public key",
        garbage: "is not a PEM private key",
        ec_key: "is not an Ed25519 key",
        encrypted: "is encrypted",
    }

    for path, expected in cases.items():
        outcome = fleet(
            capsys,
            "send",
            *offline_send_options(path),
            "status",
        )

        assert outcome.code == 2, path
        assert f"key file {path}" in outcome.err
        assert expected in outcome.err
        assert "operator.key that 'nightbox fleet keygen' wrote" in outcome.err
        assert_no_secrets(outcome)


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("count", "is not key=value"),
        ("=3", "is not key=value"),
        ("box=box-2", "the box comes from --box"),
    ],
)
def test_send_argument_invalid(
    operator_key: OperatorKey,
    capsys: pytest.CaptureFixture[str],
    argument: str,
    expected: str,
) -> None:
    outcome = fleet(
        capsys,
        "send",
        *offline_send_options(operator_key.private_path),
        "status",
        argument,
    )

    assert outcome.code == 2
    assert repr(argument) in outcome.err
    assert expected in outcome.err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123456789012345678901234567890", "signed 64-bit"),
        ('"\\ud800"', "value"),
        ("1e400", "is not a finite number"),
        ("{not json", "looks like JSON but is invalid"),
    ],
)
def test_send_value_unsignable(
    operator_key: OperatorKey,
    capsys: pytest.CaptureFixture[str],
    value: str,
    expected: str,
) -> None:
    # Refused before any connection is made, so no broker listens on port 1.
    outcome = fleet(
        capsys,
        "send",
        *offline_send_options(operator_key.private_path),
        "config-set",
        "key=wallet.max_charge",
        f"value={value}",
    )

    assert outcome.code == 2
    assert expected in outcome.err
    assert "Traceback" not in outcome.err


def test_send_command_too_large(
    operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked before any connection is made, so no broker listens on port 1.
    outcome = fleet(
        capsys,
        "send",
        *offline_send_options(operator_key.private_path),
        "config-set",
        "key=site.name",
        f"value={'x' * 70_000}",
    )

    assert outcome.code == 2
    assert "the signed command is" in outcome.err
    assert "above the box's limit of 65536 bytes" in outcome.err
    assert "split the body" in outcome.err


# send


def send_options(upstream: Upstream, key: OperatorKey, box: str = "box-1") -> list[str]:
    options = operator_options(upstream)
    options += ["--site", "club", "--box", box, "--key", str(key.private_path)]
    return options


async def test_send_ok_prints_result(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream, trusted_keys=operator_key.trusted) as box:
        box.announce()

        outcome = await fleet_async(
            capsys,
            "send",
            *send_options(upstream, operator_key),
            "config-set",
            "key=club.name",
            "count=3",
            "flag=true",
            'words=["a","b"]',
            'quoted="7"',
            "text=hello world",
            "--json",
        )
        topic, document = box.next_document()

    assert outcome.code == 0, outcome.err
    result = json.loads(outcome.out)
    assert result["ok"] is True
    assert result["site"] == "club"
    assert result["box"] == "box-1"
    assert result["nonce"] == document["nonce"]
    assert topic == "nightbox/club/box/box-1/cmnd/config-set"
    assert document["kind"] == "command"
    assert document["type"] == "config-set"
    assert document["key"] == key_id(operator_key.public_key)
    assert document["expires_at"] - document["issued_at"] == 300
    assert result["result"]["body"] == {
        "key": "club.name",
        "count": 3,
        "flag": True,
        "words": ["a", "b"],
        "quoted": "7",
        "text": "hello world",
        "box": "box-1",
    }
    assert_no_secrets(outcome, operator_password(upstream))


async def test_send_human_output(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream, trusted_keys=operator_key.trusted) as box:
        box.announce()

        outcome = await fleet_async(
            capsys, "send", *send_options(upstream, operator_key), "status"
        )

    assert outcome.code == 0, outcome.err
    first, *rest = outcome.out.splitlines()
    assert first == "club/box-1: command status ok"
    assert json.loads("\n".join(rest))["body"] == {"box": "box-1"}


async def test_send_rejected_exits_1(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with BoxPeer(upstream, trusted_keys={key_id(other): other}) as box:
        box.announce()

        outcome = await fleet_async(
            capsys, "send", *send_options(upstream, operator_key), "status"
        )

    assert outcome.code == 1
    assert outcome.out == ""
    assert "club/box-1 rejected command status: unknown-key:" in outcome.err
    assert "sign with a fleet key the box trusts" in outcome.err


async def test_send_no_result_exits_3(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce()

        outcome = await fleet_async(
            capsys,
            "send",
            *send_options(upstream, operator_key),
            "status",
            "--timeout",
            "0.5",
        )
        _topic, document = box.next_document()

    assert outcome.code == 3
    assert "no result from club/box-1 within 0.5 s" in outcome.err
    assert document["nonce"] in outcome.err
    assert "nightbox fleet tail --site club --box box-1" in outcome.err


async def test_send_unknown_box(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    # The box's own account listens, but the box never announced itself.
    with BoxPeer(upstream) as box:
        outcome = await fleet_async(
            capsys, "send", *send_options(upstream, operator_key), "status"
        )
        with pytest.raises(queue.Empty):
            box.next_document(timeout_s=0.5)

    assert outcome.code == 2
    assert "box 'box-1' of site 'club' has never announced itself" in outcome.err
    assert "nothing was sent" in outcome.err
    assert "nightbox fleet list --site club" in outcome.err


async def test_send_box_account_warns(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    options = send_options(upstream, operator_key)
    credentials = options.index("--credentials") + 1
    options[credentials] = str(upstream.box_credentials())
    with BoxPeer(upstream) as box:
        box.announce()
        outcome = await fleet_async(capsys, "send", *options, "status")

    assert outcome.code == 2
    assert "'box-club.box-1', which is not an operator account" in outcome.err
    assert "has never announced itself" in outcome.err
    assert "or the account may not read these topics" in outcome.err


async def test_send_offline_needs_queue(
    upstream: Upstream, operator_key: OperatorKey, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce("offline")

        without_queue = await fleet_async(
            capsys, "send", *send_options(upstream, operator_key), "status"
        )
        with pytest.raises(queue.Empty):
            box.next_document(timeout_s=0.5)
        queued = await fleet_async(
            capsys,
            "send",
            *send_options(upstream, operator_key),
            "status",
            "--queue",
            "--timeout",
            "0.5",
        )
        topic, _document = box.next_document()

    assert without_queue.code == 2
    assert "box club/box-1 is offline" in without_queue.err
    assert "pass --queue" in without_queue.err
    assert queued.code == 3
    assert "is offline; the command is sent" in queued.err
    assert topic == "nightbox/club/box/box-1/cmnd/status"


# bundle


async def test_bundle_to_box(
    tmp_path: Path,
    upstream: Upstream,
    operator_key: OperatorKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {"members": [{"band": "ib-1-7", "tier": "gold"}]}
    body_path = tmp_path / "members.json"
    body_path.write_text(json.dumps(body))
    with BoxPeer(upstream, trusted_keys=operator_key.trusted) as box:
        box.announce()

        outcome = await fleet_async(
            capsys,
            "bundle",
            *send_options(upstream, operator_key),
            "members",
            "--version",
            "4",
            "--file",
            str(body_path),
            "--json",
        )
        topic, document = box.next_document()

    assert outcome.code == 0, outcome.err
    assert topic == "nightbox/club/box/box-1/bundle/members"
    assert document["kind"] == "bundle"
    assert document["version"] == 4
    assert document["expires_at"] - document["issued_at"] == 24 * 3600
    result = json.loads(outcome.out)
    assert result["ok"] is True
    assert result["kind"] == "bundle"
    assert result["result"] == {"body": body, "version": 4}


async def test_bundle_site_wide_from_stdin(
    upstream: Upstream,
    operator_key: OperatorKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {"revocations": [{"token_id": "a" * 32, "reason": "lost phone"}]}
    stdin = io.TextIOWrapper(io.BytesIO(json.dumps(body).encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    options = operator_options(upstream)
    options += ["--site", "club", "--key", str(operator_key.private_path)]
    with BoxPeer(upstream, trusted_keys=operator_key.trusted) as box:
        box.announce()

        outcome = await fleet_async(
            capsys,
            "bundle",
            *options,
            "revocations",
            "--version",
            "1",
            "--file",
            "-",
        )
        topic, document = box.next_document()

    assert outcome.code == 0, outcome.err
    assert topic == "nightbox/club/bundle/revocations"
    assert document["body"] == body
    assert outcome.out.splitlines()[0] == "club/box-1: bundle revocations ok"


async def test_bundle_site_without_boxes(
    tmp_path: Path,
    upstream: Upstream,
    operator_key: OperatorKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body_path = tmp_path / "body.json"
    body_path.write_text("{}")
    options = operator_options(upstream)
    options += ["--site", "nowhere", "--key", str(operator_key.private_path)]

    outcome = await fleet_async(
        capsys, "bundle", *options, "config", "--version", "1", "--file", str(body_path)
    )

    assert outcome.code == 2
    assert "no box of site 'nowhere' has announced itself" in outcome.err
    assert "nothing was sent" in outcome.err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "is a JSON list; it must be one JSON object"),
        ("{oops", "is not valid JSON"),
    ],
)
def test_bundle_body_invalid(
    tmp_path: Path,
    operator_key: OperatorKey,
    capsys: pytest.CaptureFixture[str],
    content: str,
    expected: str,
) -> None:
    body_path = tmp_path / "body.json"
    body_path.write_text(content)

    outcome = fleet(
        capsys,
        "bundle",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--site",
        "club",
        "--key",
        str(operator_key.private_path),
        "members",
        "--version",
        "1",
        "--file",
        str(body_path),
    )

    assert outcome.code == 2
    assert f"bundle body {body_path}" in outcome.err
    assert expected in outcome.err


# tail


async def test_tail_prints_retained_then_live(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce()
        box.publish("tele/state", telemetry_payload(TELEMETRY))
        tail = asyncio.ensure_future(
            fleet_async(
                capsys,
                "tail",
                *operator_options(upstream),
                "--box",
                "box-1",
                "--count",
                "3",
                "--json",
            )
        )
        # Publish live messages until tail prints its third line, because the
        # first ones may reach the broker before tail has subscribed.
        while not tail.done():
            await asyncio.to_thread(
                box.publish, "tele/sync", telemetry_payload(SYNC_STATE), retain=False
            )
            await asyncio.sleep(0.2)
        outcome = await tail

    assert outcome.code == 0, outcome.err
    records = [json.loads(line) for line in outcome.out.splitlines()]
    assert len(records) == 3
    by_topic = {record["topic"]: record for record in records}
    assert by_topic["availability"]["availability"] == "online"
    assert by_topic["availability"]["retained"] is True
    assert by_topic["tele/state"]["data"] == TELEMETRY
    assert by_topic["tele/state"]["retained"] is True
    assert by_topic["tele/sync"]["data"] == SYNC_STATE
    assert by_topic["tele/sync"]["retained"] is False
    assert {(record["site"], record["box"]) for record in records} == {
        ("club", "box-1")
    }


async def test_tail_human_lines(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    with BoxPeer(upstream) as box:
        box.announce()
        box.publish("tele/state", telemetry_payload(TELEMETRY))
        box.publish("tele/sync", b"{}")

        outcome = await fleet_async(
            capsys,
            "tail",
            *operator_options(upstream),
            "--site",
            "club",
            "--count",
            "3",
        )

    assert outcome.code == 0, outcome.err
    lines = sorted(outcome.out.splitlines(), key=lambda line: line.split()[2])
    assert lines[0].split()[1:] == ["club/box-1", "online", "(retained)"]
    assert lines[1].split()[1:3] == ["club/box-1", "state"]
    assert "guests_in=42" in lines[1]
    assert "readers_online=2 readers=3" in lines[1]
    assert "currency=EUR" in lines[1]
    assert lines[2].split()[1:3] == ["club/box-1", "tele/sync"]
    assert "unreadable" in lines[2]


async def test_tail_prints_results(
    upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    rejected = {
        "kind": "command",
        "type": "status",
        "nonce": "n-1",
        "ok": False,
        "reason": "unknown-key\u001b[2J",
        "message": "key 'x' is not one this box was provisioned with",
    }
    with BoxPeer(upstream) as box:
        box.announce()
        tail = asyncio.ensure_future(
            fleet_async(
                capsys,
                "tail",
                *operator_options(upstream),
                "--box",
                "box-1",
                "--count",
                "2",
            )
        )
        # Results are not retained, so publish until tail has printed one.
        # Stopping the broker at teardown ends a tail that never does.
        deadline = time.monotonic() + TIMEOUT_S
        while not tail.done():
            assert time.monotonic() < deadline, "tail printed no result"
            await asyncio.to_thread(
                box.publish, "stat/result", telemetry_payload(rejected), retain=False
            )
            await asyncio.sleep(0.2)
        outcome = await tail

    assert outcome.code == 0, outcome.err
    assert_printable(outcome.out)
    lines = outcome.out.splitlines()
    assert lines[0].split()[1:] == ["club/box-1", "online", "(retained)"]
    assert lines[1].split()[1:] == [
        "club/box-1",
        "result",
        "kind=command",
        "type=status",
        "nonce=n-1",
        "ok=false",
        "reason=unknown-key\\x1b[2J",
    ]


async def test_tail_subprocess_ctrl_c(upstream: Upstream) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("NIGHTBOX_FLEET_")
    }
    with BoxPeer(upstream) as box:
        box.announce()
        process = await asyncio.create_subprocess_exec(
            str(NIGHTBOX),
            "fleet",
            "tail",
            *operator_options(upstream),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert process.stdout is not None
            first = await asyncio.wait_for(process.stdout.readline(), TIMEOUT_S)
            process.send_signal(signal.SIGINT)
            _rest, errors = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert b"club/box-1 online (retained)" in first
    assert process.returncode == 0
    assert b"Traceback" not in errors
    assert operator_password(upstream).encode() not in errors


async def test_tail_broker_lost(upstream: Upstream) -> None:
    with BoxPeer(upstream) as box:
        box.announce()
        process = await asyncio.create_subprocess_exec(
            str(NIGHTBOX),
            "fleet",
            "tail",
            *operator_options(upstream),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            # The retained line shows that tail is connected and subscribed.
            first = await asyncio.wait_for(process.stdout.readline(), TIMEOUT_S)
            await upstream.broker.stop()
            _rest, errors = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert b"club/box-1 online (retained)" in first
    assert process.returncode == 2
    assert f"cannot use broker {upstream.url}".encode() in errors
    assert b"the connection was lost during the wait for messages" in errors
    assert b"Traceback" not in errors
