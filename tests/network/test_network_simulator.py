"""The simulated network that the setup wizard uses where NetworkManager is missing."""

from __future__ import annotations

import pytest

from hardware.network import (
    SIMULATED_WIFI_PASSWORD,
    NetworkNotFoundError,
    SimulatedNetwork,
    SimulatedWifi,
    WrongPasswordError,
)


def test_join_needs_the_right_password() -> None:
    network = SimulatedNetwork()
    with pytest.raises(WrongPasswordError, match="'venue-staff'"):
        network.connect_wifi("venue-staff", "guess")
    wifi = {found.name: found for found in network.interfaces()}["wlan0"]
    assert wifi.state == "disconnected"
    joined = network.connect_wifi("venue-staff", SIMULATED_WIFI_PASSWORD)
    assert joined.state == "connected"
    assert joined.connection == "venue-staff"
    assert joined.addresses == ("192.0.2.23/24",)
    assert network.joins == [("venue-staff", False), ("venue-staff", True)]
    in_use = [found.ssid for found in network.scan_wifi() if found.in_use]
    assert in_use == ["venue-staff"]


def test_open_network_and_unknown_names() -> None:
    network = SimulatedNetwork((SimulatedWifi("open-air", 50, None),))
    assert network.connect_wifi("open-air", None).connection == "open-air"
    with pytest.raises(NetworkNotFoundError, match="'elsewhere'"):
        network.connect_wifi("elsewhere", None)
    with pytest.raises(NetworkNotFoundError, match="'eth0'"):
        network.connect_wifi("open-air", None, "eth0")


def test_scan_lists_strongest_first() -> None:
    networks = SimulatedNetwork().scan_wifi()
    signals = [found.signal for found in networks]
    assert signals == sorted(signals, reverse=True)
    assert [found.needs_password for found in networks] == [True, False, True]
