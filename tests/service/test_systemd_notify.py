"""SystemdNotifier: datagrams, environment, and the watchdog tied to the bus."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bus.broker import BrokerHandle
from appliance.runtime import Box
from appliance.systemd_notify import SystemdNotifier

# 100 ms: a keep-alive every 50 ms.
WATCHDOG_USEC = 100_000


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    """A unix datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    with sock:
        yield sock


def drain(receiver: socket.socket) -> list[str]:
    """Return every datagram waiting on ``receiver``."""
    received = []
    while True:
        try:
            received.append(receiver.recv(4096).decode())
        except BlockingIOError:
            return received


async def receive(receiver: socket.socket, timeout_s: float = 10.0) -> str:
    """Wait for one datagram on ``receiver``."""
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(receiver, 4096), timeout_s)
    return data.decode()


async def test_watchdog_silent_while_bus_disconnected(
    box: Box, mosquitto: BrokerHandle, receiver: socket.socket
) -> None:
    notifier = SystemdNotifier(receiver.getsockname(), WATCHDOG_USEC)
    keep_alive = notifier.start_keep_alive(box.bus.connected)
    assert keep_alive is not None
    try:
        assert await receive(receiver) == "WATCHDOG=1"

        await mosquitto.stop()
        # The bus has no event for a lost link, only `connected` cleared.
        while box.bus.connected.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        drain(receiver)
        # Ten keep-alive intervals with the broker gone.
        await asyncio.sleep(10 * WATCHDOG_USEC / 2_000_000)
        assert drain(receiver) == []
        assert not keep_alive.done()

        await mosquitto.restart()
        await asyncio.wait_for(box.bus.connected.wait(), timeout=10)
        assert await receive(receiver) == "WATCHDOG=1"
    finally:
        keep_alive.cancel()
        notifier.close()


async def test_watchdog_stops_with_blocked_loop(receiver: socket.socket) -> None:
    connected = asyncio.Event()
    connected.set()
    notifier = SystemdNotifier(receiver.getsockname(), WATCHDOG_USEC)
    keep_alive = notifier.start_keep_alive(connected)
    assert keep_alive is not None
    try:
        assert await receive(receiver) == "WATCHDOG=1"
        drain(receiver)
        # Code that blocks the event loop holds back the keep-alive, because
        # it is a task on that loop and not a thread of its own.
        time.sleep(10 * WATCHDOG_USEC / 2_000_000)  # noqa: ASYNC251
        assert drain(receiver) == []
    finally:
        keep_alive.cancel()
        notifier.close()


def test_messages_sent_as_datagrams(receiver: socket.socket) -> None:
    notifier = SystemdNotifier(receiver.getsockname())
    notifier.ready("Box box-1\nrunning")
    notifier.status("3 readers")
    notifier.reloading()
    notifier.stopping()
    notifier.close()

    received = drain(receiver)

    assert received[0] == "READY=1\nSTATUS=Box box-1 running"
    assert received[1] == "STATUS=3 readers"
    reload_fields = received[2].split("\n")
    assert reload_fields[0] == "RELOADING=1"
    assert reload_fields[1].startswith("MONOTONIC_USEC=")
    assert int(reload_fields[1].removeprefix("MONOTONIC_USEC=")) > 0
    assert received[3] == "STOPPING=1"
    assert len(received) == 4


def test_abstract_socket_name() -> None:
    name = f"nightbox-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.setblocking(False)
        notifier = SystemdNotifier("@" + name)
        assert notifier.send("STATUS=abstract")
        notifier.close()
        assert drain(sock) == ["STATUS=abstract"]


async def test_no_socket_sends_nothing(receiver: socket.socket) -> None:
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "100000"})
    connected = asyncio.Event()
    connected.set()

    notifier.ready("running")
    notifier.stopping()

    assert not notifier.enabled
    assert notifier.send("STATUS=x") is False
    assert notifier.watchdog_interval_s is None
    assert notifier.start_keep_alive(connected) is None
    assert drain(receiver) == []


def test_environment_watchdog_pid(receiver: socket.socket) -> None:
    path = receiver.getsockname()
    own = SystemdNotifier.from_environment(
        {
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "400000",
            "WATCHDOG_PID": str(os.getpid()),
        }
    )
    other = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    )
    unset = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    )

    assert own.watchdog_interval_s == 0.2
    assert other.watchdog_interval_s is None
    assert unset.watchdog_interval_s == 0.2


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_invalid_watchdog_usec_ignored(
    value: str, receiver: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": receiver.getsockname(), "WATCHDOG_USEC": value}
    )

    assert notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert f"WATCHDOG_USEC={value!r}" in caplog.text


def test_send_failure_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "missing.sock"))
    caplog.set_level(logging.WARNING)

    first = notifier.send("WATCHDOG=1")
    second = notifier.send("WATCHDOG=1")
    notifier.close()

    assert first is False
    assert second is False
    warnings = [r for r in caplog.records if "systemd notification" in r.getMessage()]
    assert len(warnings) == 1
    assert "missing.sock" in warnings[0].getMessage()
