"""The Ed25519 key pair that signs update bundles.

The public key file contains the raw 32-byte key as base64 on one line, the
form that ``nightbox image build --update-key`` copies to
``/etc/nightbox/update-key.pub``. The private key is PKCS#8 PEM, written
with mode 0600, and stays on the machine that builds bundles.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from appliance.errors import NightboxError
from appliance.signed_documents import key_id
from provisioning.secret_file import write_file_atomically, write_secret_file

PRIVATE_KEY_NAME = "update-key"
PUBLIC_KEY_NAME = "update-key.pub"
_RAW_KEY_BYTES = 32


class UpdateKeyError(NightboxError, ValueError):
    """An update key file is missing, unreadable or not an Ed25519 key."""


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """The two files that :func:`generate_key_pair` wrote, and the key's id."""

    private_key: Path
    public_key: Path
    key_id: str


def encode_public_key(public_key: Ed25519PublicKey) -> str:
    """Return the raw public key as base64, the content of ``update-key.pub``."""
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode("ascii")


def generate_key_pair(folder: Path) -> KeyFiles:
    """Write a new ``update-key`` (0600) and ``update-key.pub`` into ``folder``.

    Raises UpdateKeyError when ``update-key`` already exists, because a
    replaced key would make every box built with the old one refuse updates.
    """
    private_path = folder / PRIVATE_KEY_NAME
    public_path = folder / PUBLIC_KEY_NAME
    if private_path.exists():
        raise UpdateKeyError(
            f"{private_path} already exists and keygen never overwrites a key; "
            "choose another --output-dir or move the old key away"
        )
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_line = encode_public_key(private_key.public_key()) + "\n"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_secret_file(private_path, private_pem)
        write_file_atomically(public_path, public_line.encode("ascii"), 0o644)
    except OSError as err:
        raise UpdateKeyError(
            f"cannot write the key files in {folder} ({err.strerror}); choose a "
            "writable --output-dir"
        ) from err
    return KeyFiles(private_path, public_path, key_id(private_key.public_key()))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read ``update-key.pub``; raise UpdateKeyError naming the file and the fix."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as err:
        raise UpdateKeyError(
            f"no update key at {path}, so this box accepts no update; build the "
            "image with 'nightbox image build --update-key FILE.pub' or set "
            "[update] public_key"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise UpdateKeyError(
            f"cannot read the update key {path} ({err}); it must be the "
            "update-key.pub that 'nightbox update keygen' wrote"
        ) from err
    if "PRIVATE KEY-----" in text:
        raise UpdateKeyError(
            f"{path} is a PEM private key; the box needs the public key, the "
            "update-key.pub that 'nightbox update keygen' wrote next to it. Keep "
            "the private key off the boxes"
        )
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise UpdateKeyError(
            f"{path} is not base64; it must be the update-key.pub that "
            "'nightbox update keygen' wrote"
        ) from err
    if len(raw) != _RAW_KEY_BYTES:
        raise UpdateKeyError(
            f"{path} holds {len(raw)} bytes, not the {_RAW_KEY_BYTES} bytes of an "
            "Ed25519 public key; give the update-key.pub that 'nightbox update "
            "keygen' wrote"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read ``update-key`` (PKCS#8 PEM); raise UpdateKeyError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UpdateKeyError(
            f"cannot read the private key {path} ({err.strerror}); give the "
            "update-key that 'nightbox update keygen' wrote"
        ) from err
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise UpdateKeyError(
            f"{path} is not an unencrypted PEM private key; give the update-key "
            "that 'nightbox update keygen' wrote"
        ) from err
    if not isinstance(private_key, Ed25519PrivateKey):
        raise UpdateKeyError(f"{path} is not an Ed25519 private key")
    return private_key
