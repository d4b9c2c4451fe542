"""Start the bus: a private mosquitto, the embedded broker, or an external one.

``nightbox run`` and ``nightbox demo`` call :func:`start_broker`. In ``auto``
mode they start mosquitto with the site's generated passwords and ACLs when
it is installed, and otherwise the embedded broker, which enforces the same
policy in-process. In ``system`` mode (the Nightbox image) systemd runs
mosquitto, and the box only writes its files (``_system_broker.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance._tasks import cancel_and_wait
from appliance.bus._system_broker import (
    wait_for_system_broker,
    write_system_broker_files,
)
from appliance.config import BrokerConfig
from appliance.errors import BrokerUnavailableError
from provisioning import AccessPolicy, SiteCredentials

if TYPE_CHECKING:
    from appliance.bus._embedded_broker import EmbeddedBroker

_LOGGER = logging.getLogger(__name__)

_MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_READY_TIMEOUT_S = 10.0
# How often a supervised mosquitto is checked, and the wait before another
# try after a restart failed (doubled up to the maximum).
_SUPERVISE_INTERVAL_S = 1.0
_RESTART_RETRY_S = 1.0
_RESTART_RETRY_MAX_S = 30.0
# From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _MOSQUITTO_PATHS if os.access(path, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _check_port_free(host: str, port: int) -> None:
    # SO_REUSEADDR as the brokers use it: only a socket that is listening
    # (another Nightbox or broker) makes the bind fail, not one in TIME_WAIT.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise BrokerUnavailableError(
                f"port {port} on {host} is already in use, perhaps by another "
                "nightbox run; stop it or set broker.port to a free port"
            ) from err


@dataclass
class BrokerHandle:
    """A running broker: where it listens and what kind it is."""

    kind: str
    host: str
    port: int
    _process: subprocess.Popen[bytes] | None = None
    _embedded: EmbeddedBroker | None = None
    _config_path: Path | None = None
    _log_path: Path | None = None
    _supervisor: asyncio.Task[None] | None = None

    @property
    def description(self) -> str:
        """A line for people: which broker the box uses and where."""
        label = {
            "embedded": "embedded broker",
            "external": "external broker",
            "system": "system mosquitto",
        }
        return f"{label.get(self.kind, self.kind)} on {self.host}:{self.port}"

    def supervise(self) -> None:
        """Restart the private mosquitto whenever it exits, until :meth:`stop`.

        A broker that crashed or was killed would otherwise leave the site
        without a bus until the box restarts. The new broker uses the same
        port, configuration, passwords and ACL files, so clients reconnect
        by themselves.
        """
        if self._process is None or self._supervisor is not None:
            return
        self._supervisor = asyncio.get_running_loop().create_task(
            self._keep_running(), name=f"mosquitto-{self.port}"
        )

    async def _keep_running(self) -> None:
        retry_s = _RESTART_RETRY_S
        while True:
            await asyncio.sleep(_SUPERVISE_INTERVAL_S)
            process = self._process
            if process is None or process.poll() is None or self._config_path is None:
                continue
            _LOGGER.error(
                "mosquitto (pid %d) on %s:%d exited with code %s; restarting it "
                "with %s",
                process.pid,
                self.host,
                self.port,
                process.returncode,
                self._config_path,
            )
            try:
                self._process = await _launch_mosquitto(
                    self._config_path, self.host, self.port, self._log_path
                )
            except BrokerUnavailableError as err:
                _LOGGER.error(
                    "Restarting mosquitto on %s:%d failed: %s; trying again in %.0f s",
                    self.host,
                    self.port,
                    err,
                    retry_s,
                )
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, _RESTART_RETRY_MAX_S)
                continue
            retry_s = _RESTART_RETRY_S

    async def stop(self) -> None:
        """Stop the broker if this process started it.

        An external broker and the system mosquitto keep running.
        """
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor)
            self._supervisor = None
        if self._process is not None:
            self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, 5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
            self._process = None
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None

    async def restart(self) -> None:
        """Stop and start a private mosquitto on the same port (used by tests)."""
        if self.kind != "mosquitto" or self._config_path is None:
            raise BrokerUnavailableError(f"cannot restart a {self.kind} broker")
        await self.stop()
        self._process = await _launch_mosquitto(
            self._config_path, self.host, self.port, self._log_path
        )
        self.supervise()


async def start_broker(
    config: BrokerConfig,
    runtime_dir: Path,
    credentials: SiteCredentials,
    policy: AccessPolicy,
) -> BrokerHandle:
    """Start or locate the broker that ``config`` selects.

    Raises BrokerUnavailableError when ``mosquitto`` mode is selected and
    mosquitto is missing or fails to start.
    """
    credentials.ensure(policy.usernames)
    if config.mode == "external":
        return BrokerHandle("external", config.host, config.port)
    if config.mode == "system":
        return await _use_system_broker(config, credentials, policy)
    mosquitto = find_mosquitto() if config.mode in ("auto", "mosquitto") else None
    if mosquitto is None and config.mode == "mosquitto":
        raise BrokerUnavailableError(
            "broker.mode is 'mosquitto' but mosquitto is not installed; "
            "install it (apt-get install mosquitto) or set broker.mode = 'auto'"
        )
    try:
        port = config.port or free_port(config.host)
        _check_port_free(config.host, port)
    except BrokerUnavailableError:
        raise
    except OSError as err:
        raise BrokerUnavailableError(
            f"cannot listen on {config.host}:{config.port or 'a free port'}: "
            f"{err}; set broker.host to an address of this machine"
        ) from err
    if mosquitto is not None:
        config_path = _write_mosquitto_files(
            runtime_dir, config.host, port, credentials, policy
        )
        log_path = runtime_dir / "mosquitto.log"
        process = await _launch_mosquitto(config_path, config.host, port, log_path)
        handle = BrokerHandle(
            "mosquitto", config.host, port, process, None, config_path, log_path
        )
        handle.supervise()
        return handle
    from appliance.bus._embedded_broker import EmbeddedBroker

    passwords = {name: credentials.account(name).password for name in policy.usernames}
    broker = EmbeddedBroker(config.host, port, passwords=passwords, policy=policy)
    await broker.start()
    return BrokerHandle("embedded", config.host, broker.port, None, broker)


async def _use_system_broker(
    config: BrokerConfig, credentials: SiteCredentials, policy: AccessPolicy
) -> BrokerHandle:
    """Write the system mosquitto's files where they changed, then wait for it."""
    files = write_system_broker_files(
        config.config_dir, config.host, config.port, credentials, policy
    )
    # The box's own account is the one that every site policy names "box-...";
    # the other accounts belong to readers, terminals and people.
    box_accounts = [name for name in policy.usernames if name.startswith("box-")]
    username = box_accounts[0] if box_accounts else policy.usernames[0]
    await wait_for_system_broker(
        config.host, config.port, credentials.account(username), files.conf
    )
    return BrokerHandle("system", config.host, config.port, _config_path=files.conf)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The certificate and key (PEM) a TLS listener presents."""

    certificate: Path
    key: Path


async def start_fleet_mosquitto(
    runtime_dir: Path,
    host: str,
    port: int,
    credentials: SiteCredentials,
    policy: AccessPolicy,
    tls: TlsFiles,
) -> BrokerHandle:
    """Start a mosquitto for a fleet: a TLS listener and persistent sessions.

    Messages queued for a collector's persistent session are saved in
    ``runtime_dir`` every second and when the broker stops, and reloaded
    when it starts again.
    """
    credentials.ensure(policy.usernames)
    _check_port_free(host, port)
    config_path = _write_mosquitto_files(
        runtime_dir, host, port, credentials, policy, tls=tls
    )
    log_path = runtime_dir / "mosquitto.log"
    process = await _launch_mosquitto(config_path, host, port, log_path)
    return BrokerHandle("mosquitto", host, port, process, None, config_path, log_path)


def _write_mosquitto_files(
    runtime_dir: Path,
    host: str,
    port: int,
    credentials: SiteCredentials,
    policy: AccessPolicy,
    *,
    tls: TlsFiles | None = None,
) -> Path:
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password_path = runtime_dir / "mosquitto.passwd"
    acl_path = runtime_dir / "mosquitto.acl"
    config_path = runtime_dir / "mosquitto.conf"
    _write_private(password_path, credentials.render_password_file())
    _write_private(acl_path, policy.render_mosquitto())
    lines = [
        "# Generated by Nightbox; regenerated on every start.",
        f"listener {port} {host}",
        "allow_anonymous false",
        # Small request/response messages must not wait for Nagle's delay.
        "set_tcp_nodelay true",
        f"password_file {password_path}",
        f"acl_file {acl_path}",
    ]
    if tls is None:
        lines.append("persistence false")
    else:
        lines += [
            f"certfile {tls.certificate}",
            f"keyfile {tls.key}",
            "tls_version tlsv1.2",
            "persistence true",
            f"persistence_location {runtime_dir}/",
            # mosquitto 2.0 saves its in-memory database when it stops and,
            # with autosave_on_changes false (the default), every
            # autosave_interval seconds (1800 by default, mosquitto.conf(5)
            # of 2.0.11). Each save rewrites the whole file, so a short
            # interval suits a test broker's small queues. A crash still
            # loses what was acknowledged since the last save; boxes send
            # it again after `nightbox sync resend` (docs/sync.md).
            "autosave_interval 1",
            # Offline collectors' queues hold a whole night of events.
            "max_queued_messages 0",
            "persistent_client_expiration 14d",
        ]
    lines += [
        "max_queued_messages 20000" if tls is None else "max_queued_bytes 0",
        "max_inflight_messages 100",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # mosquitto drops root to the 'mosquitto' user, which could not read
        # the 0600 files above; this private broker listens on one port only.
        lines.append(f"user {getpass.getuser()}")
    _write_private(config_path, "\n".join(lines) + "\n")
    return config_path


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """Return a pre-exec hook that stops the child when this process dies.

    Without it, a box killed with SIGKILL (or a power-cut-like crash of its
    process) leaves its private mosquitto running on the port, and the next
    start fails. Linux only: prctl(PR_SET_PDEATHSIG) makes the kernel send
    SIGTERM to the child when the thread that started it exits.
    """
    if not sys.platform.startswith("linux"):
        return None

    def hook() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


def _spawn(binary: str, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        # The child keeps its own copy of the descriptor after this closes.
        return subprocess.Popen(
            [binary, "-c", str(config_path)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(os.getpid()),
            # A process group of its own: Ctrl-C or a SIGTERM sent to the
            # box's group would stop mosquitto before the box's services
            # close their connections, and they would log a lost broker.
            # The box stops it after them. NOTE: systemd's default
            # KillMode=control-group still signals every process of the
            # unit; KillMode=mixed signals only the box's main process.
            start_new_session=True,
        )


async def _launch_mosquitto(
    config_path: Path, host: str, port: int, log_path: Path | None
) -> subprocess.Popen[bytes]:
    binary = find_mosquitto()
    if binary is None:
        raise BrokerUnavailableError("mosquitto is not installed")
    log_path = log_path or config_path.with_suffix(".log")
    process = _spawn(binary, config_path, log_path)
    try:
        return await _wait_until_listening(process, host, port, log_path)
    except BaseException:
        # Cancelled or failed: no caller holds the process to stop it later.
        if process.poll() is None:
            process.kill()
            process.wait()
        raise


async def _wait_until_listening(
    process: subprocess.Popen[bytes], host: str, port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _READY_TIMEOUT_S
    while loop.time() < deadline:
        if process.poll() is not None:
            raise BrokerUnavailableError(
                f"mosquitto exited with code {process.returncode} at start-up; "
                f"see {log_path}"
            )
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            _LOGGER.info("Started mosquitto on %s:%d (pid %d)", host, port, process.pid)
            return process
        await asyncio.sleep(0.05)
    raise BrokerUnavailableError(
        f"mosquitto did not listen on {host}:{port} within {_READY_TIMEOUT_S} s"
    )
