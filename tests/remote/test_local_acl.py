"""The local broker's ACL for remote management, enforced by a real mosquitto.

aiomqtt ignores the reason code of a PUBACK, so the publishes here use
paho-mqtt directly. mosquitto 2.0 acknowledges a denied QoS 1 publish with
PUBACK reason 135 (Not authorized) and drops the message, and acknowledges
an allowed one that reaches no subscriber with reason 16 (No matching
subscribers).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from management_site import (
    BOX_ID,
    DROP_ID,
    TIMEOUT_S,
    Operator,
    config_path_fixture,  # noqa: F401
    management_box,  # noqa: F401
    management_site_config,  # noqa: F401
    operator_fixture,  # noqa: F401
    operator_key_fixture,  # noqa: F401
    sign_command,
)
from paho_publish import publish_with_paho

from appliance.bus.broker import BrokerHandle
from appliance.config import SiteConfig
from appliance.runtime import Box
from provisioning import SiteCredentials
from provisioning.acl import Access
from provisioning.site_access import ReaderGrant, site_policy

REASON_SUCCESS = 0
REASON_NO_MATCHING_SUBSCRIBERS = 16
REASON_NOT_AUTHORIZED = 135
COMMAND_TOPIC = f"nightbox/test/box/{BOX_ID}/cmnd/drop-start"


async def publish_as(
    broker: BrokerHandle,
    credentials: SiteCredentials,
    username: str,
    topic: str,
    payload: bytes = b"{}",
) -> int:
    """Publish at QoS 1 as ``username``; return the PUBACK reason code."""
    password = credentials.account(username).password
    result = await publish_with_paho(
        broker, username, password, topic, payload, timeout_s=TIMEOUT_S
    )
    assert result.connack == REASON_SUCCESS, f"{username} could not log in"
    assert result.puback is not None
    return result.puback


def drop_state(box: Box) -> str:
    row = box.store.query_one("SELECT state FROM drops WHERE id = ?", (DROP_ID,))
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize(
    "username",
    ["reader-exit-1", "reader-kit-1", "terminal-desk", "observer", "homeassistant"],
)
async def test_signed_command_from_device_denied(
    box: Box,
    operator: Operator,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    operator_key: Ed25519PrivateKey,
    username: str,
) -> None:
    document = sign_command(operator_key, "drop-start", {"drop": DROP_ID})

    denied = await publish_as(
        mosquitto, credentials, username, COMMAND_TOPIC, orjson.dumps(document)
    )
    # The box handles commands in arrival order, so once the result of the
    # operator's later command arrives, it would have handled the first.
    barrier = await operator.send("status", sign_command(operator_key, "status"))

    assert denied == REASON_NOT_AUTHORIZED
    assert barrier["ok"] is True
    assert operator.results.empty()
    assert drop_state(box) == "scheduled"
    assert box.management.accepted == {"status": 1}
    assert box.management.rejected == {}
    assert box.store.query("SELECT nonce FROM signed_nonces") == [(barrier["nonce"],)]


async def test_operator_command_reaches_box(
    box: Box,
    operator: Operator,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    operator_key: Ed25519PrivateKey,
) -> None:
    document = sign_command(operator_key, "drop-start", {"drop": DROP_ID})

    code = await publish_as(
        mosquitto, credentials, "operator", COMMAND_TOPIC, orjson.dumps(document)
    )
    result = await asyncio.wait_for(operator.results.get(), TIMEOUT_S)

    assert code == REASON_SUCCESS
    assert result["ok"] is True
    assert result["nonce"] == document["nonce"]
    assert drop_state(box) == "live"


@pytest.mark.parametrize(
    ("username", "topic"),
    [
        ("operator", f"nightbox/test/box/{BOX_ID}/status"),
        ("operator", f"nightbox/test/box/{BOX_ID}/stat/result"),
        ("operator", f"nightbox/test/box/{BOX_ID}/tele/state"),
        ("operator", f"nightbox/test/box/{BOX_ID}/bundle/members"),
        ("operator", "nightbox/test/reader/exit-1/sightings"),
        ("operator", "nightbox/test/terminal/desk/api/wallet/topup"),
        ("operator", "nightbox/other/box/box-1/cmnd/status"),
        ("operator", "homeassistant/status"),
        ("homeassistant", f"homeassistant/sensor/nightbox-test-{BOX_ID}/x/config"),
        ("homeassistant", f"nightbox/test/box/{BOX_ID}/tele/state"),
        ("homeassistant", f"nightbox/test/box/{BOX_ID}/availability"),
        ("reader-exit-1", "homeassistant/status"),
    ],
)
async def test_remote_accounts_other_topics_denied(
    mosquitto: BrokerHandle, credentials: SiteCredentials, username: str, topic: str
) -> None:
    code = await publish_as(mosquitto, credentials, username, topic)

    assert code == REASON_NOT_AUTHORIZED


@pytest.mark.parametrize(
    ("username", "topic"),
    [
        ("operator", "nightbox/test/box/box-2/cmnd/status"),
        ("homeassistant", "homeassistant/status"),
    ],
)
async def test_remote_accounts_own_topics_allowed(
    mosquitto: BrokerHandle, credentials: SiteCredentials, username: str, topic: str
) -> None:
    code = await publish_as(mosquitto, credentials, username, topic, b"online")

    # No box runs here, so an allowed publish reaches no subscriber.
    assert code == REASON_NO_MATCHING_SUBSCRIBERS


@pytest.mark.parametrize(
    ("username", "topic", "allowed"),
    [
        ("operator", f"nightbox/test/box/{BOX_ID}/stat/result", True),
        ("operator", f"nightbox/test/box/{BOX_ID}/tele/state", True),
        ("operator", f"nightbox/test/box/{BOX_ID}/tele/sync", True),
        ("operator", f"nightbox/test/box/{BOX_ID}/availability", True),
        ("operator", f"nightbox/test/box/{BOX_ID}/status", False),
        ("operator", "nightbox/test/events/checkout", False),
        ("operator", "nightbox/test/terminal/desk/reply", False),
        ("homeassistant", f"nightbox/test/box/{BOX_ID}/tele/state", True),
        ("homeassistant", f"nightbox/test/box/{BOX_ID}/availability", True),
        ("homeassistant", "homeassistant/sensor/x/y/config", True),
        ("homeassistant", f"nightbox/test/box/{BOX_ID}/stat/result", False),
        ("homeassistant", "nightbox/test/events/checkout", False),
        ("homeassistant", "nightbox/test/box/box-2/tele/state", False),
        ("reader-exit-1", f"nightbox/test/box/{BOX_ID}/stat/result", False),
        (f"box-{BOX_ID}", "homeassistant/status", True),
    ],
)
def test_remote_accounts_read_grants(
    site_config: SiteConfig, username: str, topic: str, allowed: bool
) -> None:
    policy = site_policy(
        site_config.site_id,
        site_config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in site_config.readers],
        site_config.commerce.terminals,
    )

    assert policy.allows(username, topic, Access.READ) is allowed


def test_box_writes_discovery(site_config: SiteConfig) -> None:
    policy = site_policy(site_config.site_id, site_config.box_id, [])

    assert policy.allows(
        f"box-{BOX_ID}", "homeassistant/sensor/n/o/config", Access.WRITE
    )
    assert not policy.allows(
        "operator", "homeassistant/sensor/n/o/config", Access.WRITE
    )
