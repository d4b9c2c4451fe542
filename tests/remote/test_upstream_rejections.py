"""Commands and bundles that arrive through the fleet's broker are checked alike.

A real box syncs to the ``upstream`` fixture. The operator publishes there,
and the box publishes a result for every document on its upstream
``stat/result`` topic. Unsigned, tampered, expired, replayed and wrongly
keyed documents are rejected with their reason and change nothing. A box's
own account cannot publish a command at all.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from upstream_broker import Upstream, fleet_site_config, upstream  # noqa: F401

from appliance.bus.topics import Topics
from appliance.bus.url import parse_broker_url
from appliance.config import SiteConfig
from appliance.remote.fleet_client import FleetClient, FleetError, load_login
from appliance.runtime import Box
from appliance.signed_documents import sign_document

SITE = "club"
BOX = "box-1"
TIMEOUT_S = 30.0
TOPICS = Topics(SITE)
# A token id the fleet revokes in the bundles below.
TOKEN_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OPERATOR_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def site_config(tmp_path: Path, upstream: Upstream) -> SiteConfig:  # noqa: F811
    """Box club/box-1 of the fleet, trusting OPERATOR_KEY, with a trusted clock."""
    return fleet_site_config(
        tmp_path / "box", upstream, operator_keys=[OPERATOR_KEY.public_key()]
    )


def operator(upstream: Upstream) -> FleetClient:  # noqa: F811
    """The fleet operator's session on the upstream broker."""
    return FleetClient(
        parse_broker_url(upstream.url),
        load_login(upstream.operator_credentials()),
        ca_file=upstream.ca.ca_certificate,
    )


def document(
    kind: str,
    *,
    version: int = 1,
    key: Ed25519PrivateKey = OPERATOR_KEY,
    issued_at: float | None = None,
) -> dict[str, Any]:
    """A signed status command or revocations bundle for club/box-1."""
    if kind == "command":
        return sign_document(
            key,
            kind="command",
            document_type="status",
            site=SITE,
            body={"box": BOX},
            issued_at=time.time() if issued_at is None else issued_at,
            validity_s=600,
        )
    return sign_document(
        key,
        kind="bundle",
        document_type="revocations",
        site=SITE,
        body={"tokens": [{"id": TOKEN_ID, "reason": "band lost"}]},
        issued_at=time.time() if issued_at is None else issued_at,
        validity_s=600,
        version=version,
    )


def topic(kind: str) -> str:
    if kind == "command":
        return TOPICS.command(BOX, "status")
    return TOPICS.bundle(BOX, "revocations")


def send(client: FleetClient, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Publish a document and return the box's result for its nonce."""
    client.publish(topic(kind), orjson.dumps(fields))
    deadline = time.monotonic() + TIMEOUT_S
    for message in client.messages_until(deadline):
        result = orjson.loads(message.payload)["data"]
        if result.get("nonce") == fields["nonce"]:
            return dict(result)
    pytest.fail(f"no result for the {kind} with nonce {fields['nonce']}")


def unsigned(kind: str) -> dict[str, Any]:
    fields = document(kind)
    del fields["sig"]
    return fields


def tampered(kind: str) -> dict[str, Any]:
    fields = document(kind)
    fields["body"] = {**fields["body"], "extra": "changed after signing"}
    return fields


def expired(kind: str) -> dict[str, Any]:
    # Signed two hours ago for ten minutes.
    return document(kind, issued_at=time.time() - 7200)


def foreign(kind: str) -> dict[str, Any]:
    return document(kind, key=Ed25519PrivateKey.generate())


@pytest.mark.parametrize("kind", ["command", "bundle"])
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (unsigned, "malformed"),
        (tampered, "bad-signature"),
        (expired, "expired"),
        (foreign, "unknown-key"),
    ],
)
async def test_refused_through_the_upstream_broker(
    box: Box,
    upstream: Upstream,  # noqa: F811
    kind: str,
    make: Any,
    reason: str,
) -> None:
    assert box.sync is not None
    sync = box.sync
    await wait_until(lambda: sync.state()["connected"], "sync connected")

    def exchange() -> dict[str, Any]:
        with operator(upstream) as client:
            client.subscribe([TOPICS.command_result(BOX)])
            return send(client, kind, make(kind))

    result = await asyncio.to_thread(exchange)

    assert (result["ok"], result["reason"], result["kind"]) == (False, reason, kind)
    assert box.store.query("SELECT id FROM revoked_tokens") == []
    assert box.store.query("SELECT nonce FROM signed_nonces") == []


@pytest.mark.parametrize("kind", ["command", "bundle"])
async def test_replayed_document_is_refused(
    box: Box,
    upstream: Upstream,  # noqa: F811
    kind: str,
) -> None:
    assert box.sync is not None
    sync = box.sync
    await wait_until(lambda: sync.state()["connected"], "sync connected")
    fields = document(kind)

    def exchange() -> list[dict[str, Any]]:
        with operator(upstream) as client:
            client.subscribe([TOPICS.command_result(BOX)])
            return [send(client, kind, fields), send(client, kind, fields)]

    first, again = await asyncio.to_thread(exchange)

    assert first["ok"] is True, first
    assert (again["ok"], again["reason"]) == (False, "replayed")
    assert box.store.query("SELECT nonce FROM signed_nonces") == [(fields["nonce"],)]


async def test_box_account_cannot_publish_a_command(
    box: Box,
    upstream: Upstream,  # noqa: F811
) -> None:
    assert box.sync is not None
    sync = box.sync
    await wait_until(lambda: sync.state()["connected"], "sync connected")
    other_box = FleetClient(
        parse_broker_url(upstream.url),
        load_login(upstream.box_credentials("annex", "box-2")),
        ca_file=upstream.ca.ca_certificate,
    )

    def publish() -> None:
        with other_box as client:
            client.publish(topic("command"), orjson.dumps(document("command")))

    with pytest.raises(FleetError, match="rejected the message"):
        await asyncio.to_thread(publish)
    assert box.store.query("SELECT nonce FROM signed_nonces") == []


async def wait_until(condition: Any, description: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {description}")
        await asyncio.sleep(0.05)
