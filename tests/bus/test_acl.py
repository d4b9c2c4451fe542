"""The site's passwords and ACLs, enforced by a real mosquitto.

aiomqtt ignores the reason code of a PUBACK, so the tests that check the
reason codes of a denied publish use paho-mqtt directly. mosquitto 2.0.11
acknowledges a denied QoS 1 publish with PUBACK reason 135 (Not authorized)
and rejects a bad login with CONNACK reason 135 as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from conftest import TokenFactory
from paho.mqtt.reasoncodes import ReasonCode
from paho_publish import PahoResult, publish_with_paho

from appliance.bus import envelope
from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.config import SiteConfig
from appliance.errors import RequestError
from appliance.runtime import Box
from appliance.sim._adverts import ibeacon
from provisioning import SiteCredentials, verify_password
from provisioning.site_access import ReaderGrant, site_policy

TIMEOUT_S = 10.0
# How long a request waits for a reply that a denied publish never gets.
DENIED_WAIT_S = 0.5

REASON_SUCCESS = 0
REASON_NO_MATCHING_SUBSCRIBERS = 16
REASON_NOT_AUTHORIZED = 135


async def paho_publish(
    broker: BrokerHandle,
    username: str | None,
    password: str | None,
    topic: str,
) -> PahoResult:
    """Log in with paho-mqtt over MQTT 5, publish at QoS 1, return the codes."""
    payload = envelope.encode(f"paho/{username}", {"data": {}})
    return await publish_with_paho(
        broker, username, password, topic, payload, timeout_s=TIMEOUT_S
    )


def kit_request(key: str, band: str = "ib-1-7") -> dict[str, Any]:
    """Return the ``data`` of a kit request at station kit-1."""
    return {"station": "kit-1", "band": band, "idempotency_key": key}


def sightings_batch(site_config: SiteConfig, reader_id: str) -> dict[str, Any]:
    """Return a batch with one strong sighting of band ib-1-7."""
    assert site_config.ibeacon_uuid is not None
    now = time.time()
    sighting = {
        "t": now,
        "addr": "c4:7c:8d:6a:11:07",
        "rssi": -50,
        "n": 3,
        "adv": ibeacon(site_config.ibeacon_uuid, 1, 7, -59).hex(),
    }
    return {
        "reader": reader_id,
        "boot": "acltest",
        "seq": 1,
        "t": now,
        "sightings": [sighting],
    }


@contextlib.asynccontextmanager
async def listening(
    make_client: Any, username: str, kind: str, device_id: str, topic_filter: str
) -> AsyncIterator[tuple[Bus, asyncio.Queue[Incoming]]]:
    """Connect a client whose subscription is in place before it counts as up."""
    received: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_message(incoming: Incoming) -> None:
        received.put_nowait(incoming)

    async with make_client(
        username, kind, device_id, announce=False, wait=False
    ) as bus:
        # Registered before the first connect, so it is part of the
        # subscriptions that the client sends before it sets ``connected``.
        bus.subscribe(topic_filter, on_message)
        await asyncio.wait_for(bus.connected.wait(), TIMEOUT_S)
        yield bus, received


async def issue_kit(make_client: Any, box: Box, key: str, band: str) -> dict[str, Any]:
    """Send a kit request as the kit reader and return the reply data.

    The box handles messages in arrival order, and mosquitto 2.0 queues a
    QoS 1 message for its subscribers before it sends the PUBACK. So once
    this reply arrives, the box has handled every message that any client
    had published and seen acknowledged before.
    """
    async with make_client("reader-kit-1", "reader", "kit-1") as kit_reader:
        return await kit_reader.request(
            box.bus.topics.api("kits", "issue"),
            kit_request(key, band),
            timeout_s=TIMEOUT_S,
        )


async def test_acl_exit_reader_kit_request_denied(
    box: Box, make_client: Any, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    topics = box.bus.topics
    password = credentials.account("reader-exit-1").password

    async with make_client("reader-exit-1", "reader", "exit-1") as exit_reader:
        # Bus.request sends this on the exit reader's own request topic.
        with pytest.raises(RequestError) as caught:
            await exit_reader.request(
                topics.api("kits", "issue"),
                kit_request("denied-bus-1"),
                timeout_s=DENIED_WAIT_S,
            )
    own_result = await paho_publish(
        mosquitto,
        "reader-exit-1",
        password,
        topics.device_api("reader", "exit-1", "kits", "issue"),
    )
    kit_topic_result = await paho_publish(
        mosquitto,
        "reader-exit-1",
        password,
        topics.device_api("reader", "kit-1", "kits", "issue"),
    )
    reply = await issue_kit(make_client, box, "allowed-1", "ib-1-8")

    assert caught.value.code == "timeout"
    assert own_result.connack == REASON_SUCCESS
    assert own_result.puback == REASON_NOT_AUTHORIZED
    assert kit_topic_result.puback == REASON_NOT_AUTHORIZED
    assert reply["band"] == "ib-1-8"
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 4}}
    assert box.store.query("SELECT key FROM requests") == [("allowed-1",)]
    assert box.store.query("SELECT band FROM kits") == [("ib-1-8",)]
    assert box.bus.stats.rejected == {}


async def test_acl_reader_cannot_publish_other_readers_sightings(
    box: Box,
    make_client: Any,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    site_config: SiteConfig,
) -> None:
    foreign_topic = box.bus.topics.sightings("exit-2")
    password = credentials.account("reader-exit-1").password

    async with make_client("reader-exit-1", "reader", "exit-1") as exit_reader:
        await asyncio.wait_for(
            exit_reader.publish_json(
                foreign_topic, {"data": sightings_batch(site_config, "exit-2")}
            ),
            TIMEOUT_S,
        )
    result = await paho_publish(mosquitto, "reader-exit-1", password, foreign_topic)
    await issue_kit(make_client, box, "barrier-1", "ib-1-8")

    assert result.puback == REASON_NOT_AUTHORIZED
    assert box.checkouts.stats.batches == 0
    assert box.checkouts.last_batch("exit-2") is None
    assert box.store.query("SELECT COUNT(*) FROM checkouts") == [(0,)]


async def test_acl_reader_publishes_own_sightings(
    box: Box,
    make_client: Any,
    mosquitto: BrokerHandle,
    credentials: SiteCredentials,
    site_config: SiteConfig,
) -> None:
    own_topic = box.bus.topics.sightings("exit-1")
    password = credentials.account("reader-exit-1").password

    result = await paho_publish(mosquitto, "reader-exit-1", password, own_topic)
    async with make_client("reader-exit-1", "reader", "exit-1") as exit_reader:
        await asyncio.wait_for(
            exit_reader.publish_json(
                own_topic, {"data": sightings_batch(site_config, "exit-1")}
            ),
            TIMEOUT_S,
        )
    await issue_kit(make_client, box, "barrier-1", "ib-1-8")

    assert result.puback == REASON_SUCCESS
    assert box.checkouts.stats.batches == 1
    # The paho payload has no batch fields, so the box rejects it by content.
    assert box.bus.stats.rejected == {"malformed-batch": 1}


async def test_acl_kit_reader_kit_request_succeeds(
    box: Box, make_client: Any, mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    topic = box.bus.topics.device_api("reader", "kit-1", "kits", "issue")
    password = credentials.account("reader-kit-1").password

    reply = await issue_kit(make_client, box, "kit-reader-1", "ib-1-7")
    result = await paho_publish(mosquitto, "reader-kit-1", password, topic)

    assert reply == {
        "band": "ib-1-7",
        "station": "kit-1",
        "remaining": 4,
        "coupon": None,
    }
    assert result.puback == REASON_SUCCESS
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 4}}


async def test_acl_kit_reader_publish_without_box(
    mosquitto: BrokerHandle, credentials: SiteCredentials
) -> None:
    password = credentials.account("reader-kit-1").password

    result = await paho_publish(
        mosquitto, "reader-kit-1", password, "nightbox/test/reader/kit-1/api/kits/issue"
    )

    assert result.puback == REASON_NO_MATCHING_SUBSCRIBERS


@pytest.mark.parametrize(
    "path",
    [
        "api/kits/issue",
        "reader/kit-1/api/optin/register",
        "reader/kit-1/api/kits/steal",
        "reader/exit-1/api/kits/issue",
        "terminal/desk/api/kits/issue",
        "box/box-1/api/kits/issue",
    ],
)
async def test_acl_kit_reader_other_request_topics_denied(
    mosquitto: BrokerHandle, credentials: SiteCredentials, path: str
) -> None:
    password = credentials.account("reader-kit-1").password

    result = await paho_publish(
        mosquitto, "reader-kit-1", password, f"nightbox/test/{path}"
    )

    assert result.connack == REASON_SUCCESS
    assert result.puback == REASON_NOT_AUTHORIZED


@pytest.mark.parametrize(
    "path",
    ["terminal/desk/api/wallet/charge", "terminal/desk/api/kits/issue"],
)
async def test_acl_terminal_publishes_own_requests(
    mosquitto: BrokerHandle, credentials: SiteCredentials, path: str
) -> None:
    password = credentials.account("terminal-desk").password

    result = await paho_publish(
        mosquitto, "terminal-desk", password, f"nightbox/test/{path}"
    )

    # No box runs, so an allowed publish reaches no subscriber.
    assert result.connack == REASON_SUCCESS
    assert result.puback == REASON_NO_MATCHING_SUBSCRIBERS


@pytest.mark.parametrize(
    "path",
    [
        "api/wallet/charge",
        "terminal/bar-1/api/wallet/charge",
        "terminal/desk/api/wallet/charge/extra",
        "reader/kit-1/api/kits/issue",
        "box/box-1/api/wallet/charge",
        "terminal/desk/reply",
    ],
)
async def test_acl_terminal_other_topics_denied(
    mosquitto: BrokerHandle, credentials: SiteCredentials, path: str
) -> None:
    password = credentials.account("terminal-desk").password

    result = await paho_publish(
        mosquitto, "terminal-desk", password, f"nightbox/test/{path}"
    )

    assert result.connack == REASON_SUCCESS
    assert result.puback == REASON_NOT_AUTHORIZED


async def test_acl_unknown_action_gets_error(
    box: Box, make_client: Any, issue_token: TokenFactory
) -> None:
    token = issue_token("desk", "optin:register")

    async with make_client("terminal-desk", "terminal", "desk") as desk:
        with pytest.raises(RequestError) as caught:
            await desk.request(
                box.bus.topics.api("kits", "steal"),
                kit_request("unknown-action-1"),
                timeout_s=TIMEOUT_S,
                token=token,
            )

    assert caught.value.code == "unknown-action"
    assert "api/kits/steal" in caught.value.message
    assert box.requests.counts["unknown-action"] == 1
    assert box.bus.stats.rejected == {"unknown-action": 1}
    assert box.store.query("SELECT COUNT(*) FROM requests") == [(0,)]
    assert box.kits.stock() == {"kit-1": {"initial": 5, "remaining": 5}}


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("reader-exit-1", "wrong-password", id="wrong password"),
        pytest.param("reader-exit-1", "", id="empty password"),
        pytest.param("reader-ghost", "any-password", id="unknown user"),
        pytest.param(None, None, id="anonymous"),
    ],
)
async def test_acl_bad_login_refused(
    mosquitto: BrokerHandle, username: str | None, password: str | None
) -> None:
    client = aiomqtt.Client(
        mosquitto.host,
        mosquitto.port,
        username=username,
        password=password,
        identifier=f"test-login-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
    )

    with pytest.raises(aiomqtt.MqttCodeError) as caught:
        async with asyncio.timeout(TIMEOUT_S), client:
            pass
    result = await paho_publish(mosquitto, username, password, "nightbox/test/x")

    assert isinstance(caught.value.rc, ReasonCode)
    assert caught.value.rc.value == REASON_NOT_AUTHORIZED
    assert result.connack == REASON_NOT_AUTHORIZED
    assert result.puback is None


async def test_acl_bus_with_wrong_password_never_connects(make_client: Any) -> None:
    async with make_client(
        "reader-exit-1", "reader", "exit-1", password="wrong-password", wait=False
    ) as bus:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bus.connected.wait(), DENIED_WAIT_S)

        assert bus.stats.connects == 0


async def test_acl_observer_reads_events(box: Box, make_client: Any) -> None:
    async with listening(
        make_client, "observer", "observer", "dash", box.bus.topics.all_events
    ) as (_observer, events):
        await issue_kit(make_client, box, "observed-1", "ib-1-9")
        incoming = await asyncio.wait_for(events.get(), TIMEOUT_S)

    event = envelope.decode(incoming.payload)
    assert incoming.topic == box.bus.topics.event("kit_issued")
    assert event.body["type"] == "kit_issued"
    assert event.data == {"band": "ib-1-9", "station": "kit-1", "remaining": 4}


@pytest.mark.parametrize(
    "path",
    [
        "events/kit_issued",
        "api/kits/issue",
        "observer/dash/api/kits/issue",
        "terminal/desk/api/kits/issue",
        "box/box-1/availability",
    ],
)
async def test_acl_observer_cannot_publish(
    mosquitto: BrokerHandle, credentials: SiteCredentials, path: str
) -> None:
    password = credentials.account("observer").password

    result = await paho_publish(
        mosquitto, "observer", password, f"nightbox/test/{path}"
    )

    assert result.connack == REASON_SUCCESS
    assert result.puback == REASON_NOT_AUTHORIZED


async def test_acl_observer_kit_request_times_out(box: Box, make_client: Any) -> None:
    async with make_client("observer", "observer", "dash", announce=False) as observer:
        with pytest.raises(RequestError) as caught:
            await observer.request(
                box.bus.topics.api("kits", "issue"),
                kit_request("observer-1"),
                timeout_s=DENIED_WAIT_S,
            )
    await issue_kit(make_client, box, "barrier-1", "ib-1-8")

    assert caught.value.code == "timeout"
    assert box.store.query("SELECT key FROM requests") == [("barrier-1",)]


async def test_acl_generated_mosquitto_files(
    mosquitto: BrokerHandle, credentials: SiteCredentials, site_config: SiteConfig
) -> None:
    run_dir = site_config.data_dir / "run"
    password_path = run_dir / "mosquitto.passwd"
    acl_path = run_dir / "mosquitto.acl"
    config_path = run_dir / "mosquitto.conf"
    policy = site_policy(
        site_config.site_id,
        site_config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in site_config.readers],
    )
    files = [password_path, acl_path, config_path, credentials.path]

    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    entries = dict(
        line.split(":", 1) for line in password_path.read_text().splitlines()
    )
    assert set(entries) == set(policy.usernames)
    for username, hashed in entries.items():
        password = credentials.account(username).password
        assert hashed.startswith("$7$"), username
        assert verify_password(password, hashed), username
        for path in files[:3]:
            assert password not in path.read_text(), (username, path)
    assert acl_path.read_text() == policy.render_mosquitto()
    config = config_path.read_text().splitlines()
    assert f"listener {mosquitto.port} {mosquitto.host}" in config
    assert "allow_anonymous false" in config
    assert f"password_file {password_path}" in config
    assert f"acl_file {acl_path}" in config
