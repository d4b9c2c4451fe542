"""A provisioned reader's broker account and ACL on a real mosquitto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.bus.broker import BrokerHandle, find_mosquitto, start_broker
from appliance.config import BrokerConfig, SiteConfig, load_config
from provisioning import SiteCredentials
from provisioning.readers import ReaderRequest
from provisioning.readers.registration import (
    credentials_path,
    ensure_broker_account,
    register_reader,
    validate_request,
)
from provisioning.site_access import ReaderGrant, site_policy
from tests.paho_publish import REASON_SUCCESS, publish_with_paho
from tests.reader_provisioning.provisioning_site import (  # noqa: F401
    site_file_fixture,
)

# MQTT 5 reason codes (OASIS MQTT 5.0, 3.2.2.2 and 3.4.2.1). mosquitto 2
# rejects a bad password with 135, and acknowledges a publish that has no
# subscriber with 16, which is a success.
NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16
ACCEPTED = {REASON_SUCCESS, NO_MATCHING_SUBSCRIBERS}
BATCH = b'{"v":1,"id":"a1","ts":1,"src":"reader/x","data":{}}'


def provision_accounts(site_file: Path) -> SiteConfig:
    """Register exit-3 (Wi-Fi) and kit-2 as provisioning does; return the new config."""
    config = load_config(site_file)
    for role in ("exit", "kit"):
        reader = validate_request(
            ReaderRequest(role=role, zone="back-door", port="/dev/ttyUSB0"), config
        )
        config, _changed = register_reader(site_file, config, reader)
        ensure_broker_account(config, reader.id)
    return config


@pytest.fixture
async def broker(site_file: Path) -> AsyncIterator[tuple[SiteConfig, BrokerHandle]]:
    """The site's mosquitto after provisioning, with the box's password and ACL."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    config = provision_accounts(site_file)
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
    )
    handle = await start_broker(
        BrokerConfig(mode="mosquitto"),
        config.data_dir / "run",
        SiteCredentials(credentials_path(config)),
        policy,
    )
    try:
        yield config, handle
    finally:
        await handle.stop()


def password(config: SiteConfig, reader_id: str) -> str:
    return ensure_broker_account(config, reader_id).password


async def test_reader_publishes_sightings(
    broker: tuple[SiteConfig, BrokerHandle],
) -> None:
    config, handle = broker
    result = await publish_with_paho(
        handle,
        "reader-exit-3",
        password(config, "exit-3"),
        "nightbox/test/reader/exit-3/sightings",
        BATCH,
    )
    assert result.connack == REASON_SUCCESS
    assert result.puback in ACCEPTED


async def test_wrong_password_rejected(broker: tuple[SiteConfig, BrokerHandle]) -> None:
    _config, handle = broker
    result = await publish_with_paho(
        handle,
        "reader-exit-3",
        "not-the-password",
        "nightbox/test/reader/exit-3/sightings",
        BATCH,
    )
    assert result.connack == NOT_AUTHORIZED
    assert result.puback is None


async def test_other_reader_topic_denied(
    broker: tuple[SiteConfig, BrokerHandle],
) -> None:
    config, handle = broker
    for topic in (
        "nightbox/test/reader/exit-1/sightings",
        "nightbox/test/reader/exit-1/status",
        "nightbox/test/reader/kit-2/api/kits/issue",
    ):
        result = await publish_with_paho(
            handle, "reader-exit-3", password(config, "exit-3"), topic, BATCH
        )
        assert result.puback == NOT_AUTHORIZED, topic


async def test_kit_reader_requests_kit(broker: tuple[SiteConfig, BrokerHandle]) -> None:
    config, handle = broker
    result = await publish_with_paho(
        handle,
        "reader-kit-2",
        password(config, "kit-2"),
        "nightbox/test/reader/kit-2/api/kits/issue",
        BATCH,
    )
    assert result.puback in ACCEPTED


async def test_exit_reader_no_kit_requests(
    broker: tuple[SiteConfig, BrokerHandle],
) -> None:
    config, handle = broker
    result = await publish_with_paho(
        handle,
        "reader-exit-3",
        password(config, "exit-3"),
        "nightbox/test/reader/exit-3/api/kits/issue",
        BATCH,
    )
    assert result.puback == NOT_AUTHORIZED
