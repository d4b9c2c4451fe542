"""Options, argument types and files that several ``nightbox`` commands share."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
from collections.abc import Callable
from pathlib import Path

from appliance.config import SiteConfig, load_config
from appliance.errors import ConfigError, NightboxError
from appliance.store import Store

# The box's SQLite store, in the site's data_dir.
STORE_NAME = "nightbox.sqlite3"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, which defaults to $NIGHTBOX_CONFIG."""
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("NIGHTBOX_CONFIG"),
        help="site configuration (TOML); default: $NIGHTBOX_CONFIG",
    )


def add_night_option(parser: argparse.ArgumentParser) -> None:
    """Add the required ``--night``, an ISO date that selects one night."""
    parser.add_argument(
        "--night",
        type=night_date,
        required=True,
        help="night as an ISO date (YYYY-MM-DD); a night runs from "
        "site.night_rollover_hour to the same hour the next day",
    )


def night_date(text: str) -> str:
    """Parse an ISO date (``YYYY-MM-DD``) for ``--night``; return it in that form."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"must be a date like 2026-12-05 (YYYY-MM-DD), not {text!r}"
        ) from err


def load_site_config(path: Path | None) -> SiteConfig:
    """Load the ``--config`` file, or raise ConfigError when none was given."""
    if path is None:
        raise ConfigError(
            "no site configuration given; pass --config FILE or set NIGHTBOX_CONFIG"
        )
    return load_config(Path(path))


def open_store(config: SiteConfig, *, create: bool) -> Store:
    """Open the box's store.

    Raises NightboxError when the store is missing and ``create`` is false.
    """
    path = config.data_dir / STORE_NAME
    if not create and not path.exists():
        raise NightboxError(
            f"no Nightbox store at {path}; run the box with this configuration first"
        )
    # The store gets the box's own clock and trust, as in `nightbox run`.
    return Store(path, config.system_clock())


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """Return an argument type for whole numbers of at least ``low``.

    With ``high``, the number must also be at most ``high``.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"must be a whole number, not {text!r}"
            ) from err
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be from {low} to {high}, not {value}"
            )
        return value

    return parse


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """Return an argparse type for a number of seconds from ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds, not {text!r}"
            ) from err
        # nan passes no comparison, so it is rejected with inf here.
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be from {low:g} to {high:g} seconds, not {text}"
            )
        return value

    return parse
