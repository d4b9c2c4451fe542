"""The box's login on the upstream broker, read from its credentials file.

The file is JSON, ``{"username": "box-<site>.<box>", "password": "..."}``,
readable by the box's user only (mode 0600). It is read again before every
connect attempt, so a file fixed while the box runs is used on the next
attempt without a restart.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from appliance.errors import ConfigError

_FORMAT = '{"username": "...", "password": "..."}'


@dataclass(frozen=True, slots=True)
class UpstreamLogin:
    """A username and password for the upstream broker; repr hides the password."""

    username: str
    password: str = field(repr=False)


def read_login(path: Path) -> UpstreamLogin:
    """Read and check the credentials file at ``path``.

    Raises ConfigError naming the file and the fix when it is missing,
    readable by other users, not JSON, or lacks a non-empty username or
    password. The message never contains the file's content.
    """
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(
            f"sync credentials file {path} not found; write the box's upstream "
            f"account there as {_FORMAT} with mode 0600"
        ) from err
    except OSError as err:
        raise ConfigError(
            f"cannot read sync credentials file {path} ({err.strerror}); make it "
            "readable by the user that runs the box, with mode 0600"
        ) from err
    if mode & 0o077:
        raise ConfigError(
            f"sync credentials file {path} has mode {stat.S_IMODE(mode):04o}, so "
            f"other users can read the password; run chmod 600 {path}"
        )
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ConfigError(
            f"sync credentials file {path} is not valid JSON (at character "
            f"{err.pos}); write it as {_FORMAT}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            f"sync credentials file {path} must contain a JSON object {_FORMAT}"
        )
    values = []
    for key in ("username", "password"):
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"sync credentials file {path} has no non-empty string {key!r}; "
                f"write it as {_FORMAT}"
            )
        values.append(value)
    return UpstreamLogin(values[0], values[1])
