"""Typed reads of TOML values; every error names the key, the value and the fix.

The site configuration and its commerce sections share these checks.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, TypeGuard

from appliance.errors import ConfigError

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def table(raw: dict[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table, not {value!r}")
    return value


def items(raw: dict[str, Any], key: str, prefix: str = "") -> list[tuple[int, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{prefix}{key} must be an array of tables ([[{key}]])")
    return list(enumerate(value))


def reject_unknown(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {place}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def reject_duplicates(ids: list[str], where: str, *, noun: str = "id") -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ConfigError(
                f"{where} lists {noun} {item!r} twice; {noun}s must be unique"
            )
        seen.add(item)


def string(table: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = table.get(leaf(key), default)
    if value is None:
        raise ConfigError(f"missing {key}")
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, not {value!r}")
    return value


def nonblank(table: dict[str, Any], key: str, default: str) -> str:
    value = string(table, key, default=default)
    if not value.strip():
        raise ConfigError(f"{key} = {value!r} is empty; remove the key or give a value")
    return value


def identifier(table: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = string(table, key, default=default)
    if not ID_PATTERN.match(value):
        raise ConfigError(
            f"{key} = {value!r} is invalid; use 1-32 lowercase letters, digits "
            "and '-', starting with a letter or digit"
        )
    return value


def number(
    table: dict[str, Any],
    key: str,
    default: float,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    value = table.get(leaf(key), default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, not {value!r}")
    # TOML allows nan and inf, and nan passes every range check below.
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} = {value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} = {value} is above the maximum {maximum}")
    return float(value)


def is_whole_number(value: object, minimum: int, maximum: int) -> TypeGuard[int]:
    """Return whether ``value`` is an int, not a bool, in ``[minimum, maximum]``."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and minimum <= value <= maximum
    )


def integer(
    table: dict[str, Any],
    key: str,
    default: int | None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    value = table.get(leaf(key), default)
    if value is None:
        raise ConfigError(f"missing {key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} = {value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} = {value} is above the maximum {maximum}")
    return value


def listen_host(table: dict[str, Any], key: str, *, default: str) -> str:
    """Read an address for a server to listen on: an IP address or a host name."""
    value = string(table, key, default=default)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        if not (len(value) <= 253 and all(_HOST_LABEL.match(x) for x in labels)):
            raise ConfigError(
                f"{key} = {value!r:.80} is invalid; use the address to listen on, "
                "such as 0.0.0.0 (every network of the box) or 127.0.0.1 (this "
                "machine only)"
            ) from None
    return value


def boolean(table: dict[str, Any], key: str, default: bool) -> bool:
    value = table.get(leaf(key), default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    return value


def choice(
    table: dict[str, Any], key: str, choices: tuple[str, ...], default: str | None
) -> Any:
    value = table.get(leaf(key), default)
    if value not in choices:
        raise ConfigError(
            f"{key} = {value!r} is invalid; use one of {', '.join(choices)}"
        )
    return value


def hex_bytes(table: dict[str, Any], key: str, size: int) -> bytes | None:
    value = table.get(leaf(key))
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a hex string, not {value!r}")
    text = value.replace("-", "").strip()
    try:
        decoded = bytes.fromhex(text)
    except ValueError as err:
        raise ConfigError(f"{key} = {value!r} is not hex: {err}") from err
    if len(decoded) != size:
        raise ConfigError(
            f"{key} = {value!r} has {len(decoded)} bytes; it must have {size}"
        )
    return decoded
