"""The box's network interfaces, as ``console/system`` lists them.

Names come from the OS (``socket.if_nameindex``). Kind, state and address
come from iproute2's ``ip -j addr`` when it is installed; without it, the
list has names only.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
from typing import Any

_LOGGER = logging.getLogger(__name__)

_IP_TIMEOUT_S = 2.0
# Name prefixes of common Linux interface kinds, checked in order.
_KINDS = (
    ("lo", "loopback"),
    ("wl", "wifi"),
    ("wlan", "wifi"),
    ("en", "ethernet"),
    ("eth", "ethernet"),
    ("usb", "usb"),
    ("ap", "wifi"),
    ("br", "bridge"),
    ("docker", "bridge"),
    ("veth", "virtual"),
    ("tun", "vpn"),
    ("wg", "vpn"),
)


def network_interfaces() -> list[dict[str, Any]]:
    """Return ``{"name", "kind", "state", "address"}`` for each interface."""
    details = _ip_addresses()
    result = []
    for _index, name in socket.if_nameindex():
        detail = details.get(name, {})
        result.append(
            {
                "name": name,
                "kind": detail.get("kind") or _kind_of(name),
                "state": detail.get("state"),
                "address": detail.get("address"),
            }
        )
    return result


def _kind_of(name: str) -> str:
    return next((kind for prefix, kind in _KINDS if name.startswith(prefix)), "other")


def _ip_addresses() -> dict[str, dict[str, Any]]:
    """Return the state and first IPv4 (else IPv6) address of each interface."""
    ip = shutil.which("ip")
    if ip is None:
        return {}
    try:
        completed = subprocess.run(
            [ip, "-j", "addr"],
            capture_output=True,
            check=True,
            timeout=_IP_TIMEOUT_S,
            text=True,
        )
        entries = json.loads(completed.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as err:
        _LOGGER.warning("Could not list network addresses with %s: %s", ip, err)
        return {}
    result: dict[str, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("ifname"), str):
            continue
        addresses = [
            info
            for info in entry.get("addr_info", [])
            if isinstance(info, dict) and isinstance(info.get("local"), str)
        ]
        addresses.sort(key=lambda info: info.get("family") != "inet")
        first = addresses[0] if addresses else None
        result[entry["ifname"]] = {
            "kind": "loopback" if entry.get("link_type") == "loopback" else None,
            "state": str(entry.get("operstate", "unknown")).lower(),
            "address": None
            if first is None
            else f"{first['local']}/{first.get('prefixlen', '')}".rstrip("/"),
        }
    return result
