"""A private certificate authority for a fleet broker's TLS listener.

A small fleet needs no public certificate: the operator makes a CA once,
signs the upstream broker's certificate with it, and gives every box the
CA certificate (``sync.ca_file``). Keys are EC P-256 and written with
mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.secret_file import write_secret_file

_CA_DAYS = 3650
_SERVER_DAYS = 825
CA_KEY_NAME = "ca.key"
CA_CERTIFICATE_NAME = "ca.pem"
CERTIFICATE_NAME = "broker.pem"
KEY_NAME = "broker.key"


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

    ``hosts`` are the names and IP addresses that boxes use to reach the
    broker. The certificate lists each as a subject alternative name, which
    is what TLS clients check.
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
    write_secret_file(folder / CA_KEY_NAME, _private_pem(ca_key))
    files = _fleet_files(folder)
    files.ca_certificate.write_bytes(
        ca_certificate.public_bytes(serialization.Encoding.PEM)
    )
    _issue_server_certificate(folder, ca_key, ca_name, hosts, now)
    return files


def reissue_broker_certificate(folder: Path, hosts: list[str]) -> FleetCa:
    """Issue a new broker certificate and key for ``hosts`` with the CA in ``folder``.

    The CA (``ca.key`` and ``ca.pem``) stays as it is, so boxes keep
    trusting the broker. Existing broker files keep their owner, group and
    mode. Raises OSError when a CA file cannot be read, and ValueError when
    they are invalid or ``ca.key`` does not belong to ``ca.pem``.
    """
    ca_key = serialization.load_pem_private_key(
        (folder / CA_KEY_NAME).read_bytes(), password=None
    )
    ca_certificate = x509.load_pem_x509_certificate(
        (folder / CA_CERTIFICATE_NAME).read_bytes()
    )
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / CA_KEY_NAME} is not an EC private key")
    if ca_certificate.public_key() != ca_key.public_key():
        raise ValueError(
            f"{folder / CA_KEY_NAME} is not the key of {folder / CA_CERTIFICATE_NAME}"
        )
    now = datetime.datetime.now(datetime.UTC)
    _issue_server_certificate(folder, ca_key, ca_certificate.subject, hosts, now)
    return _fleet_files(folder)


def _fleet_files(folder: Path) -> FleetCa:
    return FleetCa(
        ca_certificate=folder / CA_CERTIFICATE_NAME,
        certificate=folder / CERTIFICATE_NAME,
        key=folder / KEY_NAME,
    )


def _issue_server_certificate(
    folder: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    hosts: list[str],
    now: datetime.datetime,
) -> None:
    """Write a new broker key and its certificate for ``hosts``, signed by the CA."""
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
    replace_file_keeping_owner(folder / KEY_NAME, _private_pem(server_key))
    replace_file_keeping_owner(
        folder / CERTIFICATE_NAME,
        server_certificate.public_bytes(serialization.Encoding.PEM),
        new_mode=0o644,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def replace_file_keeping_owner(
    path: Path, data: bytes, *, new_mode: int = 0o600
) -> bool:
    """Write ``data`` to ``path`` atomically; return whether the file is new.

    A new file gets ``new_mode``. An existing file keeps its owner, group and
    mode, so a broker that reads it as another user (mosquitto drops root to
    the ``mosquitto`` user) can still read it after a reload. Changing the
    owner needs root unless it stays the caller's.
    """
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            if old is None:
                os.fchmod(handle.fileno(), new_mode)
            else:
                current = os.fstat(handle.fileno())
                if (current.st_uid, current.st_gid) != (old.st_uid, old.st_gid):
                    os.fchown(handle.fileno(), old.st_uid, old.st_gid)
                os.fchmod(handle.fileno(), stat.S_IMODE(old.st_mode))
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return old is None
