"""NetworkManager through its command-line client, ``nmcli``, in terse mode.

Terse output (``nmcli -t``) separates fields with ':' and escapes a ':' or
'\\' inside a value with a backslash, as nmcli(1) documents for ``--escape``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

from hardware.network._base import (
    NetworkBackend,
    NetworkError,
    NetworkInterface,
    NetworkNotFoundError,
    WifiNetwork,
    WrongPasswordError,
    strongest_per_ssid,
)

_LOGGER = logging.getLogger(__name__)

# nmcli's exit statuses, from nmcli(1) "EXIT STATUS".
_EXIT_TIMEOUT = 3
_EXIT_ACTIVATION_FAILED = 4
_EXIT_NOT_RUNNING = 8
_EXIT_NOT_FOUND = 10
# How long nmcli waits for a join to finish (its --wait option).
_CONNECT_WAIT_S = 30


def split_terse(line: str, max_fields: int | None = None) -> list[str]:
    """Split one line of nmcli terse output into unescaped fields.

    With ``max_fields``, the last field takes the rest of the line.
    """
    fields: list[str] = []
    current: list[str] = []
    characters = iter(line)
    for character in characters:
        if character == "\\":
            current.append(next(characters, "\\"))
        elif character == ":" and (max_fields is None or len(fields) < max_fields - 1):
            fields.append("".join(current))
            current = []
        else:
            current.append(character)
    fields.append("".join(current))
    return fields


class NmcliBackend(NetworkBackend):
    """Talks to NetworkManager by running ``nmcli`` from PATH (or ``executable``)."""

    name = "networkmanager"

    def __init__(self, executable: str = "nmcli", timeout_s: float = 60.0) -> None:
        self._executable = executable
        self._timeout_s = timeout_s

    def interfaces(self) -> list[NetworkInterface]:
        status = self._run(
            ["-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device", "status"]
        )
        addresses = self._addresses()
        found = []
        for line in status.splitlines():
            if not line:
                continue
            fields = split_terse(line)
            if len(fields) != 4:
                _LOGGER.warning(
                    "Skipped an nmcli device line with %d fields", len(fields)
                )
                continue
            name, kind, state, connection = fields
            found.append(
                NetworkInterface(
                    name, kind, state, connection, tuple(addresses.get(name, ()))
                )
            )
        return found

    def _addresses(self) -> dict[str, list[str]]:
        # NOTE: this multi-line parsing follows nmcli(1)'s terse format and
        # has been run only against a stand-in nmcli, never NetworkManager.
        output = self._run(
            ["-t", "-f", "GENERAL.DEVICE,IP4.ADDRESS,IP6.ADDRESS", "device", "show"]
        )
        addresses: dict[str, list[str]] = {}
        device = ""
        for line in output.splitlines():
            if not line:
                continue
            name, value = [*split_terse(line, max_fields=2), ""][:2]
            if name == "GENERAL.DEVICE":
                device = value
                addresses.setdefault(device, [])
            elif name.startswith(("IP4.ADDRESS", "IP6.ADDRESS")) and device and value:
                addresses[device].append(value)
        return addresses

    def scan_wifi(self) -> list[WifiNetwork]:
        output = self._run(
            [
                "-t",
                "-f",
                "IN-USE,SSID,SIGNAL,SECURITY",
                "device",
                "wifi",
                "list",
                "--rescan",
                "yes",
            ]
        )
        networks = []
        for line in output.splitlines():
            fields = split_terse(line)
            if len(fields) != 4:
                continue
            in_use, ssid, signal, security = fields
            networks.append(
                WifiNetwork(
                    ssid,
                    int(signal) if signal.isdigit() else 0,
                    security.strip(),
                    in_use=in_use.strip() == "*",
                )
            )
        return strongest_per_ssid(networks)

    def connect_wifi(
        self, ssid: str, password: str | None, interface: str | None = None
    ) -> NetworkInterface:
        # nmcli takes the password as an argument, so other local users of
        # the box can see it in the process list while nmcli runs.
        arguments = ["-w", str(_CONNECT_WAIT_S), "device", "wifi", "connect", ssid]
        if password:
            arguments += ["password", password]
        if interface:
            arguments += ["ifname", interface]
        self._run(arguments, subject=f"joining Wi-Fi network {ssid!r}")
        _LOGGER.info("Joined Wi-Fi network %r", ssid)
        wifi = [
            found
            for found in self.interfaces()
            if found.kind == "wifi" and (interface is None or found.name == interface)
        ]
        joined = [found for found in wifi if found.connection == ssid]
        if not (joined or wifi):
            raise NetworkNotFoundError(
                f"nmcli joined {ssid!r} but lists no Wi-Fi interface afterwards"
            )
        return (joined or wifi)[0]

    def _run(self, arguments: Sequence[str], subject: str = "") -> str:
        command = [self._executable, *arguments]
        what = subject or f"running nmcli {' '.join(arguments[:6])}"
        # LC_ALL=C keeps nmcli's messages in English, so they can be matched.
        environment = {**os.environ, "LC_ALL": "C"}
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                env=environment,
                check=False,
            )
        except FileNotFoundError as err:
            raise NetworkError(
                f"{what} failed: {self._executable!r} was not found; install "
                "NetworkManager or set NIGHTBOX_NETWORK=simulator"
            ) from err
        except subprocess.TimeoutExpired as err:
            raise NetworkError(
                f"{what} timed out after {self._timeout_s:.0f} s"
            ) from err
        if done.returncode == 0:
            return done.stdout
        raise _error(what, done.returncode, done.stderr)


def _error(what: str, status: int, stderr: str) -> NetworkError:
    detail = " ".join(stderr.split()).removeprefix("Error: ") or "no message"
    message = f"{what} failed (nmcli exit status {status}): {detail}"
    _LOGGER.warning("%s", message)
    if status == _EXIT_NOT_RUNNING:
        return NetworkError(
            f"{message}; start NetworkManager or set NIGHTBOX_NETWORK=simulator"
        )
    if status == _EXIT_NOT_FOUND:
        return NetworkNotFoundError(message)
    lowered = detail.lower()
    if status == _EXIT_ACTIVATION_FAILED and (
        "secrets were required" in lowered or "password" in lowered
    ):
        return WrongPasswordError(f"{message}; check the password and retry")
    if status == _EXIT_TIMEOUT:
        return NetworkError(f"{message}; move closer to the access point and retry")
    return NetworkError(message)
