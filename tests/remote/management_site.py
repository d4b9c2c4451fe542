"""A site file with an operator key, a box that trusts it, and an operator client.

Test modules import the fixture functions to use the fixtures
``operator_key``, ``config_path``, ``site_config`` (which replaces the
shared one with the site read from ``site.toml``), ``box`` (which passes the
file's path to the box) and ``operator``. The site has the shared test readers,
a wallet, a beer, a POS terminal ``bar-1`` and the drop ``tee-drop`` of 20
units, open from a minute ago for an hour.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import SITE_UUID, ClientFactory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bus.broker import BrokerHandle
from appliance.bus.client import Bus, Incoming
from appliance.clock import SystemClock, TimeSource
from appliance.config import SiteConfig, load_config
from appliance.runtime import Box
from appliance.signed_documents import sign_document
from provisioning import SiteCredentials

TIMEOUT_S = 10.0
SITE_ID = "test"
BOX_ID = "box-1"
DROP_ID = "tee-drop"
DROP_QUANTITY = 20


def _toml_time(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def site_toml(
    data_dir: Path,
    operator_keys: list[Path],
    broker: BrokerHandle | None = None,
    *,
    site_id: str = SITE_ID,
    sync: dict[str, str] | None = None,
) -> str:
    """Return the text of the test site's configuration file.

    ``broker`` makes the box use that broker; ``sync`` gives the ``[sync]``
    section's string values.
    """
    now = time.time()
    keys = ", ".join(f'"{path}"' for path in operator_keys)
    extra_tables = ""
    if broker is not None:
        extra_tables = (
            f'[broker]\nmode = "external"\nhost = "{broker.host}"\n'
            f"port = {broker.port}\n\n"
        )
    if sync is not None:
        lines = "".join(f'{name} = "{value}"\n' for name, value in sync.items())
        extra_tables += f"[sync]\n{lines}\n"
    return (
        f'[site]\nid = "{site_id}"\nname = "Test venue"\ntimezone = "UTC"\n\n'
        f'[box]\nid = "{BOX_ID}"\ndata_dir = "{data_dir}"\n\n'
        f'[bands]\nibeacon_uuid = "{SITE_UUID.hex()}"\n\n'
        + extra_tables
        + f"[fleet]\noperator_keys = [{keys}]\ntelemetry_interval_s = 0.5\n\n"
        '[[readers]]\nid = "exit-1"\nrole = "exit"\n\n'
        '[[readers]]\nid = "exit-2"\nrole = "exit"\n\n'
        '[[readers]]\nid = "kit-1"\nrole = "kit"\nkit_stock = 5\n\n'
        '[wallet]\ncurrency = "EUR"\n\n'
        '[[items]]\nid = "beer"\nname = "Beer"\nprice = 450\n\n'
        '[[items]]\nid = "tee"\nname = "Drop tee"\nprice = 3500\n\n'
        '[[terminals]]\nid = "bar-1"\n\n'
        f'[[drops]]\nid = "{DROP_ID}"\nitem = "tee"\nprice = 3500\n'
        f"quantity = {DROP_QUANTITY}\nstarts_at = {_toml_time(now - 60)}\n"
        f"ends_at = {_toml_time(now + 3600)}\n"
    )


def file_bytes(path: Path) -> bytes:
    """Return the bytes of ``path``; async tests call it to compare files."""
    return path.read_bytes()


def write_public_key(private_key: Ed25519PrivateKey, path: Path) -> Path:
    """Write the PEM public key of ``private_key`` to ``path``."""
    path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return path


@pytest.fixture(name="operator_key")
def operator_key_fixture() -> Ed25519PrivateKey:
    """The operator's signing key; the site trusts its public key."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(name="config_path")
def config_path_fixture(tmp_path: Path, operator_key: Ed25519PrivateKey) -> Path:
    """The site's configuration file, next to the operator's public key."""
    key_path = write_public_key(operator_key, tmp_path / "operator.pem")
    path = tmp_path / "site.toml"
    path.write_text(site_toml(tmp_path / "box", [key_path]), encoding="utf-8")
    return path


@pytest.fixture(name="site_config")
def management_site_config(config_path: Path) -> SiteConfig:
    """The test site read from its configuration file."""
    return load_config(config_path)


@pytest.fixture(name="box")
async def management_box(
    site_config: SiteConfig,
    credentials: SiteCredentials,
    mosquitto: BrokerHandle,
    config_path: Path,
) -> AsyncIterator[Box]:
    """The box's services with their configuration file, on a trusted clock."""
    async with Box(
        site_config,
        SystemClock(TimeSource.NTP),
        credentials,
        mosquitto.host,
        mosquitto.port,
        broker_kind=mosquitto.kind,
        health_interval_s=0.05,
        config_path=config_path,
    ) as running:
        await asyncio.wait_for(running.bus.connected.wait(), timeout=TIMEOUT_S)
        yield running


def sign_command(
    key: Ed25519PrivateKey,
    name: str,
    body: dict[str, Any] | None = None,
    *,
    box: str = BOX_ID,
    site: str = SITE_ID,
    issued_at: float | None = None,
    validity_s: float = 300.0,
) -> dict[str, Any]:
    """Return a signed command ``name`` for ``box`` with the arguments ``body``."""
    return sign_document(
        key,
        kind="command",
        document_type=name,
        site=site,
        body={**(body or {}), "box": box},
        issued_at=time.time() if issued_at is None else issued_at,
        validity_s=validity_s,
    )


class Operator:
    """The site's operator account: sends commands, reads their results."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_result(self, incoming: Incoming) -> None:
        self.results.put_nowait(orjson.loads(incoming.payload)["data"])

    async def send_raw(self, name: str, payload: bytes) -> dict[str, Any]:
        """Publish ``payload`` on command topic ``name``; return the next result."""
        await self.bus.publish(self.bus.topics.command(BOX_ID, name), payload)
        return await asyncio.wait_for(self.results.get(), TIMEOUT_S)

    async def send(self, name: str, document: dict[str, Any]) -> dict[str, Any]:
        """Publish a signed document on command topic ``name``; return its result."""
        return await self.send_raw(name, orjson.dumps(document))


@pytest.fixture(name="operator")
async def operator_fixture(
    make_client: ClientFactory, box: Box
) -> AsyncIterator[Operator]:
    """A connected operator client whose result subscription is in place."""
    async with make_client(
        "operator", "operator", "ops", announce=False, wait=False
    ) as bus:
        client = Operator(bus)
        bus.subscribe(bus.topics.command_result(BOX_ID), client.on_result)
        await asyncio.wait_for(bus.connected.wait(), TIMEOUT_S)
        yield client
