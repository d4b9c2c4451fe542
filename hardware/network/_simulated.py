"""A simulated network: a few interfaces and Wi-Fi networks that a join can reach.

The setup wizard uses it on machines without NetworkManager, and tests drive
it. Addresses come from the documentation ranges (RFC 5737, RFC 3849), so
nothing here names a real host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hardware.network._base import (
    NetworkBackend,
    NetworkInterface,
    NetworkNotFoundError,
    WifiNetwork,
    WrongPasswordError,
    strongest_per_ssid,
)

# The password of the simulated secured networks. It protects nothing: the
# networks exist only inside this simulator.
SIMULATED_WIFI_PASSWORD = "nightbox-sim"


@dataclass(frozen=True, slots=True)
class SimulatedWifi:
    """A Wi-Fi network of the simulator; ``password`` None means an open network."""

    ssid: str
    signal: int
    password: str | None


_DEFAULT_NETWORKS = (
    SimulatedWifi("venue-staff", 82, SIMULATED_WIFI_PASSWORD),
    SimulatedWifi("venue-guests", 64, None),
    SimulatedWifi("bar: back office", 35, SIMULATED_WIFI_PASSWORD),
)
_WIFI_ADDRESS = "192.0.2.23/24"


class SimulatedNetwork(NetworkBackend):
    """A box with a loopback, an unplugged Ethernet port and a Wi-Fi adapter.

    ``joins`` records every join request as ``(ssid, accepted)``, never the
    password.
    """

    name = "simulator"

    def __init__(self, networks: tuple[SimulatedWifi, ...] = _DEFAULT_NETWORKS) -> None:
        self._networks = {network.ssid: network for network in networks}
        self._interfaces = {
            "lo": NetworkInterface(
                "lo", "loopback", "connected (externally)", "lo", ("127.0.0.1/8",)
            ),
            "eth0": NetworkInterface("eth0", "ethernet", "unavailable", ""),
            "wlan0": NetworkInterface("wlan0", "wifi", "disconnected", ""),
        }
        self.joins: list[tuple[str, bool]] = []

    def interfaces(self) -> list[NetworkInterface]:
        return list(self._interfaces.values())

    def scan_wifi(self) -> list[WifiNetwork]:
        joined = self._interfaces["wlan0"].connection
        return strongest_per_ssid(
            [
                WifiNetwork(
                    network.ssid,
                    network.signal,
                    "WPA2" if network.password is not None else "",
                    in_use=network.ssid == joined,
                )
                for network in self._networks.values()
            ]
        )

    def connect_wifi(
        self, ssid: str, password: str | None, interface: str | None = None
    ) -> NetworkInterface:
        name = interface or "wlan0"
        adapter = self._interfaces.get(name)
        if adapter is None or adapter.kind != "wifi":
            raise NetworkNotFoundError(f"no Wi-Fi interface called {name!r}")
        network = self._networks.get(ssid)
        if network is None:
            self.joins.append((ssid, False))
            raise NetworkNotFoundError(
                f"no Wi-Fi network called {ssid!r} is in range; scan again"
            )
        if network.password is not None and password != network.password:
            self.joins.append((ssid, False))
            raise WrongPasswordError(
                f"Wi-Fi network {ssid!r} rejected the password; check it and retry"
            )
        self.joins.append((ssid, True))
        joined = dataclasses.replace(
            adapter, state="connected", connection=ssid, addresses=(_WIFI_ADDRESS,)
        )
        self._interfaces[name] = joined
        return joined
