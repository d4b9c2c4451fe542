"""A box's store and bundle applier for the bundle tests, with a trusted key.

The store is a real SQLite file in the test's folder, priced with the
economy test site, and ``site.toml`` is the file a config bundle replaces.
A test module that uses the ``operator_key`` fixture binds it to that name
(``operator_key = bundle_box.operator_key``), so that pytest finds it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from conftest import make_site_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from economy.economy_site import economy_commerce

from appliance.clock import ManualClock
from appliance.commerce._pricing import Pricing
from appliance.config import SiteConfig
from appliance.remote.bundles import BundleApplier
from appliance.remote.config import FleetConfig
from appliance.signed_documents import key_id
from appliance.store import Store
from appliance.tokens import EdgeTokens, box_tokens

# 2027-01-15 08:00:00 UTC.
NOW = 1_800_000_000.0
SITE = "test"
# The tables a bundle may change; a rejected bundle leaves them as they were.
TABLES = (
    "members",
    "online_topups",
    "wallets",
    "ledger_transactions",
    "ledger_entries",
    "revoked_tokens",
    "asset_manifests",
    "signed_nonces",
    "bundle_versions",
    "outbox",
)
SITE_TOML = """\
[site]
id = "test"
name = "Test venue"

[box]
id = "box-1"
data_dir = "data"

[[readers]]
id = "exit-1"
role = "exit"

[wallet]
currency = "EUR"
max_charge = 20000
"""


@dataclasses.dataclass
class BundleBox:
    """The box side of a bundle test: its store, clock, tokens and applier."""

    config: SiteConfig
    store: Store
    clock: ManualClock
    tokens: EdgeTokens
    applier: BundleApplier
    config_path: Path


def open_bundle_box(folder: Path, key: Ed25519PrivateKey) -> BundleBox:
    """Open a box in ``folder`` that trusts ``key``; the caller closes its store."""
    public_key = key.public_key()
    config = make_site_config(
        folder / "box",
        commerce=economy_commerce(NOW),
        fleet=FleetConfig(operator_keys={key_id(public_key): public_key}),
    )
    clock = ManualClock(NOW)
    store = Store(folder / "box" / "nightbox.sqlite3", clock)
    Pricing(config.commerce).seed(store)
    tokens = box_tokens(config, store, clock)
    config_path = folder / "site.toml"
    config_path.write_text(SITE_TOML, encoding="utf-8")
    applier = BundleApplier(store, config, clock, tokens, config_path=config_path)
    return BundleBox(config, store, clock, tokens, applier, config_path)


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the tables that bundles change."""
    return {
        table: store.query(f"SELECT * FROM {table} ORDER BY rowid") for table in TABLES
    }


@pytest.fixture
def operator_key() -> Ed25519PrivateKey:
    """A fresh operator key, which the box of ``open_bundle_box`` trusts."""
    return Ed25519PrivateKey.generate()
