"""A reader's USB serial port, read and written in threads, frames to asyncio.

pyserial blocks, so one thread reads the port and hands each complete frame
to the event loop with ``call_soon_threadsafe``, and another writes queued
frames. The port is opened with ``serial.serial_for_url``, so a device path
(``/dev/ttyUSB0``) and a pyserial URL (``rfc2217://``, ``socket://``) both
work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from hardware.serial_link._errors import SerialPortError
from hardware.serial_link._frames import Frame, FrameDecoder, encode_frame

_LOGGER = logging.getLogger(__name__)

# The MicroPython REPL's speed on the ESP32's USB-UART bridge.
DEFAULT_BAUDRATE = 115200
# How long a read waits for bytes, so the reader thread notices close().
_READ_TIMEOUT_S = 0.1
# Frames waiting to be written at most; beyond it the oldest clock or reply
# would be stale anyway, so new ones are dropped and counted.
_MAX_QUEUED_WRITES = 64


class SerialLink:
    """One open serial port that exchanges frames; an async context manager.

    ``on_frame`` runs in the event loop for every good frame received, and
    ``on_closed`` runs there once, with the error, when the port fails or
    is closed by the other end. The decoder's ``counts`` (``frames``,
    ``noise``, ``corrupt``, ``oversize``), ``written``/``write_dropped`` and
    ``internal_errors`` may be read at any time. An unexpected exception in
    the reader or writer thread is logged and counted in ``internal_errors``,
    and ``on_closed`` reports it like a port failure.
    """

    def __init__(
        self,
        port: str,
        on_frame: Callable[[Frame], None],
        on_closed: Callable[[SerialPortError], None],
        *,
        baudrate: int = DEFAULT_BAUDRATE,
    ) -> None:
        self.port = port
        self.decoder = FrameDecoder(port)
        self.written = 0
        self.write_dropped = 0
        # Unexpected exceptions that stopped the reader or writer thread.
        self.internal_errors = 0
        self._baudrate = baudrate
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._serial: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes: queue.Queue[bytes | None] = queue.Queue(_MAX_QUEUED_WRITES)
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._closed_reported = False

    @property
    def counts(self) -> dict[str, int]:
        """The decoder's counters, the write counters and ``internal_errors``."""
        return {
            **self.decoder.counts,
            "written": self.written,
            "write_dropped": self.write_dropped,
            "internal_errors": self.internal_errors,
        }

    async def __aenter__(self) -> SerialLink:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the port and start the reader and writer threads.

        Raises SerialPortError when pyserial cannot open it (missing device,
        no permission, invalid URL).
        """
        self._loop = asyncio.get_running_loop()
        self._serial = await asyncio.to_thread(self._open_port)
        for name, target in (
            ("read", self._read_forever),
            ("write", self._write_forever),
        ):
            thread = threading.Thread(
                target=target, name=f"serial-{name}-{self.port}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        _LOGGER.info("Opened serial port %s at %d baud", self.port, self._baudrate)

    def _open_port(self) -> Any:
        import serial  # pyserial, imported only where a serial port is used

        try:
            port = serial.serial_for_url(
                self.port,
                baudrate=self._baudrate,
                timeout=_READ_TIMEOUT_S,
                write_timeout=2.0,
                # An exclusive lock keeps provisioning and serial monitors
                # from writing into a reader's line while the box serves it.
                exclusive=True,
                do_not_open=True,
            )
            # NOTE: on ESP32 boards with the usual auto-reset circuit, DTR and
            # RTS drive EN and GPIO0. They are released before the open so
            # that opening the port does not reset the reader. Only a real
            # board shows whether its circuit behaves so.
            port.dtr = False
            port.rts = False
            port.open()
        except (serial.SerialException, OSError, ValueError) as err:
            raise SerialPortError(
                f"cannot open serial port {self.port}: {err}; check the "
                "readers[].serial_port setting and that the reader is plugged in"
            ) from err
        return port

    def send(self, channel: str, payload: bytes) -> bool:
        """Queue one frame for writing; return False when it was dropped.

        Raises FrameError for a payload that cannot be framed.
        """
        line = encode_frame(channel, payload)
        if self._serial is None or self._closing.is_set():
            self.write_dropped += 1
            return False
        try:
            self._writes.put_nowait(line)
        except queue.Full:
            self.write_dropped += 1
            return False
        return True

    async def close(self) -> None:
        """Stop the threads and close the port; safe to call more than once."""
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._writes.put_nowait(None)
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join, 2.0)
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
            _LOGGER.info("Closed serial port %s", self.port)

    def _read_forever(self) -> None:
        try:
            self._read_frames()
        except Exception as err:
            self._fail_unexpectedly("reader", err)

    def _read_frames(self) -> None:
        import serial

        port = self._serial
        while not self._closing.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, TypeError) as err:
                # pyserial raises TypeError when close() races a read.
                self._report_closed(err)
                return
            if not data:
                continue
            for frame in self.decoder.feed(data):
                self._call_soon(self._on_frame, frame)

    def _write_forever(self) -> None:
        try:
            self._write_lines()
        except Exception as err:
            self._fail_unexpectedly("writer", err)

    def _write_lines(self) -> None:
        import serial

        while True:
            line = self._writes.get()
            if line is None or self._closing.is_set():
                return
            try:
                self._serial.write(line)
            except (serial.SerialException, OSError, AttributeError) as err:
                self._report_closed(err)
                return
            self.written += 1

    def _fail_unexpectedly(self, thread: str, err: Exception) -> None:
        # A bug in the decoder or in pyserial must not leave the port open
        # with no thread serving it, so the link reports itself closed and
        # its owner reopens the port.
        self.internal_errors += 1
        if self._closing.is_set():
            return
        _LOGGER.error(
            "The %s thread of serial port %s failed; closing the port",
            thread,
            self.port,
            exc_info=err,
        )
        self._report_closed(err, log=False)

    def _report_closed(self, err: BaseException, *, log: bool = True) -> None:
        if self._closing.is_set() or self._closed_reported:
            return
        self._closed_reported = True
        error = SerialPortError(
            f"serial port {self.port} failed: {type(err).__name__}: {err}"
        )
        if log:
            _LOGGER.warning("%s", error)
        self._call_soon(self._on_closed, error)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(callback, *args)
