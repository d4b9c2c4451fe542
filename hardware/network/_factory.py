"""Choose the network backend: NetworkManager where nmcli exists, else the simulator."""

from __future__ import annotations

import os
import shutil

from hardware.network._base import NetworkBackend
from hardware.network._nmcli import NmcliBackend
from hardware.network._simulated import SimulatedNetwork

ENVIRONMENT_VARIABLE = "NIGHTBOX_NETWORK"
BACKENDS = ("networkmanager", "simulator")


def create_network_backend(backend: str | None = None) -> NetworkBackend:
    """Return the backend named by ``NIGHTBOX_NETWORK``, ``backend`` or the machine.

    With neither set, NetworkManager is used when ``nmcli`` is on PATH and
    the simulator otherwise. Raises ValueError naming an unknown backend.
    """
    chosen = os.environ.get(ENVIRONMENT_VARIABLE) or backend
    if chosen is None:
        chosen = "networkmanager" if shutil.which("nmcli") else "simulator"
    if chosen == "networkmanager":
        return NmcliBackend()
    if chosen == "simulator":
        return SimulatedNetwork()
    raise ValueError(
        f"unknown network backend {chosen!r}; use one of {', '.join(BACKENDS)}"
    )
