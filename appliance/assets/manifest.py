"""The signed asset manifest: which blobs the box serves, for which items.

A manifest is a signed ``assets`` bundle (:mod:`appliance.signed_documents`)
whose body ``appliance.remote._bundle_bodies.parse_assets`` validates::

    {"assets": [{"sha256": "<64 hex>", "size": 48213, "item": "tee",
                 "name": "Night tee", "type": "model/gltf-binary"}],
     "budget_bytes": 1073741824}

It reaches the box as a bundle through sync, or as ``manifest.json`` in a
USB folder. Either way the same checks apply: the signature of an operator
key from ``[fleet] operator_keys``, the site, the validity times (on a box
whose clock is trusted), and a version newer than the applied one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.clock import Clock
from appliance.errors import NightboxError
from appliance.remote._bundle_bodies import InvalidBundle, parse_assets
from appliance.remote.document_types import MAX_BUNDLE_BYTES
from appliance.signed_documents import (
    SignatureError,
    SignedDocument,
    sign_document,
    verify_document,
)

__all__ = [
    "BUNDLE_TYPE",
    "DESCRIPTION_NAME",
    "MANIFEST_NAME",
    "MODEL_TYPES",
    "AssetEntry",
    "Manifest",
    "ManifestRejected",
    "manifest_from_body",
    "parse_manifest_document",
    "sign_manifest",
]

BUNDLE_TYPE = "assets"
# The files of a USB folder: the signed manifest, and the operator's
# description of the files that `nightbox assets pack` reads.
MANIFEST_NAME = "manifest.json"
DESCRIPTION_NAME = "assets.toml"
MODEL_TYPES = ("model/gltf-binary", "model/gltf+json")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/ktx2")


class ManifestRejected(NightboxError, ValueError):
    """A manifest that was not accepted, with a one-word ``reason`` and a fix.

    ``reason`` is a SignatureError reason (``bad-signature``, ``wrong-site``,
    ``expired``, ``old-version`` ...) or ``malformed``, ``too-large``,
    ``wrong-type``, ``invalid`` or ``missing``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class AssetEntry:
    """One blob of the manifest: its content hash, size, item, name and type."""

    sha256: str
    size: int
    item: str
    name: str
    media_type: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest: its version, budget and entries in listed order.

    ``canonical`` is the body as sorted, compact JSON, the form stored in
    ``asset_manifests``.
    """

    version: int
    entries: tuple[AssetEntry, ...]
    budget_bytes: int | None
    canonical: str

    def entry(self, sha256: str) -> AssetEntry | None:
        """Return the entry of blob ``sha256``, or None when it is not listed."""
        return next((e for e in self.entries if e.sha256 == sha256), None)

    @property
    def total_bytes(self) -> int:
        """The bytes of every listed blob together."""
        return sum(entry.size for entry in self.entries)


def manifest_from_body(version: int, body: dict[str, Any]) -> Manifest:
    """Return the manifest of a bundle body; raise InvalidBundle naming the item."""
    validated = parse_assets(body)
    entries = tuple(
        AssetEntry(
            sha256=entry["sha256"],
            size=entry["size"],
            item=entry["item"],
            name=entry["name"],
            media_type=entry["type"],
        )
        for entry in body["assets"]
    )
    budget = body.get("budget_bytes")
    return Manifest(version, entries, budget, validated.canonical)


def parse_manifest_document(
    payload: bytes,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    site: str,
    clock: Clock,
) -> tuple[SignedDocument, Manifest]:
    """Verify a signed manifest's bytes and return the document and its manifest.

    The nonce and version are not checked here, because they need the
    box's store. Raises ManifestRejected with the reason and the fix.
    """
    if len(payload) > MAX_BUNDLE_BYTES:
        raise ManifestRejected(
            "too-large",
            f"the manifest has more than the maximum of {MAX_BUNDLE_BYTES} bytes "
            "(4 MiB); list fewer assets in one manifest",
        )
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise ManifestRejected(
            "malformed",
            f"the manifest is not valid JSON ({err}); write it with `nightbox "
            "assets pack`",
        ) from err
    try:
        signed = verify_document(document, keys, site=site, kind="bundle", clock=clock)
    except SignatureError as err:
        message = _validity_message(err, document, clock.now())
        raise ManifestRejected(err.reason, message) from err
    if signed.type != BUNDLE_TYPE:
        raise ManifestRejected(
            "wrong-type",
            f"the document is a {signed.type!r} bundle, not an {BUNDLE_TYPE!r} "
            "manifest; sign the manifest with `nightbox assets pack`",
        )
    try:
        manifest = manifest_from_body(signed.version or 0, signed.body)
    except InvalidBundle as err:
        raise ManifestRejected("invalid", str(err)) from err
    return signed, manifest


def _validity_message(err: SignatureError, document: Any, now: float) -> str:
    """Return the message of a rejection, with validity times in UTC.

    ``expired`` and ``not-yet-valid`` show the document's time and the box's
    clock as ISO 8601, so a technician can compare them without converting
    Unix times. Other reasons keep their message.
    """
    if err.reason == "expired":
        expires_at = document["expires_at"]
        return (
            f"the manifest expired at {_utc_text(expires_at)} (Unix time "
            f"{expires_at}); the box's clock reads {_utc_text(now)}; sign a new "
            "one with `nightbox assets pack`, or correct the box's clock if it is "
            "wrong"
        )
    if err.reason == "not-yet-valid":
        issued_at = document["issued_at"]
        return (
            f"the manifest is valid from {_utc_text(issued_at)} (Unix time "
            f"{issued_at}); the box's clock reads {_utc_text(now)}; check the clocks "
            "of the box and of the machine that packed the manifest"
        )
    return err.message


def _utc_text(seconds: float) -> str:
    """Return Unix seconds as an ISO 8601 time in UTC, such as 2027-01-15T08:00:00Z."""
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"Unix time {seconds}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_manifest(
    private_key: Ed25519PrivateKey,
    *,
    site: str,
    version: int,
    body: dict[str, Any],
    issued_at: float,
    validity_s: float,
) -> dict[str, Any]:
    """Return the signed ``assets`` bundle of ``body``, after validating it.

    Raises InvalidBundle naming the item when a box would reject the body.
    """
    parse_assets(body)
    return sign_document(
        private_key,
        kind="bundle",
        document_type=BUNDLE_TYPE,
        site=site,
        body=body,
        issued_at=issued_at,
        validity_s=validity_s,
        version=version,
    )
