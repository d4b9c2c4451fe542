"""The site file of a simulated night, for the organiser commands.

``nightbox demo --data-dir DIR`` writes the configuration it runs as
``DIR/site.toml``, so ``nightbox report``, ``nightbox portal sign`` and
``band-codes``, ``nightbox guest erase`` and ``nightbox run`` can be given
``--config DIR/site.toml`` and read the demo box's store. The demo's site
exists only as a :class:`~appliance.config.SiteConfig`, so
:func:`site_document` turns one back into the tables that
:func:`~appliance.config.parse_config` reads. Paths inside the data folder
are written relative to it, so the folder can be moved. The operator public
keys, which the site file names by path, are written to ``operator-keys/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives import serialization

from appliance.commerce.config import CommerceConfig, DropConfig, PromoCode, SetSlot
from appliance.config import SiteConfig, parse_config
from appliance.errors import ConfigError
from appliance.signed_documents import key_id
from provisioning.secret_file import write_file_atomically

SITE_FILE_NAME = "site.toml"
OPERATOR_KEY_FOLDER = "operator-keys"


def write_site_file(config: SiteConfig, night: str) -> Path:
    """Write ``config`` as ``site.toml`` in its data folder and return the path.

    ``night`` is the simulated night's date, named in the file's header for
    ``nightbox report --night``. The file names band identity keys, so it
    gets mode 0600. The document is parsed as ``nightbox run`` parses it
    before it is written, and ConfigError is raised when it does not load.
    """
    folder = config.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    key_files = _write_operator_keys(config, folder)
    text = _header(night) + tomli_w.dumps(site_document(config, folder, key_files))
    try:
        parse_config(tomllib.loads(text), base_dir=folder)
    except ConfigError as err:
        raise ConfigError(f"the demo's site file would not load: {err}") from err
    path = folder / SITE_FILE_NAME
    write_file_atomically(path, text.encode("utf-8"), 0o600)
    return path


def site_document(
    config: SiteConfig, folder: Path, operator_key_files: list[str]
) -> dict[str, Any]:
    """Return the TOML document of ``config`` for a site file in ``folder``.

    ``operator_key_files`` are the paths of the public key files of
    ``config.fleet.operator_keys``, as the file should name them. Values
    equal to their default are left out. Times are written as date-times
    with the offset of ``site.timezone``.
    """
    commerce = config.commerce
    document: dict[str, Any] = {
        "site": {
            "id": config.site_id,
            "name": config.site_name,
            "timezone": commerce.timezone,
            "night_rollover_hour": commerce.night_rollover_hour,
            "portal_url": commerce.portal_url,
        },
        "box": {
            "id": config.box_id,
            "data_dir": _path_text(config.data_dir, folder),
            "scanner": config.scanner,
            "clock_trusted": config.clock_trusted,
        },
        "broker": _fields(config.broker),
        "bands": _bands(config),
        "checkout": _fields(config.checkout),
        "readers": [_fields(reader, keep={"id", "role"}) for reader in config.readers],
        "kits": {
            "require_checkout": config.kits_require_checkout,
            "low_stock": config.kit_low_stock,
            "offline_rule": config.kits_offline_rule,
        },
        "coupons": {
            "ttl_h": config.coupon_ttl_s / 3600.0,
            "offer": config.coupon_offer,
        },
        "fleet": {
            "operator_keys": operator_key_files,
            "telemetry_interval_s": config.fleet.telemetry_interval_s,
        },
        **_commerce(commerce),
    }
    if config.reader_network is not None:
        network = config.reader_network
        document["reader_network"] = {
            "wifi_ssid": network.wifi_ssid,
            "broker_host": network.broker_host,
            "broker_port": network.broker_port,
        }
        if network.wifi_password_file is not None:
            document["reader_network"]["wifi_password_file"] = _path_text(
                network.wifi_password_file, folder
            )
    if config.sync is not None:
        sync = config.sync
        document["sync"] = {
            "broker": str(sync.broker),
            "credentials_file": _path_text(sync.credentials_file, folder),
            "window": sync.window,
            "retry_max_s": sync.retry_max_s,
        }
        if sync.ca_file is not None:
            document["sync"]["ca_file"] = _path_text(sync.ca_file, folder)
    if config.studio is not None:
        # parse_studio requires the camera even where it equals the default.
        document["studio"] = _fields(config.studio, keep={"camera"})
    if config.portal is not None:
        document["portal"] = _fields(config.portal)
    assets = _fields(config.assets, skip={"preload_dir"})
    if config.assets.preload_dir is not None:
        assets["preload_dir"] = _path_text(config.assets.preload_dir, folder)
    document["assets"] = assets
    return {name: table for name, table in document.items() if table != {}}


def _header(night: str) -> str:
    return (
        "# The site of a simulated night, written by `nightbox demo --data-dir`.\n"
        "# Relative paths resolve from this file's folder, the demo box's data\n"
        f"# folder. The night on the simulated clock is {night}, for example:\n"
        f"#   nightbox report --config site.toml --night {night}\n\n"
    )


def _write_operator_keys(config: SiteConfig, folder: Path) -> list[str]:
    """Write each operator public key as PEM and return the paths the file names."""
    names = []
    for public_key in config.fleet.operator_keys.values():
        name = f"{OPERATOR_KEY_FOLDER}/{key_id(public_key)}.pem"
        (folder / OPERATOR_KEY_FOLDER).mkdir(exist_ok=True)
        pem = public_key.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        write_file_atomically(folder / name, pem, 0o644)
        names.append(name)
    return names


def _bands(config: SiteConfig) -> dict[str, Any]:
    bands: dict[str, Any] = {
        "ibeacon_uuid": config.ibeacon_uuid,
        "altbeacon_prefix": config.altbeacon_prefix,
        "eddystone_namespace": config.eddystone_namespace,
    }
    bands = {key: value.hex() for key, value in bands.items() if value is not None}
    if config.bands:
        bands["registered"] = [_fields(band, keep={"id"}) for band in config.bands]
    return bands


def _commerce(commerce: CommerceConfig) -> dict[str, Any]:
    """Return the top-level commerce tables of ``commerce``, empty ones left out."""
    zone = zoneinfo.ZoneInfo(commerce.timezone)
    tables: dict[str, Any] = {
        "wallet": _fields(commerce.wallet),
        "tokens": {"max_ttl_h": round(commerce.token_max_ttl_s / 3600.0)},
        "terminals": [{"id": terminal} for terminal in commerce.terminals],
        "items": [_fields(item, keep={"id", "name"}) for item in commerce.items],
        "creators": [_fields(creator) for creator in commerce.creators],
        "promo_codes": [_promo(promo, zone) for promo in commerce.promo_codes],
        "tiers": [_fields(tier, keep={"id"}) for tier in commerce.tiers],
        "members": [
            {"band": band, "tier": tier} for band, tier in commerce.members.items()
        ],
        "partner_offers": [_fields(offer) for offer in commerce.partner_offers],
        "sets": [_set(slot, zone) for slot in commerce.sets],
        "drops": [_drop(drop, zone) for drop in commerce.drops],
    }
    return {name: table for name, table in tables.items() if table}


def _promo(promo: PromoCode, zone: zoneinfo.ZoneInfo) -> dict[str, Any]:
    table = _fields(promo, keep={"code", "max_uses"}, skip={"expires_at"})
    if promo.expires_at is not None:
        table["expires_at"] = _time(promo.expires_at, zone)
    return table


def _set(slot: SetSlot, zone: zoneinfo.ZoneInfo) -> dict[str, Any]:
    table = _fields(slot, skip={"starts_at", "ends_at"})
    table["starts_at"] = _time(slot.starts_at, zone)
    table["ends_at"] = _time(slot.ends_at, zone)
    return table


def _drop(drop: DropConfig, zone: zoneinfo.ZoneInfo) -> dict[str, Any]:
    # The file gives early access in whole minutes and the reservation in
    # whole seconds, so those two keys differ from the dataclass fields.
    names = {"id", "item", "price", "quantity", "per_guest_limit", "creator"}
    table = _fields(drop, keep={"id", "item", "price", "quantity"}, only=names)
    table["starts_at"] = _time(drop.starts_at, zone)
    table["ends_at"] = _time(drop.ends_at, zone)
    if drop.early_access_s:
        table["early_access_min"] = round(drop.early_access_s / 60.0)
    table["reservation_s"] = round(drop.reservation_s)
    if drop.quotas:
        table["quotas"] = dict(drop.quotas)
    return table


def _time(t: float, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, zone)


def _fields(
    instance: Any,
    *,
    keep: set[str] | None = None,
    skip: set[str] | None = None,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Return a dataclass's fields as a TOML table, with default values left out.

    Each field's name is its key in the site file. Fields in ``keep`` are
    written even at their default, None is never written, tuples become
    arrays, bytes become hex and paths become text.
    """
    table: dict[str, Any] = {}
    for field in dataclasses.fields(instance):
        if (skip and field.name in skip) or (only and field.name not in only):
            continue
        value = getattr(instance, field.name)
        if value is None:
            continue
        if field.name not in (keep or set()) and value == _default(field):
            continue
        table[field.name] = _toml_value(value)
    return table


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _toml_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_toml_value(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    return value


def _path_text(path: Path, folder: Path) -> str:
    """Return ``path`` relative to ``folder`` when it lies inside it, else absolute."""
    resolved = path.resolve()
    try:
        relative = resolved.relative_to(folder.resolve())
    except ValueError:
        return str(resolved)
    return relative.as_posix()
