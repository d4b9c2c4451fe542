"""systemd's service notifications (sd_notify) and watchdog keep-alive.

A unit of ``Type=notify`` or ``Type=notify-reload`` learns from these
datagrams when the box is ready, reloading or stopping, and a unit with
``WatchdogSec=`` restarts the box when the keep-alive stops. systemd passes
the socket in ``$NOTIFY_SOCKET``: a file system path, or an abstract socket
name when it starts with ``@``. Without it every call does nothing, so the
box runs the same outside systemd. The protocol is described in
sd_notify(3) and sd_watchdog_enabled(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

_LOGGER = logging.getLogger(__name__)

# The variables systemd sets for the main process. They are removed from the
# environment once read, so that child processes (mosquitto, which has its
# own sd_notify support, and ffmpeg) do not send notifications as the box.
_ENVIRONMENT_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SystemdNotifier:
    """A sender of sd_notify datagrams to one notification socket."""

    def __init__(
        self, socket_name: str | None, watchdog_usec: int | None = None
    ) -> None:
        """Send to ``socket_name`` (a path or ``@abstract``; None sends nothing).

        ``watchdog_usec`` is systemd's watchdog interval in microseconds, or
        None when the unit has no watchdog for this process.
        """
        self._address = _socket_address(socket_name) if socket_name else None
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._send_failed = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None
    ) -> SystemdNotifier:
        """Return a notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``.

        The watchdog applies when ``$WATCHDOG_PID`` is unset or is this
        process's pid. An invalid ``$WATCHDOG_USEC`` is logged and ignored.
        """
        env = os.environ if environ is None else environ
        socket_name = env.get("NOTIFY_SOCKET") or None
        watchdog_pid = env.get("WATCHDOG_PID")
        watchdog_usec = None
        if watchdog_pid is None or watchdog_pid == str(os.getpid()):
            watchdog_usec = _parse_watchdog_usec(env.get("WATCHDOG_USEC"))
        return cls(socket_name, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between keep-alives (half systemd's interval), or None."""
        if self._address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def ready(self, status: str) -> None:
        """Tell systemd that the box has started, with a one-line status."""
        self.send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """Set the status line that ``systemctl status`` shows."""
        self.send(f"STATUS={_one_line(text)}")

    def stopping(self) -> None:
        """Tell systemd that the box is stopping."""
        self.send("STOPPING=1")

    def reloading(self) -> None:
        """Tell systemd that the box is reloading its configuration.

        ``MONOTONIC_USEC`` is required by systemd 253 and later for
        ``Type=notify-reload``; older versions and ``Type=notify`` ignore it.
        A ``ready`` call ends the reload.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def watchdog(self) -> None:
        """Send one watchdog keep-alive."""
        self.send("WATCHDOG=1")

    def send(self, message: str) -> bool:
        """Send ``message`` as one datagram; return True when it was sent.

        A failed send never raises, because the box must keep running
        without its supervisor. The first failure is logged; later ones are
        not, so a missing socket does not flood the log.
        """
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as err:
            if not self._send_failed:
                self._send_failed = True
                _LOGGER.warning(
                    "Cannot send a systemd notification to %s: %s; the box runs "
                    "on, but systemd may take it as not ready or hung",
                    _printable(self._address),
                    err,
                )
            return False
        return True

    async def keep_alive(self, connected: asyncio.Event) -> None:
        """Send ``WATCHDOG=1`` every half watchdog interval while ``connected`` is set.

        Runs until cancelled. It is a task on the box's event loop, so a
        blocked loop stops the keep-alives too, and so does a lost broker
        link: systemd then restarts the box once the watchdog interval has
        passed without one. Returns at once without a watchdog.
        """
        interval_s = self.watchdog_interval_s
        if interval_s is None:
            return
        while True:
            if connected.is_set():
                self.watchdog()
            await asyncio.sleep(interval_s)

    def start_keep_alive(self, connected: asyncio.Event) -> asyncio.Task[None] | None:
        """Start :meth:`keep_alive` as a task; return None without a watchdog."""
        if self.watchdog_interval_s is None:
            return None
        return asyncio.create_task(self.keep_alive(connected), name="systemd-watchdog")

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def process_notifier() -> SystemdNotifier:
    """Return this process's notifier, read from the environment on the first call.

    The systemd variables are then removed from ``os.environ``, so that the
    processes the box starts do not inherit them, and later calls (a box
    restarting in the same process) return the same notifier.
    """
    global _PROCESS_NOTIFIER
    if _PROCESS_NOTIFIER is None:
        _PROCESS_NOTIFIER = SystemdNotifier.from_environment()
        for name in _ENVIRONMENT_NAMES:
            os.environ.pop(name, None)
    return _PROCESS_NOTIFIER


_PROCESS_NOTIFIER: SystemdNotifier | None = None


def _socket_address(name: str) -> str | bytes:
    # A leading '@' names a socket in the abstract namespace, whose address
    # starts with a NUL byte instead.
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def _parse_watchdog_usec(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        usec = int(value)
    except ValueError:
        usec = 0
    if usec <= 0:
        _LOGGER.warning(
            "Ignoring WATCHDOG_USEC=%r: expected a positive number of "
            "microseconds; check WatchdogSec= in the unit",
            value,
        )
        return None
    return usec


def _one_line(text: str) -> str:
    # A newline would start a new notification field.
    return " ".join(text.split())


def _printable(address: str | bytes) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return address
