"""The signed fleet command ``update``: verify a bundle on the box and queue it.

``nightbox fleet send --box BOX update bundle=/media/usb0/nightbox-0.2.0.nbu``
sends it. The box runs as the unprivileged user ``nightbox``, so it only
checks the bundle (signature, version newer than the active slot, every
file's SHA-256, without extracting anything) and writes
``updates/request.json``. ``nightbox-update.path`` then starts the root
updater, which checks the bundle again and installs it. The result names
what was queued; a bundle that fails a check is rejected with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from appliance.config import SiteConfig
from appliance.remote.commands import CommandError, CommandHandler
from appliance.update.bundle import read_bundle
from appliance.update.config import UpdateConfig
from appliance.update.keys import UpdateKeyError, load_public_key
from appliance.update.manifest import BundleRejected
from appliance.update.request import (
    RequestError,
    bundle_in_folders,
    request_path,
    write_request,
)
from appliance.update.slots import AppDir

_LOGGER = logging.getLogger(__name__)

_MAX_PATH_CHARS = 4096


def updatable(config: UpdateConfig) -> bool:
    """Return whether ``config.app_dir`` has a ``current`` slot to update from."""
    return AppDir(config.app_dir).current_slot() is not None


def update_command(config: SiteConfig) -> CommandHandler:
    """Return the handler of the command ``update`` for the box of ``config``."""

    async def handle(arguments: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(arguments) - {"bundle"})
        if unknown:
            raise CommandError(
                "invalid-argument",
                f"command update has no argument {unknown[0]!r:.40}; it accepts bundle",
            )
        bundle = arguments.get("bundle")
        if not isinstance(bundle, str) or not 0 < len(bundle) <= _MAX_PATH_CHARS:
            raise CommandError(
                "invalid-argument",
                "command update needs argument 'bundle', the path of a .nbu file on "
                "the box, such as bundle=/media/usb0/nightbox-0.2.0.nbu",
            )
        # Reading and hashing a bundle of tens of MiB takes a while, so it
        # runs off the event loop.
        return await asyncio.to_thread(queue_update, config.update, Path(bundle))

    return handle


def queue_update(config: UpdateConfig, bundle: Path) -> dict[str, Any]:
    """Verify ``bundle`` and write ``request.json``; raise CommandError to reject."""
    app = AppDir(config.app_dir)
    active = app.current_slot()
    info = None if active is None else app.slot_info(active)
    if info is None:
        raise CommandError(
            "unavailable",
            f"this box has no complete application slot at {app.current_link}, so "
            "it cannot be updated; updates need a box installed from the Nightbox "
            "image",
        )
    pending = request_path(config.updates_dir)
    if pending.exists():
        raise CommandError(
            "busy",
            f"an update request is already waiting in {pending}; wait for the "
            "updater to take it, then send the command again",
        )
    try:
        resolved = bundle_in_folders(bundle, config.bundle_dirs)
        key = load_public_key(config.public_key)
    except RequestError as err:
        raise CommandError("invalid-argument", str(err)) from err
    except UpdateKeyError as err:
        raise CommandError("unavailable", str(err)) from err
    try:
        verified = read_bundle(resolved, key, active_version=info.version)
    except BundleRejected as err:
        raise CommandError(err.reason, err.message) from err
    manifest = verified.manifest
    try:
        request = write_request(
            config.updates_dir, resolved, manifest.version, manifest.sha256
        )
    except OSError as err:
        raise CommandError(
            "failed",
            f"cannot write the update request in {config.updates_dir} "
            f"({err.strerror}); the folder must be writable by the box's user",
        ) from err
    _LOGGER.info(
        "Queued the update from %s to %s (%s)", info.version, manifest.version, resolved
    )
    return {
        "queued": True,
        "bundle": str(resolved),
        "version": manifest.version,
        "active_version": info.version,
        "active_slot": active,
        "request": str(request_path(config.updates_dir)),
        "requested_at": request.requested_at,
    }
