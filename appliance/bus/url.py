"""Broker addresses given as URLs, and the TLS they ask for.

The box's own broker is configured by host and port. Brokers beyond the box
(the fleet's upstream broker, a clustered broker in front of the collector)
are given as ``mqtts://host:port`` or, on a trusted network only,
``mqtt://host:port``.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """A parsed ``mqtt://`` or ``mqtts://`` broker address."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``mqtts``)."""
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_url(text: str) -> BrokerUrl:
    """Parse ``mqtts://host[:port]`` or ``mqtt://host[:port]``.

    Raises ConfigError naming the value when it is invalid. A URL may not
    carry a user name or password, because credentials belong in a file of
    mode 0600 and not on a command line or in a configuration file.
    """
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError as err:
        raise ConfigError(
            f"broker URL {text!r:.80} is invalid ({err}); give mqtts://host:port"
        ) from err
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            f"broker URL {text!r:.80} must start with mqtts:// (TLS) or mqtt://"
        )
    if not parts.hostname:
        raise ConfigError(
            f"broker URL {text!r:.80} names no host; give mqtts://host:port"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"broker URL for host {parts.hostname!r} carries credentials; remove "
            "them from the URL and give them in a credentials file"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"broker URL {text!r:.80} has a path or query; give only mqtts://host:port"
        )
    if port == 0:
        raise ConfigError(f"broker URL {text!r:.80} has port 0; give a port 1-65535")
    return BrokerUrl(parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme])


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine (localhost or a loopback IP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Return a TLS context that verifies the broker's certificate and name.

    ``ca_file`` is the PEM file of the certificate authority that signed the
    broker's certificate; without it, the system's authorities are trusted.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except FileNotFoundError as err:
            raise ConfigError(
                f"CA file {ca_file} not found; copy the fleet broker's CA "
                "certificate (PEM) there"
            ) from err
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(
                f"CA file {ca_file} contains no usable PEM certificate ({err})"
            ) from err
    return context
