"""Signed remote-management commands on the box's own broker.

The operator account publishes signed documents on the box's command topics
and reads the results on ``stat/result``. Each rejection test checks that
the command had no effect: the drop keeps its state, no event is stored and
no nonce is recorded.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ClientFactory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from management_site import (
    BOX_ID,
    DROP_ID,
    DROP_QUANTITY,
    TIMEOUT_S,
    Operator,
    config_path_fixture,  # noqa: F401
    file_bytes,
    management_box,  # noqa: F401
    management_site_config,  # noqa: F401
    operator_fixture,  # noqa: F401
    operator_key_fixture,  # noqa: F401
    sign_command,
    site_toml,
    write_public_key,
)

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Incoming
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig, load_config
from appliance.errors import RequestError
from appliance.remote.commands import CommandError
from appliance.remote.config import FleetConfig
from appliance.runtime import Box
from appliance.signed_documents import key_id, sign_document
from provisioning import SiteCredentials

# The words of a config-set rejected for a key that only the file may change.
LOCAL_ONLY = "can be changed only in the configuration file on the box"


def drop_state(box: Box) -> str:
    row = box.store.query_one("SELECT state FROM drops WHERE id = ?", (DROP_ID,))
    assert row is not None
    return str(row[0])


def event_types(box: Box) -> list[str]:
    return [row[0] for row in box.store.query("SELECT type FROM outbox ORDER BY seq")]


def nonces(box: Box) -> int:
    row = box.store.query_one("SELECT COUNT(*) FROM signed_nonces")
    assert row is not None
    return int(row[0])


async def test_status_returns_box_status(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_command(operator_key, "status")

    result = await operator.send("status", document)

    assert result["ok"] is True
    assert result["kind"] == "command"
    assert result["type"] == "status"
    assert result["nonce"] == document["nonce"]
    assert result["result"]["kit_stock"] == {"kit-1": {"initial": 5, "remaining": 5}}
    assert result["result"]["drops"][DROP_ID]["quota"] == DROP_QUANTITY
    assert box.status()["remote"] == {"accepted": {"status": 1}, "rejected": {}}
    assert nonces(box) == 1


async def test_config_get_key(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_command(operator_key, "config-get", {"key": "readers.2.kit_stock"})

    result = await operator.send("config-get", document)

    assert result["ok"] is True
    assert result["result"] == {"key": "readers.2.kit_stock", "value": 5}


async def test_config_get_whole_document(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    result = await operator.send("config-get", sign_command(operator_key, "config-get"))

    document = result["result"]["value"]
    assert result["ok"] is True
    assert result["result"]["key"] is None
    assert document["site"]["id"] == "test"
    assert document["drops"][0]["id"] == DROP_ID
    # TOML date-times travel as ISO 8601 strings.
    assert isinstance(document["drops"][0]["starts_at"], str)


async def test_config_results_hide_identity_key(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    band = {"id": "eid-1", "eid_identity_key": secret}

    set_result = await operator.send(
        "config-set",
        sign_command(
            operator_key, "config-set", {"key": "bands.registered", "value": [band]}
        ),
    )
    whole = await operator.send("config-get", sign_command(operator_key, "config-get"))
    single = await operator.send(
        "config-get",
        sign_command(
            operator_key,
            "config-get",
            {"key": "bands.registered.0.eid_identity_key"},
        ),
    )
    rejected = await operator.send(
        "config-set",
        sign_command(
            operator_key,
            "config-set",
            {"key": "bands.registered.0.eid_identity_key", "value": "00"},
        ),
    )

    hidden = {"id": "eid-1", "eid_identity_key": "<hidden>"}
    assert set_result["ok"] is True
    assert set_result["result"]["value"] == [hidden]
    assert whole["result"]["value"]["bands"]["registered"] == [hidden]
    assert single["result"] == {
        "key": "bands.registered.0.eid_identity_key",
        "value": "<hidden>",
    }
    assert rejected["reason"] == "invalid-argument"
    assert "eid_identity_key is invalid" in rejected["message"]
    assert "'00'" not in rejected["message"]
    for result in (set_result, whole, single, rejected):
        assert secret not in orjson.dumps(result).decode()


async def test_config_get_missing_key(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_command(operator_key, "config-get", {"key": "kits.low_stock"})

    result = await operator.send("config-get", document)

    assert result["ok"] is False
    assert result["reason"] == "invalid-argument"
    assert "not set in the configuration file" in result["message"]


async def test_config_set_writes_file(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey, config_path: Path
) -> None:
    document = sign_command(
        operator_key, "config-set", {"key": "wallet.max_charge", "value": 1500}
    )

    result = await operator.send("config-set", document)

    assert result["ok"] is True
    assert result["result"] == {
        "key": "wallet.max_charge",
        "value": 1500,
        "restart_required": True,
    }
    assert load_config(config_path).commerce.wallet.max_charge == 1500
    assert config_path.with_name("site.toml.previous").exists()
    # The running box keeps its configuration until it restarts.
    assert box.config.commerce.wallet.max_charge == 20_000
    assert nonces(box) == 1


async def test_config_set_invalid_value_keeps_file(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey, config_path: Path
) -> None:
    before = file_bytes(config_path)
    document = sign_command(
        operator_key, "config-set", {"key": "checkout.threshold_dbm", "value": 5}
    )

    result = await operator.send("config-set", document)

    assert result["ok"] is False
    assert result["reason"] == "invalid-argument"
    assert "checkout.threshold_dbm = 5 is above the maximum" in result["message"]
    assert file_bytes(config_path) == before
    assert not config_path.with_name("site.toml.previous").exists()
    assert nonces(box) == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"key": "box.id", "value": "box-2"}, "cannot be changed remotely"),
        ({"key": "site.id", "value": "other"}, "cannot be changed remotely"),
        ({"key": "box.data_dir", "value": "../../tmp/evil"}, LOCAL_ONLY),
        ({"key": "fleet.operator_keys", "value": []}, LOCAL_ONLY),
        ({"key": "fleet", "value": None}, LOCAL_ONLY),
        ({"key": "sync", "value": None}, LOCAL_ONLY),
        ({"key": "sync.broker", "value": "mqtts://elsewhere.example"}, LOCAL_ONLY),
        ({"key": "broker.port", "value": 1883}, LOCAL_ONLY),
        ({"key": "wallet.max_charge"}, "needs argument 'value'"),
        (
            # What orjson makes of the JSON integer 123456789012345678901234567890.
            {"key": "wallet.max_charge", "value": 1.2345678901234568e29},
            "outside the signed 64-bit range",
        ),
        ({"key": "site.name", "value": "Club\x00"}, "control character U+0000"),
        ({"value": 3}, "needs argument 'key'"),
        ({"key": 7, "value": 3}, "dotted configuration key"),
        ({"key": "a", "value": 1, "force": True}, "has no argument 'force'"),
    ],
)
async def test_config_set_rejected(
    box: Box,
    operator: Operator,
    operator_key: Ed25519PrivateKey,
    config_path: Path,
    body: dict[str, Any],
    words: str,
) -> None:
    before = file_bytes(config_path)

    result = await operator.send(
        "config-set", sign_command(operator_key, "config-set", body)
    )

    assert result["ok"] is False
    assert result["reason"] == "invalid-argument"
    assert words in result["message"]
    assert file_bytes(config_path) == before


async def test_drop_start_and_stop(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    started = await operator.send(
        "drop-start", sign_command(operator_key, "drop-start", {"drop": DROP_ID})
    )
    state_after_start = drop_state(box)
    stopped = await operator.send(
        "drop-stop", sign_command(operator_key, "drop-stop", {"drop": DROP_ID})
    )

    assert started["result"] == {"drop": DROP_ID, "state": "live"}
    assert state_after_start == "live"
    assert stopped["result"] == {"drop": DROP_ID, "state": "stopped"}
    assert drop_state(box) == "stopped"
    by = f"key-{key_id(operator_key.public_key())}"
    events = box.store.query(
        "SELECT type, body FROM outbox WHERE type LIKE 'drop_%' ORDER BY seq"
    )
    assert [event_type for event_type, _body in events] == [
        "drop_started",
        "drop_stopped",
    ]
    assert orjson.loads(events[0][1]) == {"drop": DROP_ID, "by": by}


async def test_drop_start_unknown_drop(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    result = await operator.send(
        "drop-start", sign_command(operator_key, "drop-start", {"drop": "vinyl"})
    )

    assert result["ok"] is False
    assert result["reason"] == "invalid-argument"
    assert "'vinyl' is not a drop of this site" in result["message"]
    assert nonces(box) == 0


async def test_token_revoke_stops_token(
    box: Box,
    operator: Operator,
    operator_key: Ed25519PrivateKey,
    make_client: ClientFactory,
) -> None:
    issued = box.tokens.issue("bar-1", ["pos:charge"], 3600.0)
    token_id = issued.claims.token_id
    document = sign_command(
        operator_key, "token-revoke", {"token": token_id, "reason": "phone lost"}
    )

    result = await operator.send("token-revoke", document)
    again = await operator.send(
        "token-revoke",
        sign_command(operator_key, "token-revoke", {"token": token_id}),
    )
    async with make_client("terminal-bar-1", "terminal", "bar-1") as bar:
        with pytest.raises(RequestError) as caught:
            await bar.request(
                bar.topics.api("wallet", "balance"),
                {"band": "ib-1-7"},
                timeout_s=TIMEOUT_S,
                token=issued.token,
            )

    assert result["result"] == {"token": token_id, "revoked": True}
    assert again["result"] == {"token": token_id, "revoked": False}
    assert box.store.query("SELECT id, reason FROM revoked_tokens") == [
        (token_id, "phone lost")
    ]
    assert caught.value.code == "token-revoked"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"token": "f" * 32}, "was not issued by this box"),
        ({"token": "not-a-token"}, "32 lowercase hex digits"),
        ({"token": "f" * 32, "reason": ""}, "argument 'reason'"),
        ({}, "needs argument 'token'"),
    ],
)
async def test_token_revoke_rejected(
    box: Box,
    operator: Operator,
    operator_key: Ed25519PrivateKey,
    body: dict[str, Any],
    words: str,
) -> None:
    result = await operator.send(
        "token-revoke", sign_command(operator_key, "token-revoke", body)
    )

    assert result["ok"] is False
    assert result["reason"] == "invalid-argument"
    assert words in result["message"]
    assert box.store.query("SELECT COUNT(*) FROM revoked_tokens") == [(0,)]


@pytest.mark.parametrize(
    ("name", "part"), [("clip", "camera studio"), ("update", "updater")]
)
async def test_unregistered_command_unavailable(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey, name: str, part: str
) -> None:
    result = await operator.send(name, sign_command(operator_key, name))

    assert result["ok"] is False
    assert result["reason"] == "unavailable"
    assert f"this box runs no {part}" in result["message"]


async def test_registered_command_runs(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    received: list[dict[str, Any]] = []

    async def clip(arguments: dict[str, Any]) -> dict[str, Any]:
        received.append(arguments)
        if arguments.get("seconds") != 30:
            raise CommandError("invalid-argument", "argument 'seconds' must be 30")
        return {"clip": "clip-1"}

    box.management.register("clip", clip)
    accepted = await operator.send(
        "clip", sign_command(operator_key, "clip", {"seconds": 30})
    )
    rejected = await operator.send(
        "clip", sign_command(operator_key, "clip", {"seconds": 5})
    )

    assert accepted["result"] == {"clip": "clip-1"}
    assert received == [{"seconds": 30}, {"seconds": 5}]
    assert rejected["reason"] == "invalid-argument"
    assert rejected["message"] == "argument 'seconds' must be 30"


async def test_failed_command_names_nonce(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    async def clip(arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments.get("crash"):
            raise RuntimeError("a bug in the camera studio")
        raise CommandError("failed", "the camera is not connected")

    box.management.register("clip", clip)
    crashed_document = sign_command(operator_key, "clip", {"crash": True})
    failed_document = sign_command(operator_key, "clip")

    crashed = await operator.send("clip", crashed_document)
    failed = await operator.send("clip", failed_document)

    assert crashed["reason"] == "internal-error"
    assert crashed["nonce"] == crashed_document["nonce"]
    assert failed["reason"] == "failed"
    assert failed["nonce"] == failed_document["nonce"]


async def test_bundle_version_above_max(
    box: Box, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_document(
        operator_key,
        kind="bundle",
        document_type="members",
        site="test",
        body={"members": []},
        issued_at=time.time(),
        validity_s=300,
        version=2**63,
    )

    result = await box.management.handle_bundle("members", orjson.dumps(document))

    assert result["reason"] == "malformed"
    assert result["nonce"] == document["nonce"]
    assert box.status()["remote"]["rejected"] == {"malformed": 1}


def test_register_builtin_rejected(box: Box) -> None:
    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="built in"):
        box.management.register("restart", handler)


def _unsigned(key: Ed25519PrivateKey) -> dict[str, Any]:
    document = sign_command(key, "drop-start", {"drop": DROP_ID})
    del document["sig"]
    return document


def _tampered(key: Ed25519PrivateKey) -> dict[str, Any]:
    document = sign_command(key, "drop-start", {"drop": DROP_ID})
    document["body"]["note"] = "added after signing"
    return document


def _other_key(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(Ed25519PrivateKey.generate(), "drop-start", {"drop": DROP_ID})


def _expired(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(
        key,
        "drop-start",
        {"drop": DROP_ID},
        issued_at=time.time() - 7200,
        validity_s=600,
    )


def _not_yet_valid(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(
        key, "drop-start", {"drop": DROP_ID}, issued_at=time.time() + 3600
    )


def _other_box(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(key, "drop-start", {"drop": DROP_ID}, box="box-2")


def _other_site(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(key, "drop-start", {"drop": DROP_ID}, site="annex")


def _bundle(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_document(
        key,
        kind="bundle",
        document_type="drop-start",
        site="test",
        body={"drop": DROP_ID, "box": BOX_ID},
        issued_at=time.time(),
        validity_s=300,
        version=1,
    )


def _extra_argument(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(key, "drop-start", {"drop": DROP_ID, "force": True})


def _missing_argument(key: Ed25519PrivateKey) -> dict[str, Any]:
    return sign_command(key, "drop-start", {})


@pytest.mark.parametrize(
    ("make_document", "reason", "words"),
    [
        pytest.param(_unsigned, "malformed", "'sig'", id="unsigned"),
        pytest.param(_tampered, "bad-signature", "does not match", id="tampered"),
        pytest.param(_other_key, "unknown-key", "not one this box", id="other key"),
        pytest.param(_expired, "expired", "expired at", id="expired"),
        pytest.param(_not_yet_valid, "not-yet-valid", "valid from", id="future"),
        pytest.param(_other_box, "wrong-box", "'box-2'", id="other box"),
        pytest.param(_other_site, "wrong-site", "'annex'", id="other site"),
        pytest.param(_bundle, "wrong-kind", "bundle", id="bundle"),
        pytest.param(_extra_argument, "invalid-argument", "'force'", id="extra"),
        pytest.param(_missing_argument, "invalid-argument", "'drop'", id="missing"),
    ],
)
async def test_rejected_command_has_no_effect(
    box: Box,
    operator: Operator,
    operator_key: Ed25519PrivateKey,
    make_document: Any,
    reason: str,
    words: str,
) -> None:
    document = make_document(operator_key)

    result = await operator.send("drop-start", document)

    assert result["ok"] is False
    assert result["kind"] == "command"
    assert result["type"] == "drop-start"
    assert result["nonce"] == document["nonce"]
    assert result["reason"] == reason
    assert words in result["message"]
    assert document.get("sig", "no signature") not in result["message"]
    assert drop_state(box) == "scheduled"
    assert "drop_started" not in event_types(box)
    assert nonces(box) == 0
    assert box.status()["remote"] == {"accepted": {}, "rejected": {reason: 1}}


async def test_replayed_command_rejected(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    start = sign_command(operator_key, "drop-start", {"drop": DROP_ID})
    stop = sign_command(operator_key, "drop-stop", {"drop": DROP_ID})

    first = await operator.send("drop-start", start)
    await operator.send("drop-stop", stop)
    replayed = await operator.send("drop-start", start)

    assert first["ok"] is True
    assert replayed["ok"] is False
    assert replayed["reason"] == "replayed"
    assert drop_state(box) == "stopped"
    assert event_types(box).count("drop_started") == 1
    assert nonces(box) == 2


async def test_topic_name_must_match_type(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_command(operator_key, "drop-start", {"drop": DROP_ID})

    result = await operator.send("drop-stop", document)

    assert result["reason"] == "malformed"
    assert result["type"] == "drop-stop"
    assert "send it on cmnd/drop-start" in result["message"]
    assert drop_state(box) == "scheduled"
    assert nonces(box) == 0


async def test_unknown_command_rejected(
    box: Box, operator: Operator, operator_key: Ed25519PrivateKey
) -> None:
    result = await operator.send("reboot", sign_command(operator_key, "reboot"))

    assert result["ok"] is False
    assert result["reason"] == "unknown-command"
    assert "'reboot' is unknown" in result["message"]
    assert nonces(box) == 0


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1, 2]", b'{"v": 1}', b"\xff\xfe", b"x" * 70_000]
)
async def test_unreadable_command_rejected(
    box: Box, operator: Operator, payload: bytes
) -> None:
    result = await operator.send_raw("status", payload)

    assert result["ok"] is False
    assert result["reason"] == "malformed"
    assert result["nonce"] is None
    assert result["message"]


async def test_box_without_operator_keys_rejects(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    operator_key: Ed25519PrivateKey,
) -> None:
    config = site_config.__class__(
        **{
            name: getattr(site_config, name)
            for name in site_config.__slots__
            if name != "fleet"
        },
        fleet=FleetConfig(),
    )
    document = sign_command(operator_key, "status")

    async with Box(
        config, SystemClock(TimeSource.NTP), credentials, mosquitto.host, mosquitto.port
    ) as box:
        result = await box.management.handle_command("status", orjson.dumps(document))

    assert result["ok"] is False
    assert result["reason"] == "unknown-key"
    assert "[fleet] operator_keys is empty" in result["message"]
    assert result["nonce"] == document["nonce"]


async def test_handle_command_without_bus(
    box: Box, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_command(operator_key, "drop-start", {"drop": DROP_ID})

    result = await box.management.handle_command("drop-start", orjson.dumps(document))

    assert result["ok"] is True
    assert result["result"] == {"drop": DROP_ID, "state": "live"}
    assert drop_state(box) == "live"


async def test_restart_without_bus_waits_for_result(
    box: Box, operator_key: Ed25519PrivateKey
) -> None:
    document = sign_command(operator_key, "restart")

    result = await box.management.handle_command("restart", orjson.dumps(document))
    requested_at_once = box.management.restart_requested.is_set()
    # The sync service publishes this result upstream within the grace time.
    await asyncio.wait_for(box.management.restart_requested.wait(), TIMEOUT_S)

    assert result["ok"] is True
    assert result["result"] == {"restarting": True, "config_valid": True}
    assert requested_at_once is False
    assert nonces(box) == 1


async def test_restart_reports_invalid_file(
    box: Box, operator_key: Ed25519PrivateKey, config_path: Path
) -> None:
    secret = "0123456789abcdef0123456789abcd"
    with config_path.open("a", encoding="utf-8") as file:
        file.write(
            f'\n[[bands.registered]]\nid = "eid-1"\neid_identity_key = "{secret}"\n'
        )
    document = sign_command(operator_key, "restart")

    result = await box.management.handle_command("restart", orjson.dumps(document))

    assert result["ok"] is True
    assert result["result"]["restarting"] is True
    assert result["result"]["config_valid"] is False
    error = result["result"]["config_error"]
    assert "bands.registered[0].eid_identity_key is invalid" in error
    assert secret not in error
    assert nonces(box) == 1


async def test_handle_bundle_applies_and_counts(
    box: Box, operator_key: Ed25519PrivateKey
) -> None:
    def topups(version: int, amount: int) -> bytes:
        body = {
            "topups": [
                {"id": f"shop-{version}", "band": "ib-1-7", "amount": amount,
                 "currency": "EUR"}
            ]
        }  # fmt: skip
        document = sign_document(
            operator_key,
            kind="bundle",
            document_type="topups",
            site="test",
            body=body,
            issued_at=time.time(),
            validity_s=300,
            version=version,
        )
        return orjson.dumps(document)

    applied = await box.management.handle_bundle("topups", topups(1, 2000))
    invalid = await box.management.handle_bundle("topups", topups(2, -5))

    assert applied["ok"] is True
    assert applied["kind"] == "bundle"
    assert applied["result"]["credited"] == 1
    assert invalid["ok"] is False
    assert invalid["reason"] == "invalid"
    assert box.status()["remote"] == {
        "accepted": {"bundle/topups": 1},
        "rejected": {"invalid": 1},
    }


class BoxProcess:
    """``nightbox run`` in a subprocess, logging to a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "appliance",
                    "-v",
                    "run",
                    "--config",
                    str(config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def next_matching(
    queue: asyncio.Queue[Incoming], topic_end: str, payload: bytes | None = None
) -> Incoming:
    """Return the next message whose topic ends with ``topic_end``."""
    async with asyncio.timeout(TIMEOUT_S * 2):
        while True:
            incoming = await queue.get()
            if incoming.topic.endswith(topic_end) and payload in (
                None,
                incoming.payload,
            ):
                return incoming


async def test_restart_reloads_configuration(
    tmp_path: Path,
    site_config: SiteConfig,
    mosquitto: BrokerHandle,
    make_client: ClientFactory,
    operator_key: Ed25519PrivateKey,
) -> None:
    key_path = write_public_key(operator_key, tmp_path / "operator.pem")
    run_config = tmp_path / "run.toml"
    run_config.write_text(
        site_toml(site_config.data_dir, [key_path], broker=mosquitto),
        encoding="utf-8",
    )
    received: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        received.put_nowait(incoming)

    async def command(name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        document = sign_command(operator_key, name, body)
        await ops.publish(ops.topics.command(BOX_ID, name), orjson.dumps(document))
        incoming = await next_matching(received, "/stat/result")
        data: dict[str, Any] = orjson.loads(incoming.payload)["data"]
        return data

    box = BoxProcess(run_config, tmp_path / "box.log")
    try:
        async with make_client(
            "operator", "operator", "ops", announce=False, wait=False
        ) as ops:
            ops.subscribe(ops.topics.command_result(BOX_ID), on_message)
            ops.subscribe(ops.topics.availability("box", BOX_ID), on_message)
            await asyncio.wait_for(ops.connected.wait(), TIMEOUT_S)
            await next_matching(received, "/availability", b"online")

            before = await command("status")
            changed = await command(
                "config-set", {"key": "drops.0.quantity", "value": 30}
            )
            restarting = await command("restart")
            await next_matching(received, "/availability", b"offline")
            await next_matching(received, "/availability", b"online")
            after = await command("status")
        async with make_client("reader-kit-1", "reader", "kit-1") as kit_reader:
            reply = await kit_reader.request(
                kit_reader.topics.api("kits", "issue"),
                {
                    "station": "kit-1",
                    "band": "ib-1-7",
                    "idempotency_key": "after-restart-1",
                },
                timeout_s=TIMEOUT_S,
            )
        box.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(box.process.wait, TIMEOUT_S)
    except BaseException:
        print(box.log(), file=sys.stderr)
        raise
    finally:
        if box.process.poll() is None:
            box.process.kill()
            box.process.wait(TIMEOUT_S)

    assert before["result"]["drops"][DROP_ID]["quota"] == DROP_QUANTITY
    assert changed["result"]["restart_required"] is True
    assert restarting["ok"] is True
    assert restarting["result"] == {"restarting": True, "config_valid": True}
    assert after["ok"] is True
    assert after["result"]["drops"][DROP_ID]["quota"] == 30
    # The restarted box counts afresh, and a status counts after its result.
    assert after["result"]["remote"] == {"accepted": {}, "rejected": {}}
    assert reply["remaining"] == 4
    assert exit_code == 0
    assert "Restarting with the configuration in" in box.log()
