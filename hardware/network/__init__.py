"""The box's network: list interfaces, scan Wi-Fi and join a network.

Two backends implement :class:`NetworkBackend`: NetworkManager through
``nmcli`` (:class:`NmcliBackend`) and a simulator (:class:`SimulatedNetwork`).
:func:`create_network_backend` picks NetworkManager when ``nmcli`` is on
PATH, and the simulator otherwise or when ``NIGHTBOX_NETWORK=simulator``.
"""

from hardware.network._base import (
    NetworkBackend,
    NetworkError,
    NetworkInterface,
    NetworkNotFoundError,
    WifiNetwork,
    WrongPasswordError,
)
from hardware.network._factory import create_network_backend
from hardware.network._nmcli import NmcliBackend, split_terse
from hardware.network._simulated import (
    SIMULATED_WIFI_PASSWORD,
    SimulatedNetwork,
    SimulatedWifi,
)

__all__ = [
    "SIMULATED_WIFI_PASSWORD",
    "NetworkBackend",
    "NetworkError",
    "NetworkInterface",
    "NetworkNotFoundError",
    "NmcliBackend",
    "SimulatedNetwork",
    "SimulatedWifi",
    "WifiNetwork",
    "WrongPasswordError",
    "create_network_backend",
    "split_terse",
]
