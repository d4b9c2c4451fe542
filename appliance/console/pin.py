"""The console's admin PIN: its rules and the scrypt hash kept in the box's secrets.

The PIN unlocks the terminal UI's admin actions. Only a salted scrypt hash
and its parameters are stored, in ``<data_dir>/secrets/console.json`` with
mode 0600; the PIN itself is never stored or logged. The box enforces the
lock-out after wrong PINs (see ``appliance/console/service.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
from pathlib import Path
from typing import Any

from provisioning.secret_file import write_secret_file

PIN_MIN_DIGITS = 6
PIN_MAX_DIGITS = 12
_DIGITS = "0123456789"

# scrypt cost: 16 MiB of memory and tens of milliseconds on a Raspberry Pi
# class CPU, which is slow enough for a guessed PIN and fast enough for a
# person typing one.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_BYTES = 32
_SALT_BYTES = 16
_FILE_VERSION = 1


class PinFileError(ValueError):
    """The PIN file exists but cannot be read as a PIN hash."""


def validate_pin(pin: str) -> None:
    """Raise ``ValueError`` naming what is wrong unless ``pin`` is an acceptable PIN.

    A PIN has 6 to 12 ASCII digits, is not one digit repeated (``000000``)
    and is not a straight run up or down (``123456``, ``654321``).
    """
    if not pin or any(character not in _DIGITS for character in pin):
        raise ValueError("invalid PIN: use digits 0-9 only")
    if not PIN_MIN_DIGITS <= len(pin) <= PIN_MAX_DIGITS:
        raise ValueError(
            f"invalid PIN: it has {len(pin)} digits; "
            f"use {PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits"
        )
    if len(set(pin)) == 1:
        raise ValueError("invalid PIN: one digit repeated is too easy to guess")
    steps = {int(after) - int(before) for before, after in itertools.pairwise(pin)}
    if steps in ({1}, {-1}):
        raise ValueError("invalid PIN: a straight run of digits is too easy to guess")


def generate_pin(digits: int = PIN_MIN_DIGITS) -> str:
    """Return a random PIN of ``digits`` digits that :func:`validate_pin` accepts."""
    while True:
        pin = "".join(secrets.choice(_DIGITS) for _ in range(digits))
        try:
            validate_pin(pin)
        except ValueError:
            continue
        return pin


def pin_path(data_dir: Path) -> Path:
    """Return the path of the console's PIN file in the box's data folder."""
    return data_dir / "secrets" / "console.json"


class PinFile:
    """The console's PIN hash in a JSON file written atomically with mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        """Return whether a PIN has been set."""
        return self.path.is_file()

    def set(self, pin: str) -> None:
        """Validate ``pin`` and store its scrypt hash with a new random salt."""
        validate_pin(pin)
        salt = secrets.token_bytes(_SALT_BYTES)
        record = {
            "version": _FILE_VERSION,
            "kdf": "scrypt",
            "n": _SCRYPT_N,
            "r": _SCRYPT_R,
            "p": _SCRYPT_P,
            "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(
                _scrypt(pin, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_BYTES)
            ).decode(),
        }
        write_secret_file(self.path, json.dumps(record, indent=2).encode() + b"\n")

    def verify(self, pin: str) -> bool:
        """Return whether ``pin`` matches the stored hash.

        Raises ``FileNotFoundError`` when no PIN is set and
        :class:`PinFileError` when the file is not a PIN hash.
        """
        record = self._read()
        try:
            salt = base64.b64decode(record["salt"], validate=True)
            expected = base64.b64decode(record["hash"], validate=True)
            cost = (int(record["n"]), int(record["r"]), int(record["p"]))
        except (KeyError, TypeError, ValueError) as error:
            raise PinFileError(
                f"invalid PIN file {self.path}: {error}; "
                "set the PIN again with `nightbox console set-pin`"
            ) from error
        if not pin.isascii():
            # Compare against a value that cannot match, so a non-ASCII
            # guess costs the same scrypt run as any other wrong PIN.
            pin = ""
        actual = _scrypt(pin, salt, *cost, len(expected))
        return hmac.compare_digest(expected, actual)

    def _read(self) -> dict[str, Any]:
        try:
            record = json.loads(self.path.read_text())
        except json.JSONDecodeError as error:
            raise PinFileError(
                f"invalid PIN file {self.path}: {error}; "
                "set the PIN again with `nightbox console set-pin`"
            ) from error
        if not isinstance(record, dict) or record.get("kdf") != "scrypt":
            raise PinFileError(
                f"invalid PIN file {self.path}: expected a scrypt PIN hash; "
                "set the PIN again with `nightbox console set-pin`"
            )
        return record


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # OpenSSL needs about 128 * n * r bytes; the default limit of 32 MiB is
    # just enough for n = 2**14, r = 8, so allow some head room.
    return hashlib.scrypt(
        pin.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=length
    )
