"""The ``[sync]`` and ``[fleet]`` sections of the site configuration.

``[sync]`` names the fleet's upstream broker; without it the box stays
offline and keeps every event in its outbox. ``[fleet]`` lists the operator
public keys whose signed commands and bundles the box accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance._toml_values import integer, number, reject_unknown, string, table
from appliance.bus.url import BrokerUrl, is_loopback, parse_broker_url
from appliance.errors import ConfigError
from appliance.signed_documents import key_id

SYNC_KEYS = {"broker", "ca_file", "credentials_file", "window", "retry_max_s"}
FLEET_KEYS = {"operator_keys", "telemetry_interval_s"}


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """The upstream broker the box forwards its outbox to, and how."""

    broker: BrokerUrl
    ca_file: Path | None
    credentials_file: Path
    # QoS 1 messages in flight to the upstream broker at once.
    window: int = 256
    # The maximum wait between reconnect attempts, in seconds.
    retry_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The operator keys that may manage the box, and its telemetry interval."""

    operator_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    telemetry_interval_s: float = 10.0


def parse_sync(
    raw: dict[str, Any], *, base_dir: Path, data_dir: Path
) -> SyncConfig | None:
    """Return the ``[sync]`` section, or None when the box has no upstream."""
    section = table(raw, "sync", required=False)
    if not section:
        return None
    reject_unknown(section, "sync", SYNC_KEYS)
    broker = parse_broker_url(string(section, "sync.broker"))
    if not broker.tls and not is_loopback(broker.host):
        raise ConfigError(
            f"sync.broker = {str(broker)!r} sends events and credentials "
            "unencrypted; use mqtts:// (plain mqtt:// is only for a broker on "
            "this machine)"
        )
    ca_text = section.get("ca_file")
    ca_file = None if ca_text is None else _path(section, "sync.ca_file", base_dir)
    credentials = data_dir / "secrets" / "upstream.json"
    if "credentials_file" in section:
        credentials = _path(section, "sync.credentials_file", base_dir)
    return SyncConfig(
        broker=broker,
        ca_file=ca_file,
        credentials_file=credentials,
        window=integer(section, "sync.window", 256, minimum=1, maximum=65_535),
        retry_max_s=number(
            section, "sync.retry_max_s", 30.0, minimum=0.1, maximum=3600
        ),
    )


def parse_fleet(raw: dict[str, Any], *, base_dir: Path) -> FleetConfig:
    """Return the ``[fleet]`` section; with no keys no command is accepted."""
    section = table(raw, "fleet", required=False)
    reject_unknown(section, "fleet", FLEET_KEYS)
    paths = section.get("operator_keys", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ConfigError(
            "fleet.operator_keys must be an array of paths to Ed25519 public key "
            "files (PEM)"
        )
    keys: dict[str, Ed25519PublicKey] = {}
    for index, text in enumerate(paths):
        path = _resolve(text, base_dir)
        public_key = load_public_key(path, f"fleet.operator_keys[{index}]")
        keys[key_id(public_key)] = public_key
    return FleetConfig(
        operator_keys=keys,
        telemetry_interval_s=number(
            section, "fleet.telemetry_interval_s", 10.0, minimum=0.5, maximum=3600
        ),
    )


def load_public_key(path: Path, where: str) -> Ed25519PublicKey:
    """Read an Ed25519 public key in PEM; raise ConfigError naming ``where``."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"{where}: cannot read {path} ({err.strerror}); give the operator's "
            "public key file made by `nightbox fleet keygen`"
        ) from err
    try:
        public_key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise ConfigError(f"{where}: {path} is not a PEM public key") from err
    if not isinstance(public_key, Ed25519PublicKey):
        raise ConfigError(f"{where}: {path} is not an Ed25519 public key")
    return public_key


def _path(section: dict[str, Any], key: str, base_dir: Path) -> Path:
    text = string(section, key)
    if not text.strip():
        raise ConfigError(f"{key} is empty; give a path or remove the key")
    return _resolve(text, base_dir)


def _resolve(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path
