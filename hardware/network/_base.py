"""The network interface every backend implements, and what it reports."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


class NetworkError(RuntimeError):
    """The network could not be listed, scanned or joined."""


class WrongPasswordError(NetworkError, PermissionError):
    """A Wi-Fi network rejected the password it was joined with."""


class NetworkNotFoundError(NetworkError, LookupError):
    """No Wi-Fi network or interface has the requested name."""


@dataclass(frozen=True, slots=True)
class NetworkInterface:
    """One network interface: its kind, state and IP addresses in CIDR form.

    ``kind`` and ``state`` use NetworkManager's words (``wifi``, ``ethernet``;
    ``connected``, ``disconnected``, ``unavailable``).
    """

    name: str
    kind: str
    state: str
    connection: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WifiNetwork:
    """A Wi-Fi network heard in a scan; ``signal`` is in percent (0-100)."""

    ssid: str
    signal: int
    security: str
    in_use: bool = False

    @property
    def needs_password(self) -> bool:
        """Whether joining needs a password (any security but an open network)."""
        return self.security not in ("", "--")


class NetworkBackend(ABC):
    """Lists interfaces, scans for Wi-Fi networks and joins one.

    Calls block until the backend returns, so a user interface runs them in
    a worker thread. Errors are :class:`NetworkError` subclasses.
    """

    name: str

    @abstractmethod
    def interfaces(self) -> list[NetworkInterface]:
        """Return every interface with its state and addresses."""

    @abstractmethod
    def scan_wifi(self) -> list[WifiNetwork]:
        """Return the Wi-Fi networks in range, strongest first, one per SSID."""

    @abstractmethod
    def connect_wifi(
        self, ssid: str, password: str | None, interface: str | None = None
    ) -> NetworkInterface:
        """Join ``ssid`` and return the Wi-Fi interface as it is afterwards.

        Raises WrongPasswordError when the password is refused and
        NetworkNotFoundError when no network is called ``ssid``.
        """


def strongest_per_ssid(networks: list[WifiNetwork]) -> list[WifiNetwork]:
    """Keep one entry per SSID (the strongest, or the one in use), strongest first.

    A network with several access points is heard once per access point, and
    hidden networks (an empty SSID) cannot be joined by name, so they go.
    """
    best: dict[str, WifiNetwork] = {}
    for network in networks:
        if not network.ssid:
            continue
        known = best.get(network.ssid)
        if known is None or (network.in_use, network.signal) > (
            known.in_use,
            known.signal,
        ):
            best[network.ssid] = network
    return sorted(best.values(), key=lambda n: (-n.signal, n.ssid))
