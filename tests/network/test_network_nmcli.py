"""The NetworkManager backend against a stand-in ``nmcli`` put first on PATH.

NetworkManager does not run on the test machine, so a small script plays
nmcli: it records its argv and prints output in nmcli's terse format, with
':' and '\\' inside values escaped by a backslash as nmcli(1) documents.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hardware.network import (
    NetworkError,
    NmcliBackend,
    SimulatedNetwork,
    WrongPasswordError,
    create_network_backend,
    split_terse,
)

STAND_IN = r"""
import json, os, sys

arguments = sys.argv[1:]
with open(os.environ["NMCLI_LOG"], "a") as log:
    log.write(json.dumps(arguments) + "\n")
if os.environ.get("NMCLI_EXIT") == "8":
    print("Error: NetworkManager is not running.", file=sys.stderr)
    sys.exit(8)
if arguments[-2:] == ["device", "status"]:
    print("wlan0:wifi:connected:Home\\:Net")
    print("eth0:ethernet:unavailable:")
    print("lo:loopback:connected (externally):lo")
elif arguments[-2:] == ["device", "show"]:
    print("GENERAL.DEVICE:wlan0")
    print("IP4.ADDRESS[1]:192.0.2.10/24")
    print("IP6.ADDRESS[1]:fe80\\:\\:1/64")
    print("")
    print("GENERAL.DEVICE:eth0")
    print("")
    print("GENERAL.DEVICE:lo")
    print("IP4.ADDRESS[1]:127.0.0.1/8")
    print("IP6.ADDRESS[1]:\\:\\:1/128")
elif "list" in arguments:
    print("*:Home\\:Net:70:WPA2")
    print(" :Cafe:40:")
    print(" :Home\\:Net:90:WPA2")
    print(" ::20:WPA2")
    print(" :back\\\\slash:55:WPA1 WPA2")
elif "connect" in arguments:
    if arguments[arguments.index("password") + 1] != os.environ["NMCLI_PASSWORD"]:
        print(
            "Error: Connection activation failed: (7) Secrets were required, "
            "but not provided.",
            file=sys.stderr,
        )
        sys.exit(4)
    print("Device 'wlan0' successfully activated.")
else:
    print("Error: unexpected arguments.", file=sys.stderr)
    sys.exit(2)
"""
STATUS = ["-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device", "status"]
SHOW = ["-t", "-f", "GENERAL.DEVICE,IP4.ADDRESS,IP6.ADDRESS", "device", "show"]
SCAN = [
    "-t",
    "-f",
    "IN-USE,SSID,SIGNAL,SECURITY",
    "device",
    "wifi",
    "list",
    "--rescan",
    "yes",
]


@pytest.fixture
def nmcli_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in nmcli first on PATH; return the file of its argv lines."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nmcli"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    log = tmp_path / "nmcli-argv.jsonl"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NMCLI_LOG", str(log))
    monkeypatch.setenv("NMCLI_PASSWORD", "right: pass\\word")
    monkeypatch.delenv("NIGHTBOX_NETWORK", raising=False)
    return log


def recorded(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_split_terse_unescapes_colons_and_backslashes() -> None:
    assert split_terse(r"a\:b:c\\d:") == ["a:b", "c\\d", ""]
    assert split_terse(r"IP6.ADDRESS[1]:fe80\:\:1/64", max_fields=2) == [
        "IP6.ADDRESS[1]",
        "fe80::1/64",
    ]
    assert split_terse("x:y:z", max_fields=2) == ["x", "y:z"]


def test_interfaces_parse_escaped_names_and_addresses(nmcli_log: Path) -> None:
    interfaces = {found.name: found for found in NmcliBackend().interfaces()}
    assert recorded(nmcli_log) == [STATUS, SHOW]
    assert interfaces["wlan0"].kind == "wifi"
    assert interfaces["wlan0"].state == "connected"
    assert interfaces["wlan0"].connection == "Home:Net"
    assert interfaces["wlan0"].addresses == ("192.0.2.10/24", "fe80::1/64")
    assert interfaces["eth0"].state == "unavailable"
    assert interfaces["eth0"].connection == ""
    assert interfaces["eth0"].addresses == ()
    assert interfaces["lo"].addresses == ("127.0.0.1/8", "::1/128")


def test_scan_keeps_one_entry_per_named_network(nmcli_log: Path) -> None:
    networks = NmcliBackend().scan_wifi()
    assert recorded(nmcli_log) == [SCAN]
    assert [network.ssid for network in networks] == ["Home:Net", "back\\slash", "Cafe"]
    home = networks[0]
    assert home.in_use
    assert home.signal == 70
    assert home.needs_password
    assert networks[1].security == "WPA1 WPA2"
    assert not networks[2].needs_password


def test_connect_passes_argv_and_reports_wrong_password(nmcli_log: Path) -> None:
    backend = NmcliBackend()
    with pytest.raises(WrongPasswordError, match="Secrets were required") as caught:
        backend.connect_wifi("Home:Net", "wrong")
    assert "wrong" not in str(caught.value)
    joined = backend.connect_wifi("Home:Net", "right: pass\\word", "wlan0")
    assert joined.name == "wlan0"
    assert joined.connection == "Home:Net"
    connect = ["-w", "30", "device", "wifi", "connect", "Home:Net"]
    assert recorded(nmcli_log) == [
        [*connect, "password", "wrong"],
        [*connect, "password", "right: pass\\word", "ifname", "wlan0"],
        STATUS,
        SHOW,
    ]


def test_networkmanager_not_running_is_reported(
    nmcli_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NMCLI_EXIT", "8")
    with pytest.raises(NetworkError, match="NIGHTBOX_NETWORK=simulator") as caught:
        NmcliBackend().interfaces()
    assert "exit status 8" in str(caught.value)
    assert "NetworkManager is not running" in str(caught.value)


def test_factory_prefers_nmcli_unless_told(
    nmcli_log: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert isinstance(create_network_backend(), NmcliBackend)
    monkeypatch.setenv("NIGHTBOX_NETWORK", "simulator")
    assert isinstance(create_network_backend(), SimulatedNetwork)
    monkeypatch.delenv("NIGHTBOX_NETWORK")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert isinstance(create_network_backend(), SimulatedNetwork)
    with pytest.raises(ValueError, match="'wired'"):
        create_network_backend("wired")
