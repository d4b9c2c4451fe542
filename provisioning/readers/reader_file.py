"""The reader's configuration file on the board, ``/reader.json``.

The firmware reads it at boot and rejects an invalid file, naming the key.
Wi-Fi readers get the network and their own broker login; readers on a USB
serial uplink get neither, because the box publishes for them. Kit readers
also get a ``kit`` section. The file contains passwords, so nothing here logs
or returns it as text for printing.
"""

from __future__ import annotations

import logging
import math
import stat
import string
from pathlib import Path
from typing import Any

from appliance.config import ReaderConfig, ReaderNetwork, SiteConfig
from provisioning.credentials import BrokerAccount
from provisioning.readers._errors import ReaderArgumentError

_LOGGER = logging.getLogger(__name__)

READER_FILE = "/reader.json"
READER_FILE_VERSION = 1
# Scan and reporting settings that the firmware also uses when a key is
# missing. One batch a second is what the box's check-out window expects
# (docs/mqtt.md, "Sightings batch"). A 30 ms window every 100 ms leaves
# the radio time for Wi-Fi on the ESP32's shared antenna. 600 batches
# buffer 10 minutes of uplink loss.
DEFAULT_TIMING = {
    "batch_ms": 1000,
    "scan_interval_us": 100_000,
    "scan_window_us": 30_000,
    "ring_batches": 600,
    "status_s": 30,
    "watchdog_ms": 30_000,
}
# GPIO numbers of the kit station's button (the ESP32 DevKit's BOOT
# button), its green and red lights, and no buzzer.
DEFAULT_KIT = {
    "button_pin": 0,
    "green_pin": 25,
    "red_pin": 26,
    "buzzer_pin": None,
    "answer_ms": 800,
    "near_dbm": -60,
}
# WPA2-Personal: a passphrase of 8-63 printable ASCII characters, or the
# 256-bit key itself as 64 hex digits (IEEE 802.11i, annex H.4).
_MIN_PASSPHRASE = 8
_MAX_PASSPHRASE = 63
_PSK_HEX_LENGTH = 64


def read_wifi_password(network: ReaderNetwork) -> str:
    """Return the Wi-Fi password from ``wifi_password_file``, or "" for an open network.

    One trailing line break is removed. Raises ReaderArgumentError, naming
    the file but never its content, when the file cannot be read, has more
    than one line or does not hold a WPA2 passphrase. A file that other
    users may read is used, with a warning in the log.
    """
    path = network.wifi_password_file
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReaderArgumentError(
            f"cannot read the Wi-Fi password file {path} "
            f"(reader_network.wifi_password_file): {err}; create it with the "
            "network's password on one line"
        ) from err
    password = text.removesuffix("\n").removesuffix("\r")
    if "\n" in password or "\r" in password:
        raise ReaderArgumentError(
            f"the Wi-Fi password file {path} has more than one line; it must "
            "contain only the network's password, on one line"
        )
    if not _is_wpa_password(password):
        raise ReaderArgumentError(
            f"the Wi-Fi password in {path} is not a WPA2 password (8-63 "
            "printable ASCII characters, or 64 hex digits); the file must "
            "contain only the network's password, on one line"
        )
    _warn_if_readable(path)
    return password


def _warn_if_readable(path: Path) -> None:
    """Log a warning when users other than the owner may read or change ``path``."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        _LOGGER.warning(
            "The Wi-Fi password file %s has mode %04o, so other users of the box "
            "may read it; run chmod 600 %s",
            path,
            stat.S_IMODE(mode),
            path,
        )


def _is_wpa_password(password: str) -> bool:
    if len(password) == _PSK_HEX_LENGTH:
        return all(character in string.hexdigits for character in password)
    return _MIN_PASSPHRASE <= len(password) <= _MAX_PASSPHRASE and all(
        " " <= character <= "~" for character in password
    )


def reader_settings(
    config: SiteConfig,
    reader: ReaderConfig,
    *,
    account: BrokerAccount | None,
    wifi_password: str | None,
) -> dict[str, Any]:
    """Build the content of ``/reader.json`` for ``reader`` of the site.

    A Wi-Fi reader needs ``[reader_network]``, its broker ``account`` and
    ``wifi_password``. Raises ReaderArgumentError when they are missing.
    """
    settings: dict[str, Any] = {
        "v": READER_FILE_VERSION,
        "site": config.site_id,
        "reader": reader.id,
        "role": reader.role,
        "zone": reader.zone,
        "uplink": reader.uplink,
    }
    if reader.uplink == "wifi":
        network = config.reader_network
        if network is None or account is None or wifi_password is None:
            raise ReaderArgumentError(
                f"reader {reader.id} uses the Wi-Fi uplink, but the site file has "
                "no [reader_network] table; add wifi_ssid, wifi_password_file "
                "and broker_host there, or use --uplink serial"
            )
        settings["wifi"] = {"ssid": network.wifi_ssid, "password": wifi_password}
        settings["broker"] = {
            "host": network.broker_host,
            "port": network.broker_port,
            "username": account.username,
            "password": account.password,
        }
    settings["bands"] = _band_identities(config)
    settings.update(DEFAULT_TIMING)
    # The box raises scan-stalled after checkout.stall_s, and the reader
    # restarts its scan after the same time. The firmware reads whole seconds.
    settings["stall_s"] = max(1, math.ceil(config.checkout.stall_s))
    if reader.role == "kit":
        settings["kit"] = {**DEFAULT_KIT, "offline_rule": config.kits_offline_rule}
    return settings


def _band_identities(config: SiteConfig) -> dict[str, Any]:
    return {
        "ibeacon_uuid": _hex(config.ibeacon_uuid),
        "altbeacon_prefix": _hex(config.altbeacon_prefix),
        "eddystone_namespace": _hex(config.eddystone_namespace),
        # Eddystone-EID frames carry no site identity, so the reader forwards
        # them only when the site registers bands with an EID key that the box
        # can resolve them with.
        "eid": any(band.eid_identity_key is not None for band in config.bands),
    }


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()
