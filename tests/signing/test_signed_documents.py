"""Signed bundles and commands: every check rejects with the reason it names."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.clock import ManualClock, SystemClock, TimeSource
from appliance.signed_documents import (
    CLOCK_SKEW_S,
    MAX_BUNDLE_VERSION,
    DocumentLedger,
    SignatureError,
    key_id,
    sign_document,
    verify_document,
)
from appliance.store import Store

NOW = 1_800_000_000.0
SITE = "club"


@pytest.fixture
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(fleet_key: Ed25519PrivateKey) -> dict[str, Any]:
    return {key_id(fleet_key.public_key()): fleet_key.public_key()}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "nightbox.sqlite3", ManualClock(NOW))
    yield opened
    opened.close()


def bundle(key: Ed25519PrivateKey, version: int = 1, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "kind": "bundle",
        "document_type": "members",
        "site": SITE,
        "body": {"members": [{"band": "ib-1-7", "tier": "gold"}]},
        "issued_at": NOW,
        "validity_s": 3600,
        "version": version,
    }
    fields.update(changes)
    return sign_document(key, **fields)


def command(key: Ed25519PrivateKey, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "kind": "command",
        "document_type": "status",
        "site": SITE,
        "body": {},
        "issued_at": NOW,
        "validity_s": 60,
    }
    fields.update(changes)
    return sign_document(key, **fields)


def reason_of(document: Any, keys: dict[str, Any], **options: Any) -> str:
    arguments = {"site": SITE, "kind": "bundle", "clock": ManualClock(NOW)}
    arguments.update(options)
    with pytest.raises(SignatureError) as error:
        verify_document(document, keys, **arguments)
    return error.value.reason


def resign(key: Ed25519PrivateKey, document: dict[str, Any]) -> dict[str, Any]:
    """Sign ``document`` again after a test changed it."""
    fields = {name: value for name, value in document.items() if name != "sig"}
    signature = key.sign(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
    fields["sig"] = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return fields


def test_valid_bundle_verified(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    document = bundle(fleet_key, version=3)

    verified = verify_document(
        document, keys, site=SITE, kind="bundle", clock=ManualClock(NOW)
    )

    assert verified.type == "members"
    assert verified.version == 3
    assert verified.body == {"members": [{"band": "ib-1-7", "tier": "gold"}]}
    assert verified.key == key_id(fleet_key.public_key())


def test_document_survives_json_round_trip(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    document = orjson.loads(orjson.dumps(bundle(fleet_key)))

    verified = verify_document(
        document, keys, site=SITE, kind="bundle", clock=ManualClock(NOW)
    )

    assert verified.site == SITE


def test_unknown_key_rejected(keys: dict[str, Any]) -> None:
    stranger = Ed25519PrivateKey.generate()

    assert reason_of(bundle(stranger), keys) == "unknown-key"


def test_key_id_swapped_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    # A stranger's signature under the fleet key's id does not verify.
    stranger = Ed25519PrivateKey.generate()
    document = bundle(stranger)
    document["key"] = key_id(fleet_key.public_key())

    assert reason_of(resign(stranger, document), keys) == "bad-signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body", {"members": []}),
        ("version", 99),
        ("site", "other"),
        ("expires_at", int(NOW) + 7200),
        ("type", "topups"),
    ],
)
def test_tampered_field_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any], field: str, value: Any
) -> None:
    document = bundle(fleet_key)
    document[field] = value

    assert reason_of(document, keys) == "bad-signature"


def test_garbled_signature_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    document = bundle(fleet_key)
    document["sig"] = "not base64 at all!"

    assert reason_of(document, keys) == "bad-signature"


def test_wrong_site_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    assert reason_of(bundle(fleet_key, site="other"), keys) == "wrong-site"


def test_command_as_bundle_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    assert reason_of(command(fleet_key), keys) == "wrong-kind"


def test_expired_rejected_on_trusted_clock(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    later = ManualClock(NOW + 3600 + CLOCK_SKEW_S + 1)

    assert reason_of(bundle(fleet_key), keys, clock=later) == "expired"


def test_expiry_within_skew_accepted(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    later = ManualClock(NOW + 3600 + CLOCK_SKEW_S - 1)

    verified = verify_document(
        bundle(fleet_key), keys, site=SITE, kind="bundle", clock=later
    )

    assert verified.version == 1


def test_not_yet_valid_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    early = ManualClock(NOW - CLOCK_SKEW_S - 1)

    assert reason_of(bundle(fleet_key), keys, clock=early) == "not-yet-valid"


def test_untrusted_clock_skips_times(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any]
) -> None:
    # An untrusted system clock far past the expiry: only nonces and
    # versions protect the box then.
    verified = verify_document(
        bundle(fleet_key, issued_at=1_000_000_000),
        keys,
        site=SITE,
        kind="bundle",
        clock=SystemClock(TimeSource.UNTRUSTED),
    )

    assert verified.expires_at == 1_000_003_600


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("sig"), "'sig' is missing"),
        (lambda d: d.update(v=2), "unsupported document version"),
        (lambda d: d.update(v=True), "unsupported document version"),
        (lambda d: d.update(body=[1]), "'body' is missing or not a dict"),
        (lambda d: d.update(issued_at=1.5), "'issued_at' must be whole"),
        (lambda d: d.update(kind="order"), "kind 'order' is unknown"),
        (lambda d: d.update(type="Members"), "type 'Members' is invalid"),
        (lambda d: d.update(nonce="abc"), "'nonce' (32 hex)"),
        (lambda d: d.update(version=0), "a bundle needs a whole 'version'"),
        (lambda d: d.update(version=True), "a bundle needs a whole 'version'"),
        (lambda d: d.update(version=2**63), "maximum 9223372036854775807"),
        (lambda d: d.update(version=2**64 - 1), "maximum 9223372036854775807"),
        (lambda d: d.update(expires_at=int(NOW)), "validity of 0 s"),
        (lambda d: d.update(expires_at=int(NOW) + 8 * 86400), "out of range"),
    ],
)
def test_malformed_field_rejected(
    fleet_key: Ed25519PrivateKey,
    keys: dict[str, Any],
    change: Callable[[dict[str, Any]], Any],
    expected: str,
) -> None:
    document = copy.deepcopy(bundle(fleet_key))
    change(document)

    with pytest.raises(SignatureError) as error:
        verify_document(
            document, keys, site=SITE, kind="bundle", clock=ManualClock(NOW)
        )

    assert error.value.reason == "malformed"
    assert expected in error.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"value": 123456789012345678901234567890}, "123456789012345678901234567890"),
        ({"value": 2**63}, "outside the signed 64-bit range"),
        ({"value": -(2**63) - 1}, "outside the signed 64-bit range"),
        ({"value": "\ud800"}, "lone surrogate U+D800"),
        ({"items": ["ok", "\udc00"]}, "body.items[1]"),
        ({"value": float("inf")}, "body.value = inf is not a finite number"),
        ({"value": float("nan")}, "body.value = nan is not a finite number"),
    ],
)
def test_sign_unencodable_body_rejected(
    fleet_key: Ed25519PrivateKey, body: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValueError) as caught:
        sign_document(
            fleet_key,
            kind="command",
            document_type="config-set",
            site=SITE,
            body=body,
            issued_at=NOW,
            validity_s=60,
        )

    assert expected in str(caught.value)


def test_sign_int64_limits_accepted(fleet_key: Ed25519PrivateKey) -> None:
    document = sign_document(
        fleet_key,
        kind="command",
        document_type="config-set",
        site=SITE,
        body={"low": -(2**63), "high": 2**63 - 1},
        issued_at=NOW,
        validity_s=60,
    )

    assert document["body"] == {"low": -(2**63), "high": 2**63 - 1}


def test_not_an_object_rejected(keys: dict[str, Any]) -> None:
    assert reason_of([1, 2], keys) == "malformed"


def accept(
    store: Store, document: dict[str, Any], keys: dict[str, Any], kind: str
) -> None:
    verified = verify_document(
        document, keys, site=SITE, kind=kind, clock=ManualClock(NOW)
    )
    with store.transaction() as transaction:
        DocumentLedger().accept(transaction, verified)


def test_command_replay_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any], store: Store
) -> None:
    document = command(fleet_key)
    accept(store, document, keys, "command")

    with pytest.raises(SignatureError) as error:
        accept(store, document, keys, "command")

    assert error.value.reason == "replayed"
    assert store.query("SELECT COUNT(*) FROM signed_nonces") == [(1,)]


def test_old_bundle_version_rejected(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any], store: Store
) -> None:
    accept(store, bundle(fleet_key, version=5), keys, "bundle")

    with pytest.raises(SignatureError) as error:
        accept(store, bundle(fleet_key, version=5), keys, "bundle")

    assert error.value.reason == "old-version"
    assert "version 5 is not newer than the applied version 5" in error.value.message
    # The rejected bundle's nonce rolled back with its transaction.
    assert store.query("SELECT COUNT(*) FROM signed_nonces") == [(1,)]


def test_max_bundle_version_stored(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any], store: Store
) -> None:
    accept(store, bundle(fleet_key, version=MAX_BUNDLE_VERSION), keys, "bundle")

    versions = store.query("SELECT type, version FROM bundle_versions")

    assert versions == [("members", 2**63 - 1)]


def test_newer_bundle_version_applied(
    fleet_key: Ed25519PrivateKey, keys: dict[str, Any], store: Store
) -> None:
    accept(store, bundle(fleet_key, version=5), keys, "bundle")
    accept(store, bundle(fleet_key, version=6), keys, "bundle")
    accept(store, bundle(fleet_key, version=1, document_type="topups"), keys, "bundle")

    versions = dict(store.query("SELECT type, version FROM bundle_versions"))

    assert versions == {"members": 6, "topups": 1}
