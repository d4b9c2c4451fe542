"""The fleet's upstream broker for tests: mosquitto with TLS from a test CA.

Import the fixture into a test module (``from upstream_broker import
upstream  # noqa: F401``). The CA, the broker's certificate and every
account are made afresh for each test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_site_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.bus.broker import (
    BrokerHandle,
    TlsFiles,
    find_mosquitto,
    free_port,
    start_fleet_mosquitto,
)
from appliance.bus.url import parse_broker_url
from appliance.config import SiteConfig
from appliance.remote.config import FleetConfig, SyncConfig
from appliance.signed_documents import key_id
from provisioning import SiteCredentials
from provisioning.fleet_access import (
    COLLECTOR,
    FleetBox,
    fleet_policy,
    operator_username,
    upstream_box_username,
)
from provisioning.fleet_tls import FleetCa, make_fleet_ca
from provisioning.secret_file import write_secret_file

# The boxes every upstream test broker has accounts for: the test site's box, a second
# box of another site, and the demo night's box.
FLEET_BOXES = (
    FleetBox("club", "box-1"),
    FleetBox("annex", "box-2"),
    FleetBox("demo", "box-1"),
)
OPERATOR = "ops"


@dataclass
class Upstream:
    """A running upstream broker with its CA and accounts."""

    broker: BrokerHandle
    ca: FleetCa
    accounts: SiteCredentials
    folder: Path

    @property
    def url(self) -> str:
        """The broker's ``mqtts://`` URL."""
        return f"mqtts://127.0.0.1:{self.broker.port}"

    def credentials_file(self, username: str) -> Path:
        """Write ``username``'s login as a 0600 JSON file and return its path."""
        account = self.accounts.account(username)
        path = self.folder / f"{username}.json"
        data = {"username": account.username, "password": account.password}
        write_secret_file(path, json.dumps(data).encode())
        return path

    def box_credentials(self, site: str = "club", box_id: str = "box-1") -> Path:
        """The credentials file of a box of the fleet."""
        return self.credentials_file(upstream_box_username(site, box_id))

    def collector_credentials(self) -> Path:
        """The credentials file of the collector."""
        return self.credentials_file(COLLECTOR)

    def operator_credentials(self) -> Path:
        """The credentials file of the fleet operator ``ops``."""
        return self.credentials_file(operator_username(OPERATOR))

    def sync_config(
        self, site: str = "club", box_id: str = "box-1", *, window: int = 16
    ) -> SyncConfig:
        """The ``[sync]`` section of a box of the fleet, retrying every 0.5 s."""
        return SyncConfig(
            broker=parse_broker_url(self.url),
            ca_file=self.ca.ca_certificate,
            credentials_file=self.box_credentials(site, box_id),
            window=window,
            retry_max_s=0.5,
        )


def fleet_site_config(
    data_dir: Path,
    upstream: Upstream,
    *,
    window: int = 16,
    operator_keys: Iterable[Ed25519PublicKey] = (),
) -> SiteConfig:
    """Return the test site as box club/box-1 of the fleet on ``upstream``.

    The box trusts ``operator_keys`` and sends its telemetry every 0.5 s.
    """
    config = make_site_config(data_dir, site_id="club")
    fleet = FleetConfig(
        operator_keys={key_id(key): key for key in operator_keys},
        telemetry_interval_s=0.5,
    )
    return dataclasses.replace(
        config, sync=upstream.sync_config(window=window), fleet=fleet
    )


async def start_upstream(folder: Path) -> Upstream:
    """Start a TLS mosquitto for the fleet in ``folder``."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run 'make test', which installs it")
    ca = make_fleet_ca(folder / "tls", ["127.0.0.1", "localhost"])
    accounts = SiteCredentials(folder / "accounts.json")
    broker = await start_fleet_mosquitto(
        folder / "run",
        "127.0.0.1",
        free_port(),
        accounts,
        fleet_policy(FLEET_BOXES, operators=[OPERATOR]),
        TlsFiles(ca.certificate, ca.key),
    )
    return Upstream(broker, ca, accounts, folder)


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    """A fleet broker on loopback with TLS, persistence and per-box accounts."""
    running = await start_upstream(tmp_path / "upstream")
    try:
        yield running
    finally:
        await running.broker.stop()
