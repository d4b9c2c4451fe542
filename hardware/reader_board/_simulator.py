"""A simulated ESP32 reader board on a loopback TCP port.

Every TCP connection is a reset of the board, like opening the USB serial
port of a board whose DTR/RTS lines pulse EN. What the board does next
depends on the first bytes the host sends and on what is in flash:

- SLIP (0xC0) first: the ROM serial loader (download mode), for esptool;
- otherwise, or after a second of silence, the board boots from flash. A
  blank flash prints the ROM's ``invalid header`` loop and never replies.
  A MicroPython image runs the REPL on the real MicroPython WebAssembly
  interpreter, with the filesystem kept in ``state_dir/fs``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

from hardware.reader_board import _boot_text, _registers, _slip
from hardware.reader_board._errors import BoardSimulatorError
from hardware.reader_board._flash import APP_IMAGE_OFFSET, Flash, make_test_image
from hardware.reader_board._micropython import (
    EXIT_BOOTLOADER,
    EXIT_HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    MicroPythonRuntime,
)
from hardware.reader_board._rom_loader import LoaderAction, RomLoader

_log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
# How long a fresh connection waits for the host's first byte before the board
# boots from flash. esptool sends its first SYNC within milliseconds.
_FIRST_BYTE_WAIT_S = 1.0
_POLL_S = 0.1
# How long a closed session may take to save its files before it is killed.
_INTERPRETER_EXIT_S = 5.0
# A blank ESP32 repeats "invalid header" until its RTC watchdog resets it.
_INVALID_HEADER_PERIOD_S = 0.2
_INVALID_HEADERS_PER_RESET = 20
_DOWNLOAD_BOOT = (
    "rst:0xc (SW_CPU_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))"
)


class _ConnectionClosed(Exception):
    """The host closed the connection, or the simulator is stopping."""


class BoardSimulator:
    """A simulated ESP32-D0WD-V3 with 4 MB flash that esptool and mpremote drive.

    ``state_dir`` keeps ``flash.bin`` (the flash chip) and ``fs/`` (the
    MicroPython filesystem), so a board keeps its firmware and files across
    simulator restarts. ``flash_writes`` lists the ``(offset, length)`` runs
    programmed through the ROM loader and ``rom_errors`` counts its error
    responses by kind. With ``micropython=True`` a test image from
    :func:`make_test_image` is written at 0x1000 on start when the flash
    has no MicroPython yet.
    """

    def __init__(
        self, state_dir: Path | str, micropython: bool = False, port: int = 0
    ) -> None:
        self.state_dir = Path(state_dir)
        self.flash_writes: list[tuple[int, int]] = []
        self.rom_errors: Counter[str] = Counter()
        self._micropython = micropython
        self._port = port
        self._flash: Flash | None = None
        self._runtime: MicroPythonRuntime | None = None
        self._mac = _registers.board_mac(str(self.state_dir.resolve()))
        self._server: socket.socket | None = None
        self._bound_port: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: socket.socket | None = None
        self._handlers: list[threading.Thread] = []
        self._processes: set[subprocess.Popen[bytes]] = set()
        self.connections = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> BoardSimulator:
        """Open the flash file and start listening on a loopback port.

        Raises MicroPythonRuntimeError when Node.js or the MicroPython
        WebAssembly package is missing, and BoardSimulatorError when the
        flash file is unusable.
        """
        if self._server is not None:
            raise BoardSimulatorError("board simulator already started")
        self._runtime = MicroPythonRuntime.locate()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "fs").mkdir(exist_ok=True)
        self._flash = Flash(self.state_dir / "flash.bin")
        if self._micropython and not self._flash.has_micropython():
            image = make_test_image()
            self._flash.erase(APP_IMAGE_OFFSET, len(image))
            self._flash.write(APP_IMAGE_OFFSET, image)
        self._flash.save()
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((_LOOPBACK, self._port))
        server.listen(4)
        self._server = server
        self._bound_port = server.getsockname()[1]
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"board-sim-{self.port}", daemon=True
        )
        self._accept_thread.start()
        _log.info("board simulator for %s listening on %s", self.state_dir, self.url)
        return self

    def stop(self) -> None:
        """Close every connection, end the interpreter and save the flash."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            active = self._active
            processes = list(self._processes)
        if active is not None:
            _shutdown(active)
        for process in processes:
            process.kill()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        for handler in self._handlers:
            handler.join(timeout=5)
        if self._flash is not None:
            self._flash.save()
        if self._server is not None:
            _log.info("board simulator for %s stopped", self.state_dir)
        self._server = None

    def __enter__(self) -> BoardSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what a test inspects ---------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; raises BoardSimulatorError before start()."""
        if self._bound_port is None:
            raise BoardSimulatorError("board simulator not started: call start() first")
        return self._bound_port

    @property
    def url(self) -> str:
        """The pyserial URL to pass to esptool and mpremote as the port."""
        return f"socket://{_LOOPBACK}:{self.port}"

    @property
    def has_micropython(self) -> bool:
        """True when flash contains a MicroPython image at 0x1000."""
        flash = self._flash or Flash(self.state_dir / "flash.bin")
        return flash.has_micropython()

    @property
    def files(self) -> dict[str, bytes]:
        """The board's filesystem as saved after the last command that ran."""
        root = self.state_dir / "fs"
        if not root.is_dir():
            return {}
        return {
            "/" + path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and not path.name.endswith(".partial")
        }

    @property
    def mac(self) -> bytes:
        """The board's Wi-Fi MAC address, stable for a given ``state_dir``."""
        return self._mac

    # -- connections -------------------------------------------------------

    def _accept_loop(self) -> None:
        server = self._server
        assert server is not None
        while not self._stopping.is_set():
            try:
                # Closing a listening socket does not wake accept() on Linux.
                readable, _, _ = select.select([server], [], [], _POLL_S)
                if not readable:
                    continue
                conn, peer = server.accept()
            except (OSError, ValueError):
                return
            # Replies are a few bytes each, so they go out at once instead of
            # waiting for the host's ACK under Nagle's algorithm.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                previous = self._active
                self._active = conn
                self.connections += 1
            if previous is not None:
                # A serial port has one user: the new connection resets the board.
                _log.info(
                    "board %s: new connection, dropping the previous one", self.url
                )
                _shutdown(previous)
            handler = threading.Thread(
                target=self._serve,
                args=(conn, peer, self._handlers[-1] if self._handlers else None),
                name="board-sim-conn",
                daemon=True,
            )
            self._handlers = [h for h in self._handlers if h.is_alive()]
            self._handlers.append(handler)
            handler.start()

    def _serve(
        self,
        conn: socket.socket,
        peer: tuple[str, int],
        previous: threading.Thread | None,
    ) -> None:
        _log.info("board %s: reset by connection from %s:%d", self.url, *peer)
        if previous is not None:
            # The previous session saves flash and files before this boot reads them.
            previous.join(timeout=_INTERPRETER_EXIT_S)
        try:
            # esptool puts a real board into download mode by pulsing EN and
            # GPIO0 through DTR/RTS, and a real flash erase takes seconds.
            # Here the host's first byte picks the mode and flash writes are
            # instant.
            first = self._receive(conn, _FIRST_BYTE_WAIT_S)
            if first[:1] == bytes([_slip.END]):
                _log.info(
                    "board %s: host speaks SLIP, entering the ROM loader", self.url
                )
                self._run_rom_loader(conn, first)
            else:
                self._boot_from_flash(
                    conn, first, _boot_text.POWER_ON_RESET, PWRON_RESET
                )
        except _ConnectionClosed:
            pass
        except OSError as err:
            _log.info("board %s: connection ended: %s", self.url, err)
        finally:
            if self._flash is not None:
                with self._lock:
                    self._flash.save()
            with self._lock:
                if self._active is conn:
                    self._active = None
            conn.close()
            _log.info("board %s: connection from %s:%d closed", self.url, *peer)

    def _receive(self, conn: socket.socket, timeout_s: float) -> bytes:
        """Return what arrives within ``timeout_s`` (b"" when nothing did)."""
        if self._stopping.is_set():
            raise _ConnectionClosed
        readable, _, _ = select.select([conn], [], [], timeout_s)
        if not readable:
            return b""
        data = conn.recv(65536)
        if not data:
            raise _ConnectionClosed
        return data

    def _run_rom_loader(self, conn: socket.socket, first: bytes) -> None:
        assert self._flash is not None
        loader = RomLoader(self._flash, self._mac, self.flash_writes, self.rom_errors)
        decoder = _slip.Decoder()
        data = first
        while True:
            for packet in decoder.feed(data):
                with self._lock:
                    responses, action = loader.handle(packet)
                conn.sendall(b"".join(_slip.encode(r) for r in responses))
                if action is LoaderAction.RUN_FLASH:
                    self._boot_from_flash(
                        conn, b"", _boot_text.SOFTWARE_RESET, SOFT_RESET
                    )
                    return
            data = self._receive(conn, _POLL_S)

    def _boot_from_flash(
        self, conn: socket.socket, pending: bytes, reset_reason: str, reset_cause: int
    ) -> None:
        assert self._flash is not None
        if not self._flash.has_micropython():
            self._blank_boot_loop(conn, reset_reason)
            return
        self._run_micropython(conn, pending, reset_reason, reset_cause)

    def _blank_boot_loop(self, conn: socket.socket, reset_reason: str) -> None:
        assert self._flash is not None
        header = self._flash.read(APP_IMAGE_OFFSET, 4)
        complaint = _boot_text.invalid_header(int.from_bytes(header, "little"))
        _log.info("board %s: no MicroPython image at 0x1000, boot loop", self.url)
        conn.sendall(_boot_text.rom_banner(reset_reason))
        while True:
            for _ in range(_INVALID_HEADERS_PER_RESET):
                conn.sendall(complaint)
                deadline = time.monotonic() + _INVALID_HEADER_PERIOD_S
                # The ROM reads nothing from the UART while it boots.
                while (remaining := deadline - time.monotonic()) > 0:
                    self._receive(conn, remaining)
            conn.sendall(_boot_text.rom_banner(_boot_text.WATCHDOG_RESET))

    def _run_micropython(
        self, conn: socket.socket, pending: bytes, reset_reason: str, reset_cause: int
    ) -> None:
        assert self._runtime is not None
        while True:
            conn.sendall(_boot_text.image_boot(reset_reason))
            process = self._runtime.spawn(self.state_dir / "fs", self._mac, reset_cause)
            with self._lock:
                self._processes.add(process)
            try:
                status = self._pump(conn, process, pending)
            finally:
                with self._lock:
                    self._processes.discard(process)
                # With stdin closed the interpreter saves its files and exits.
                try:
                    process.wait(timeout=_INTERPRETER_EXIT_S)
                except subprocess.TimeoutExpired:
                    _log.warning(
                        "board %s: interpreter did not exit, killing it", self.url
                    )
                    process.kill()
                    process.wait()
            pending = b""
            if status == EXIT_HARD_RESET:
                _log.info("board %s: machine.reset()", self.url)
                reset_reason, reset_cause = _boot_text.SOFTWARE_RESET, SOFT_RESET
                continue
            if status == EXIT_BOOTLOADER:
                _log.info(
                    "board %s: machine.bootloader(), entering the ROM loader", self.url
                )
                conn.sendall(
                    _boot_text.rom_banner(_DOWNLOAD_BOOT) + b"waiting for download\r\n"
                )
                self._run_rom_loader(conn, b"")
                return
            _log.error(
                "board %s: MicroPython interpreter exited with status %s; "
                "closing the connection",
                self.url,
                status,
            )
            return

    def _pump(
        self, conn: socket.socket, process: subprocess.Popen[bytes], pending: bytes
    ) -> int:
        """Relay bytes between the host and the interpreter; return its exit status."""
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        stdout_fd = process.stdout.fileno()
        stderr_fd = process.stderr.fileno()
        conn_fd = conn.fileno()
        if pending:
            process.stdin.write(pending)
            process.stdin.flush()
        errors = b""
        while True:
            if self._stopping.is_set():
                raise _ConnectionClosed
            readable, _, _ = select.select(
                [conn_fd, stdout_fd, stderr_fd], [], [], _POLL_S
            )
            if stderr_fd in readable:
                errors += _read_fd(stderr_fd)
            if stdout_fd in readable:
                output = _read_fd(stdout_fd)
                if not output:
                    status = process.wait()
                    if errors:
                        _log.warning(
                            "board %s: interpreter stderr: %s", self.url, errors[-2000:]
                        )
                    return status
                conn.sendall(output)
            if conn_fd in readable:
                data = conn.recv(65536)
                if not data:
                    with contextlib.suppress(BrokenPipeError):
                        process.stdin.close()
                    raise _ConnectionClosed
                try:
                    process.stdin.write(data)
                    process.stdin.flush()
                except BrokenPipeError:
                    # The interpreter is exiting; its status arrives with EOF.
                    pass


def _read_fd(fd: int) -> bytes:
    return os.read(fd, 65536)


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
