"""The order of the checks and the run that produces a report."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from appliance.rehearse._checks import Check, Context, run_check
from appliance.rehearse._edge_checks import (
    check_broker,
    check_readers,
    check_scanner,
    check_sync,
    check_time,
)
from appliance.rehearse._link import RehearsalLink, console_settings
from appliance.rehearse._media_checks import check_camera, check_clip, check_hls
from appliance.rehearse._report import CheckResult, Report
from appliance.rehearse._storage_check import check_storage
from appliance.rehearse._target import Target
from appliance.rehearse._wallet_check import check_wallet
from provisioning.site_access import CONSOLE, terminal_username

# Quick checks run first, inside the listening window of the readers and
# the scanner. The media checks run last, on a stream that has warmed up.
CHECKS = (
    Check("broker-acl", check_broker),
    Check("time", check_time),
    Check("storage", check_storage),
    Check("sync-link", check_sync, required=False),
    Check("wallet-selftest", check_wallet),
    Check("readers", check_readers),
    Check("box-scanner", check_scanner),
    Check("camera-encode", check_camera),
    Check("hls-stream", check_hls),
    Check("clip", check_clip),
)
CHECK_NAMES = tuple(check.name for check in CHECKS)
DEFAULT_WINDOW_S = 10.0
_CONNECT_TIMEOUT_S = 10.0


async def rehearse(target: Target, window_s: float = DEFAULT_WINDOW_S) -> Report:
    """Run every check against ``target`` and return the report.

    ``window_s`` is how long readers and the box's scanner are listened to.
    When the rehearsal cannot log in to the broker, every check fails with
    that reason, since each one needs the broker.
    """
    started = time.monotonic()
    password = target.password(terminal_username(CONSOLE))
    settings = console_settings(
        target.host, target.port, target.config.site_id, password
    )
    async with RehearsalLink(settings, target.config.box_id) as link:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await link.bus.connected.wait()
        except TimeoutError:
            reason = (
                f"cannot log in to the broker at {target.host}:{target.port} as "
                f"{settings.username} within {_CONNECT_TIMEOUT_S:.0f} s "
                f"({link.bus.last_error or 'no answer'}); is the box running?"
            )
            results = tuple(
                CheckResult(check.name, False, check.required, reason, 0.0)
                for check in CHECKS
            )
            return Report(target.description, results, time.monotonic() - started)
        # The connection, not the login attempt, starts the listening window.
        link.started_at = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="nightbox-rehearse-") as scratch:
            context = Context(target, link, window_s, Path(scratch))
            results = tuple([await run_check(check, context) for check in CHECKS])
    return Report(target.description, results, time.monotonic() - started)
