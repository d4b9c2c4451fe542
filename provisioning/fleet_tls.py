"""A private certificate authority for a fleet broker's TLS listener.

A small fleet needs no public certificate: the operator makes a CA once,
signs the upstream broker's certificate with it, and gives every box the
CA certificate (``sync.ca_file``). Keys are EC P-256 and written with
mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.secret_file import write_secret_file

_CA_DAYS = 3650
_SERVER_DAYS = 825


@dataclass(frozen=True, slots=True)
class FleetCa:
    """The files of a fleet CA and of one broker certificate it signed."""

    ca_certificate: Path
    certificate: Path
    key: Path


def make_fleet_ca(
    folder: Path, hosts: list[str], *, name: str = "Nightbox fleet"
) -> FleetCa:
    """Create a CA in ``folder`` and a server certificate for ``hosts``.

    ``hosts`` are the names and IP addresses boxes use to reach the broker;
    the certificate lists each as a subject alternative name, which is what
    TLS clients check.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = FleetCa(
        ca_certificate=folder / "ca.pem",
        certificate=folder / "broker.pem",
        key=folder / "broker.key",
    )
    write_secret_file(
        folder / "ca.key",
        ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    files.ca_certificate.write_bytes(
        ca_certificate.public_bytes(serialization.Encoding.PEM)
    )
    files.certificate.write_bytes(
        server_certificate.public_bytes(serialization.Encoding.PEM)
    )
    write_secret_file(
        files.key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return files
