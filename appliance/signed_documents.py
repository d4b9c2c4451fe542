"""Ed25519-signed documents: the bundles and commands a box accepts from afar.

A document is one JSON object::

    {"v": 1, "kind": "bundle", "type": "members", "site": "club",
     "key": "<key id>", "version": 7, "nonce": "<32 hex digits>",
     "issued_at": 1780000000, "expires_at": 1780003600,
     "body": {...}, "sig": "<base64url Ed25519 signature>"}

``kind`` is ``bundle`` (configuration, member lists, top-ups, revocations,
asset manifests; ``version`` orders bundles of one ``type``) or ``command``
(remote management). The signature covers the canonical JSON of every other
field: keys sorted, no spaces, UTF-8. ``key`` names the signing key among the
public keys the box was provisioned with (:func:`key_id`).

:func:`verify_document` checks what one document proves by itself;
:class:`DocumentLedger` adds what needs memory: a nonce is accepted once,
and a bundle's version must be newer than the last applied one of its type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.clock import Clock
from appliance.errors import NightboxError
from appliance.store import Transaction

SCHEMA_VERSION = 1
KINDS = ("bundle", "command")
# Clock difference tolerated between the signer and the box, in seconds.
CLOCK_SKEW_S = 60.0
# The maximum validity of a document. A week covers a bundle prepared before
# a run of nights.
MAX_VALIDITY_S = 7 * 24 * 3600.0
# The largest bundle version: the box stores it in an SQLite INTEGER, which
# is signed 64-bit.
MAX_BUNDLE_VERSION = 2**63 - 1
_TYPE = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
_NONCE = re.compile(r"[0-9a-f]{32}\Z")
_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")

REASONS = (
    "malformed",
    "unknown-key",
    "bad-signature",
    "wrong-site",
    "wrong-kind",
    "expired",
    "not-yet-valid",
    "replayed",
    "old-version",
)


class SignatureError(NightboxError, ValueError):
    """A signed document was rejected; ``reason`` is one word from REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A document whose signature, site, kind and times were verified."""

    kind: str
    type: str
    site: str
    key: str
    nonce: str
    issued_at: float
    expires_at: float
    body: dict[str, Any]
    version: int | None = None


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the id of a public key: 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(fields), option=orjson.OPT_SORT_KEYS)


def sign_document(
    private_key: Ed25519PrivateKey,
    *,
    kind: str,
    document_type: str,
    site: str,
    body: dict[str, Any],
    issued_at: float,
    validity_s: float,
    version: int | None = None,
) -> dict[str, Any]:
    """Return a signed document; the fleet's tools sign, the box verifies.

    Raises ValueError naming the value when ``body`` has a whole number
    outside the signed 64-bit range or a string that is not valid Unicode
    (a lone surrogate), because neither survives JSON to the box.
    """
    _check_json_value(body, "body")
    fields: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": kind,
        "type": document_type,
        "site": site,
        "key": key_id(private_key.public_key()),
        "nonce": secrets.token_hex(16),
        "issued_at": int(issued_at),
        "expires_at": int(issued_at + validity_s),
        "body": body,
    }
    if version is not None:
        fields["version"] = version
    signature = private_key.sign(_canonical(fields))
    fields["sig"] = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return fields


def _check_json_value(value: Any, where: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(
            f"{where} = {value} is outside the signed 64-bit range of whole "
            f"numbers ({-(2**63)} to {2**63 - 1}); give a number within it"
        )
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no infinity or NaN: orjson would sign them as null.
        raise ValueError(
            f"{where} = {value} is not a finite number; give a number JSON can "
            "carry (at most about 1.8e308)"
        )
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{where} = {value!r:.60} contains the lone surrogate "
                f"U+{ord(value[err.start]):04X}, which is not valid Unicode; "
                "give text without it"
            ) from err
    if isinstance(value, dict):
        for name, item in value.items():
            _check_json_value(name, f"{where} key")
            _check_json_value(item, f"{where}.{name}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")


def verify_document(
    document: Any,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    site: str,
    kind: str,
    clock: Clock,
) -> SignedDocument:
    """Return the verified document, or raise SignatureError naming the check.

    The times are checked only when ``clock`` is trusted, because a box whose
    clock went back after a power cut would reject every valid document. The
    nonce and version checks of :class:`DocumentLedger` still apply then.
    """
    fields = _fields(document)
    key = fields["key"]
    public_key = keys.get(key)
    if public_key is None:
        raise SignatureError(
            "unknown-key",
            f"key {key!r:.20} is not one this box was provisioned with; sign with "
            "a fleet key the box trusts",
        )
    signed = {name: value for name, value in fields.items() if name != "sig"}
    try:
        signature = base64.urlsafe_b64decode(fields["sig"] + "==")
        public_key.verify(signature, _canonical(signed))
    except (InvalidSignature, binascii.Error, ValueError) as err:
        raise SignatureError(
            "bad-signature", "the signature does not match the document"
        ) from err
    if fields["site"] != site:
        raise SignatureError(
            "wrong-site",
            f"the document is for site {fields['site']!r:.40}, not {site!r}",
        )
    if fields["kind"] != kind:
        raise SignatureError(
            "wrong-kind", f"a {fields['kind']} was sent where a {kind} is expected"
        )
    _check_times(fields, clock)
    return SignedDocument(
        kind=fields["kind"],
        type=fields["type"],
        site=fields["site"],
        key=key,
        nonce=fields["nonce"],
        issued_at=float(fields["issued_at"]),
        expires_at=float(fields["expires_at"]),
        body=fields["body"],
        version=fields.get("version"),
    )


def _fields(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise SignatureError("malformed", "a signed document must be a JSON object")
    if document.get("v") != SCHEMA_VERSION or isinstance(document.get("v"), bool):
        raise SignatureError(
            "malformed", f"unsupported document version v={document.get('v')!r:.20}"
        )
    expected = {
        "kind": str,
        "type": str,
        "site": str,
        "key": str,
        "nonce": str,
        "sig": str,
        "body": dict,
    }
    for name, kind in expected.items():
        if not isinstance(document.get(name), kind):
            raise SignatureError(
                "malformed", f"field {name!r} is missing or not a {kind.__name__}"
            )
    for name in ("issued_at", "expires_at"):
        value = document.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SignatureError(
                "malformed", f"field {name!r} must be whole Unix seconds"
            )
    if document["kind"] not in KINDS:
        raise SignatureError("malformed", f"kind {document['kind']!r:.20} is unknown")
    if not _TYPE.match(document["type"]):
        raise SignatureError("malformed", f"type {document['type']!r:.40} is invalid")
    if not _NONCE.match(document["nonce"]) or not _KEY_ID.match(document["key"]):
        raise SignatureError(
            "malformed", "fields 'nonce' (32 hex) and 'key' (16 hex) are invalid"
        )
    version = document.get("version")
    if document["kind"] == "bundle" and (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not 1 <= version <= MAX_BUNDLE_VERSION
    ):
        raise SignatureError(
            "malformed",
            f"a bundle needs a whole 'version' from 1 to the maximum "
            f"{MAX_BUNDLE_VERSION} (2^63 - 1), not {version!r:.40}",
        )
    validity = document["expires_at"] - document["issued_at"]
    if not 0 < validity <= MAX_VALIDITY_S:
        raise SignatureError(
            "malformed",
            f"validity of {validity} s is out of range; give 1 s to "
            f"{MAX_VALIDITY_S / 86400:g} days",
        )
    return document


def _check_times(fields: dict[str, Any], clock: Clock) -> None:
    if not clock.trusted:
        return
    now = clock.now()
    if now > fields["expires_at"] + CLOCK_SKEW_S:
        raise SignatureError(
            "expired", f"the document expired at {fields['expires_at']}; sign a new one"
        )
    if now + CLOCK_SKEW_S < fields["issued_at"]:
        raise SignatureError(
            "not-yet-valid",
            f"the document is valid from {fields['issued_at']}; check the clocks",
        )


class DocumentLedger:
    """Remembers accepted nonces and bundle versions in the box's store."""

    def accept(self, transaction: Transaction, document: SignedDocument) -> None:
        """Record ``document`` as applied, or raise SignatureError.

        Call it in the transaction that applies the document, so a document
        is recorded exactly when its effect commits.
        """
        seen = transaction.execute(
            "INSERT OR IGNORE INTO signed_nonces (nonce, kind, type, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (document.nonce, document.kind, document.type, document.expires_at),
        )
        if seen.rowcount == 0:
            raise SignatureError(
                "replayed", f"nonce {document.nonce} was already used; sign anew"
            )
        if document.kind != "bundle" or document.version is None:
            return
        applied = transaction.execute(
            "INSERT INTO bundle_versions (type, version) VALUES (?, ?)"
            " ON CONFLICT (type) DO UPDATE SET version = excluded.version"
            " WHERE excluded.version > bundle_versions.version RETURNING version",
            (document.type, document.version),
        ).fetchone()
        if applied is None:
            (current,) = transaction.execute(
                "SELECT version FROM bundle_versions WHERE type = ?", (document.type,)
            ).fetchone()
            raise SignatureError(
                "old-version",
                f"{document.type} bundle version {document.version} is not newer "
                f"than the applied version {current}",
            )
