"""``nightbox run``: the broker, the box's services and its scanner until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.bus.broker import start_broker
from appliance.config import SiteConfig
from appliance.errors import ConfigError, HardwareError, StoreError
from appliance.runtime import Box, tune_garbage_collector
from appliance.sightings import ScannerService
from appliance.systemd_notify import SystemdNotifier, process_notifier
from hardware.panel import PanelButton, PanelError, create_panel_button
from hardware.scanner import ScannerError, create_scanner
from provisioning import SiteCredentials
from provisioning.site_access import ReaderGrant, site_policy

_LOGGER = logging.getLogger(__name__)

# The open file limit the box requests at start-up, when the hard limit
# allows it. Every stream viewer, broker client, clip and SQLite file takes a
# file descriptor, and a service's usual soft limit of 1024 is soon reached.
OPEN_FILE_LIMIT = 65536


def credentials_for(config: SiteConfig) -> SiteCredentials:
    """Return the box's broker credentials, kept under its data folder."""
    return SiteCredentials(config.data_dir / "secrets" / "broker.json")


async def serve_box(
    config: SiteConfig,
    stop: asyncio.Event,
    announce: Callable[[str], None],
    *,
    config_path: Path | None = None,
    reload: asyncio.Event | None = None,
    notifier: SystemdNotifier | None = None,
) -> bool:
    """Start the broker and every service, then run until ``stop`` is set.

    A signed ``restart`` command, or ``reload`` being set (``nightbox run``
    sets it on SIGHUP), also ends the run. Returns True when the run ended
    for a restart, so the caller re-reads ``config_path`` and serves again.
    While it runs, ``<data_dir>/nightbox.lock`` contains this process's
    pid. Raises StoreError when another Nightbox process uses the data
    folder, BrokerUnavailableError when the broker cannot start, and
    HardwareError when the configured scanner cannot start. A studio panel
    button that cannot start is logged, and the box runs without it.

    ``notifier`` (by default the one for ``$NOTIFY_SOCKET``) tells systemd
    when the box is ready, reloading or stopping, and sends the watchdog's
    keep-alives while the box's bus is connected.
    """
    if notifier is None:
        notifier = process_notifier()
    raise_open_file_limit()
    with _locked(config.data_dir):
        return await _serve(config, stop, announce, config_path, reload, notifier)


def raise_open_file_limit(wanted: int = OPEN_FILE_LIMIT) -> int:
    """Raise the soft open file limit toward ``wanted``; return the new soft limit.

    The soft limit never goes above the hard limit, and a soft limit that
    is already higher stays as it is. A refusal by the system is logged,
    and the box runs with the limit it has.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as err:
        _LOGGER.warning(
            "Cannot raise the open file limit from %d to %d: %s; the box may run "
            "out of file descriptors with many stream viewers",
            soft,
            target,
            err,
        )
        return soft
    _LOGGER.info("Raised the open file limit from %d to %d", soft, target)
    return target


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # Two boxes on one store would interleave check-outs and fight over one
    # client id, so the second one stops here with the first one's pid.
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = open(data_dir / "nightbox.lock", "a+")  # noqa: SIM115
    except OSError as err:
        raise StoreError(
            f"cannot use data folder {data_dir}: {err}; set box.data_dir to a "
            "folder this user can write"
        ) from err
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise StoreError(
                f"data folder {data_dir} is in use by another Nightbox process "
                f"(pid {owner}); stop it first"
            ) from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


async def _serve(
    config: SiteConfig,
    stop: asyncio.Event,
    announce: Callable[[str], None],
    config_path: Path | None,
    reload: asyncio.Event | None,
    notifier: SystemdNotifier,
) -> bool:
    credentials = credentials_for(config)
    policy = site_policy(
        config.site_id,
        config.box_id,
        [ReaderGrant(reader.id, reader.role) for reader in config.readers],
        config.commerce.terminals,
    )
    broker = await start_broker(
        config.broker, config.data_dir / "run", credentials, policy
    )
    announce(f"Broker: {broker.description}")
    keep_alive: asyncio.Task[None] | None = None
    try:
        async with Box(
            config,
            config.system_clock(),
            credentials,
            broker.host,
            broker.port,
            broker_kind=broker.kind,
            config_path=config_path,
        ) as box:
            scanner_service = None
            if config.scanner != "none":
                scanner = create_scanner(config.scanner)
                scanner_service = ScannerService(
                    box.bus, scanner, config.box_id, box.clock
                )
                try:
                    await scanner_service.start()
                except ScannerError as err:
                    raise HardwareError(
                        f"the {config.scanner} scanner did not start: {err}; "
                        "set box.scanner to 'none' or 'simulator'"
                    ) from err
            button = await _start_studio(box, announce)
            await _start_portal(box, announce)
            tune_garbage_collector()
            announce(
                f"Box {config.box_id} of site {config.site_id} running; data "
                f"folder {config.data_dir}, broker credentials in "
                f"{credentials.path}. Stop with Ctrl-C."
            )
            notifier.ready(
                f"Box {config.box_id} of site {config.site_id} running; "
                f"broker {broker.description}"
            )
            keep_alive = notifier.start_keep_alive(box.bus.connected)
            restart = box.management.restart_requested
            await _first_set(stop, restart, *([reload] if reload else []))
            if stop.is_set():
                notifier.stopping()
            else:
                notifier.reloading()
            if scanner_service is not None:
                await scanner_service.stop()
            if button is not None:
                button.close()
    finally:
        if keep_alive is not None:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive
        await broker.stop()
        announce("Stopped.")
    restarting = restart.is_set() or (reload is not None and reload.is_set())
    return restarting and not stop.is_set()


async def _start_studio(
    box: Box, announce: Callable[[str], None]
) -> PanelButton | None:
    """Serve the studio's stream over HTTP and wire its panel button.

    Returns the button, or None without a studio, a configured pin or a
    button that could start. A button that cannot start does not stop the
    box, because the stream matters more than one way to cut clips: the
    cause is logged once and shown as the studio's ``last_error``.
    Raises ConfigError when the HTTP port cannot be bound.
    """
    studio = box.studio
    if studio is None:
        return None
    try:
        http = await studio.serve_http()
    except OSError as err:
        raise ConfigError(str(err)) from err
    button = None
    try:
        button = create_panel_button(
            studio.config.button_pin,
            studio.on_button,
            loop=asyncio.get_running_loop(),
        )
    except PanelError as err:
        studio.last_error = str(err)
        _LOGGER.error(
            "%s. The box runs without the button; clips can still be cut from"
            " the console and creator stations",
            err,
        )
    announce(
        f"Stream on http://{studio.config.http_host}:{http.port}/stream/live.m3u8 "
        "(viewers need a token with scope stream:view: `nightbox token issue "
        "--subject <viewer> --scope stream:view`)"
    )
    return button


async def _start_portal(box: Box, announce: Callable[[str], None]) -> None:
    """Serve the guest portal when the site has one.

    Raises ConfigError when its port cannot be bound.
    """
    portal = box.portal
    if portal is None:
        return
    try:
        await portal.serve_http()
    except OSError as err:
        raise ConfigError(str(err)) from err
    announce(
        f"Guest portal on http://{portal.config.host}:{portal.port}/ (QR codes "
        f"point at {portal.config.public_url}; print the sign with `nightbox "
        "portal sign`)"
    )


async def _first_set(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
