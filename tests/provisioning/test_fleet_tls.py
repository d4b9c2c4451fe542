"""The fleet CA: a new broker certificate from an existing CA."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from provisioning.fleet_tls import make_fleet_ca, reissue_broker_certificate


def names_of(certificate_path: Path) -> set[str]:
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    return {
        *names.get_values_for_type(x509.DNSName),
        *(str(address) for address in names.get_values_for_type(x509.IPAddress)),
    }


def test_reissue_keeps_ca(tmp_path: Path) -> None:
    first = make_fleet_ca(tmp_path, ["127.0.0.1"])
    ca_key = (tmp_path / "ca.key").read_bytes()
    ca_pem = first.ca_certificate.read_bytes()
    old_key = first.key.read_bytes()
    first.key.chmod(0o640)

    files = reissue_broker_certificate(tmp_path, ["fleet.example.org", "127.0.0.1"])

    assert (tmp_path / "ca.key").read_bytes() == ca_key
    assert files.ca_certificate.read_bytes() == ca_pem
    assert files.key.read_bytes() != old_key
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o640
    assert names_of(files.certificate) == {"fleet.example.org", "127.0.0.1"}
    ca = x509.load_pem_x509_certificate(ca_pem)
    certificate = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    certificate.verify_directly_issued_by(ca)


def test_reissue_rejects_other_key(tmp_path: Path) -> None:
    make_fleet_ca(tmp_path / "one", ["127.0.0.1"])
    make_fleet_ca(tmp_path / "two", ["127.0.0.1"])
    (tmp_path / "one" / "ca.key").write_bytes(
        (tmp_path / "two" / "ca.key").read_bytes()
    )

    with pytest.raises(ValueError, match="is not the key of"):
        reissue_broker_certificate(tmp_path / "one", ["127.0.0.1"])


def test_reissue_without_ca(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        reissue_broker_certificate(tmp_path, ["127.0.0.1"])
    assert not (tmp_path / "broker.key").exists()
