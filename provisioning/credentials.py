"""Per-client broker passwords, generated on the box and stored with mode 0600.

Passwords are random per client and per box; only their PBKDF2 hashes go into
mosquitto's password file. The clear passwords stay in the box's data folder
so that the box's own services and simulated readers can log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from provisioning.secret_file import write_secret_file

_LOGGER = logging.getLogger(__name__)

# mosquitto 2.x password files use "$7$<iterations>$<salt>$<hash>" with
# PBKDF2-HMAC-SHA512 and a 12-byte salt (mosquitto_passwd's defaults).
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12


def hash_password(password: str, *, iterations: int = _PBKDF2_ITERATIONS) -> str:
    """Hash ``password`` in mosquitto's ``$7$`` PBKDF2-SHA512 format."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    salt_text = base64.b64encode(salt).decode()
    digest_text = base64.b64encode(digest).decode()
    return f"$7${iterations}${salt_text}${digest_text}"


def verify_password(password: str, hashed: str) -> bool:
    """Return whether ``password`` matches a ``$7$`` hash from :func:`hash_password`."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """A broker login: the username and its clear password (never logged)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"BrokerAccount(username={self.username!r}, password=<hidden>)"


class SiteCredentials:
    """The broker accounts of one box, kept in a JSON file readable only by root.

    Accounts are created on first use and then reused, so a restart keeps the
    readers' passwords valid. ``invalid_advice`` ends the error message for
    a file that cannot be read, so a caller whose file must not be replaced
    can give its own advice instead.
    """

    def __init__(
        self,
        path: Path,
        *,
        invalid_advice: str = "move the file away to generate new credentials",
    ) -> None:
        self._path = path
        self._accounts: dict[str, str] = {}
        if path.exists():
            self._accounts = self._load(path, invalid_advice)

    @staticmethod
    def _load(path: Path, advice: str) -> dict[str, str]:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"cannot read broker credentials {path}: {err}; {advice}"
            ) from err
        if not isinstance(raw, dict) or not all(
            isinstance(key, str) and isinstance(value, str)
            for key, value in raw.items()
        ):
            raise ValueError(
                f"broker credentials {path} are not a JSON object of strings; {advice}"
            )
        return raw

    @property
    def path(self) -> Path:
        """The JSON file that stores the clear passwords."""
        return self._path

    def account(self, username: str) -> BrokerAccount:
        """Return the account for ``username``, generating its password once."""
        password = self._accounts.get(username)
        if password is None:
            password = secrets.token_urlsafe(24)
            self._accounts[username] = password
            self._save()
            _LOGGER.info("Generated broker password for %s", username)
        return BrokerAccount(username, password)

    def ensure(self, usernames: Iterable[str]) -> None:
        """Generate passwords for any of ``usernames`` that have none yet."""
        for username in usernames:
            self.account(username)

    def render_password_file(self) -> str:
        """Render mosquitto's ``password_file`` with a fresh salt per account."""
        return "".join(
            f"{username}:{hash_password(password)}\n"
            for username, password in self._accounts.items()
        )

    def _save(self) -> None:
        text = json.dumps(self._accounts, indent=2, sort_keys=True)
        write_secret_file(self._path, text.encode())
