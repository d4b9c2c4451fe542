"""A reader board on a serial port: MicroPython's raw REPL and the ROM bootloader.

Files go to the board through mpremote's ``SerialTransport`` (its raw REPL
protocol), and the MicroPython image through esptool's Python API. Both
take a device path (``/dev/ttyUSB0``) or a pyserial URL (``socket://``,
``rfc2217://``). Both libraries print progress to stdout, which this
command keeps for its result, so their output is captured and logged.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import logging
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

from provisioning.readers._errors import (
    BoardError,
    BoardNotFoundError,
    BoardTimeoutError,
    ReaderArgumentError,
)

_LOGGER = logging.getLogger(__name__)

OnProgress = Callable[[int, int], None]

# MicroPython's ESP32_GENERIC image starts with the second-stage bootloader, which
# the original ESP32 loads from flash offset 0x1000 (later chips use 0x0).
ESP32_IMAGE_OFFSET = 0x1000
# Time for MicroPython to respond to Ctrl-C and Ctrl-A with the raw REPL
# banner. A board that is still booting after a reset by the port's DTR/RTS
# lines responds within about a second. A blank board prints its boot loop
# and never responds.
DEFAULT_PROBE_TIMEOUT_S = 6.0
# esptool's attempts to sync with the ROM bootloader (7 by default in
# esptool 5); each takes about a second when nothing responds.
_CONNECT_ATTEMPTS = 3
_BAUD = 115200
# Bytes per write statement sent to the raw REPL. mpremote's default of 256
# costs one round trip per 256 bytes; 1 KiB, sent as a bytes literal of up
# to 4 KiB, still compiles within the ESP32's free heap of about 100 KiB.
_WRITE_CHUNK_BYTES = 1024
# A bound on each serial read, so a board that stops mid-reply cannot hang
# the command.
_READ_TIMEOUT_S = 10.0
_MAX_TCP_PORT = 65535
# The errors of opening a port that another process holds: pyserial's
# exclusive lock (flock) fails with EAGAIN (EWOULDBLOCK), and some drivers
# refuse a second open with EBUSY.
_PORT_BUSY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY})
_PORT_ADVICE = (
    "give the board's serial device, such as /dev/ttyUSB0, or a pyserial URL "
    "such as rfc2217://host:port"
)


def check_port(port: str) -> None:
    """Raise an error naming ``port`` when it cannot be a board's serial port.

    Raises BoardNotFoundError when the device path does not exist, and
    ReaderArgumentError for a folder, a regular file, a pyserial URL of an
    unknown protocol, a socket:// or rfc2217:// URL without a valid host and
    port, and pyserial's loopback port loop://. Other URLs are only checked
    when they are opened.
    """
    if "://" in port:
        _check_port_url(port)
        return
    try:
        mode = os.stat(port).st_mode
    except FileNotFoundError:
        raise BoardNotFoundError(
            f"serial port {port} not found; plug the reader in by USB and give "
            "its port (ls /dev/ttyUSB* /dev/ttyACM* lists them)"
        ) from None
    except OSError as err:
        raise BoardNotFoundError(
            f"cannot open serial port {port}: {err.strerror}; check that it is "
            "the reader's port"
        ) from err
    kind = None
    if stat.S_ISDIR(mode):
        kind = "a folder"
    elif stat.S_ISREG(mode):
        kind = "a regular file"
    if kind is not None:
        raise ReaderArgumentError(
            f"port {port} is {kind}, not a serial device; {_PORT_ADVICE}"
        )


def _check_port_url(port: str) -> None:
    scheme = port.split("://", 1)[0]
    if scheme == "loop":
        raise ReaderArgumentError(
            f"port {port} is pyserial's loopback port, which only echoes what "
            f"is sent and has no board behind it; {_PORT_ADVICE}"
        )
    # pyserial imports the module serial.urlhandler.protocol_<scheme>.
    if (
        not re.match(r"^[A-Za-z0-9_]+\Z", scheme)
        or importlib.util.find_spec(f"serial.urlhandler.protocol_{scheme}") is None
    ):
        raise ReaderArgumentError(
            f"port {port} is invalid: pyserial has no protocol {scheme!r}; "
            f"{_PORT_ADVICE}"
        )
    if scheme not in ("socket", "rfc2217"):
        return
    parts = urllib.parse.urlsplit(port)
    try:
        number = parts.port
    except ValueError:
        number = -1
    if not parts.hostname or number is None or not 1 <= number <= _MAX_TCP_PORT:
        raise ReaderArgumentError(
            f"port {port} is invalid: a {scheme}:// URL needs a host and a TCP "
            f"port from 1 to {_MAX_TCP_PORT}, such as {scheme}://192.168.4.2:4000"
        )


def _open_failure(port: str) -> str | None:
    """Open ``port`` with pyserial as mpremote does, and return why it fails.

    mpremote reports every failure as "failed to access <port>", so this
    second attempt recovers the cause, such as "Connection refused". Returns
    None when the port opens this time. Raises BoardNotFoundError when
    another program holds the port.
    """
    import serial

    try:
        connection = serial.serial_for_url(
            port, baudrate=_BAUD, exclusive=True, do_not_open=True
        )
        connection.open()
    except OSError as err:
        if _port_busy(err):
            raise _port_in_use_error(port) from err
        return _without_port_prefix(str(err))
    except ValueError as err:
        return _without_port_prefix(str(err))
    connection.close()
    return None


def _port_busy(err: BaseException) -> bool:
    """Return whether ``err`` or an error in its chain means the port is held."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return any(
        isinstance(item, OSError) and item.errno in _PORT_BUSY_ERRNOS for item in chain
    )


def _port_in_use_error(port: str) -> BoardNotFoundError:
    return BoardNotFoundError(
        f"serial port {port} is in use by another program, such as the "
        "running box serving a serial reader on it, or a serial monitor; "
        "stop that program (provision a serial reader of the box while the "
        "box is stopped), or plug the board into another port"
    )


def _without_port_prefix(message: str) -> str:
    # pyserial prefixes the port name, which the caller's message has.
    return re.sub(
        r"^(\[Errno \d+\] )?[Cc]ould not (exclusively lock|open) port \S+: ",
        "",
        message,
    )


class MicroPythonBoard:
    """MicroPython on a board, reached through its raw REPL.

    Use it as a context manager, or call :meth:`close`. Every method raises
    BoardError when the board stops responding or a file operation fails.
    """

    def __init__(self, port: str, transport: Any) -> None:
        self.port = port
        self._transport = transport
        self._folders: set[str] = {"/"}

    def __enter__(self) -> MicroPythonBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the serial port; the board stays in its raw REPL."""
        with contextlib.suppress(OSError):
            self._transport.close()

    def file_sha256(self, path: str) -> str | None:
        """Return the SHA-256 of the board's file ``path`` in hex.

        Returns None when the file is missing, or when MicroPython raised an
        error for it that mpremote could not map to FileNotFoundError. The
        caller then writes the file, which fails loudly if the board is gone.
        """
        from mpremote.transport import TransportExecError

        try:
            with _quiet():
                return bytes(self._transport.fs_hashfile(path, "sha256")).hex()
        except FileNotFoundError:
            return None
        except TransportExecError as err:
            # mpremote maps only the errno names and numbers of the ports it
            # lists (mpremote.mp_errno); other ports print bare numbers.
            _LOGGER.debug("Hashing %s on %s failed: %s", path, self.port, err)
            return None
        # Otherwise the link failed: mpremote raises TransportError or
        # OSError, or ValueError and SyntaxError for garbled replies.
        except Exception as err:
            raise _board_error(f"hashing {path}", self.port, err) from err

    def write_file(
        self, path: str, data: bytes, on_progress: OnProgress | None = None
    ) -> None:
        """Write ``data`` to the board's ``path``, creating its folders.

        The bytes go to ``<path>.new`` first and are renamed over ``path``, so a
        board unplugged during the copy keeps the whole old file.
        """
        self._ensure_folders(PurePosixPath(path).parent)
        partial = f"{path}.new"
        try:
            with _quiet():
                self._transport.fs_writefile(
                    partial,
                    data,
                    chunk_size=_WRITE_CHUNK_BYTES,
                    progress_callback=on_progress,
                )
                self._transport.exec(f"import os\nos.rename({partial!r}, {path!r})")
        except Exception as err:
            raise _board_error(f"writing {path}", self.port, err) from err

    def remove_file(self, path: str) -> bool:
        """Remove the board's file ``path``; return False when it was not there."""
        command = (
            f"import os\ntry:\n os.remove({path!r})\n print('removed')\n"
            "except OSError:\n print('absent')"
        )
        try:
            with _quiet():
                output = self._transport.exec(command)
        except Exception as err:
            raise _board_error(f"removing {path}", self.port, err) from err
        return b"removed" in bytes(output)

    def _ensure_folders(self, folder: PurePosixPath) -> None:
        for parent in [*reversed(folder.parents), folder]:
            text = str(parent)
            if text in self._folders:
                continue
            # One statement that tolerates an existing folder, because
            # fs_exists misreads errors of ports whose errno numbers mpremote
            # does not know. A file in the way makes the write fail.
            command = f"import os\ntry:\n os.mkdir({text!r})\nexcept OSError:\n pass"
            try:
                with _quiet():
                    self._transport.exec(command)
            except Exception as err:
                raise _board_error(f"creating folder {text}", self.port, err) from err
            self._folders.add(text)

    def restart(self) -> None:
        """Leave the raw REPL and soft-reset, so the board runs its new ``main.py``."""
        try:
            self._transport.exit_raw_repl()
            # Ctrl-D at the normal REPL soft-resets MicroPython, which then
            # runs boot.py and main.py.
            self._transport.serial.write(b"\x04")
            self._transport.serial.flush()
        except Exception as err:
            raise _board_error("restarting", self.port, err) from err


def _board_error(action: str, port: str, err: Exception) -> BoardError:
    return BoardError(
        f"{action} on the board at {port} failed: {err}; check the USB cable"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture what mpremote or esptool prints, and log it at debug level."""
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            yield output
    finally:
        text = output.getvalue().strip()
        if text:
            _LOGGER.debug("Board tool output: %s", text)


def open_micropython(
    port: str, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S
) -> MicroPythonBoard | None:
    """Open ``port`` and enter MicroPython's raw REPL within ``timeout_s``.

    Returns None when the board does not respond as MicroPython does (a
    blank board, or one with other firmware). Raises BoardNotFoundError
    when the port cannot be opened.
    """
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    check_port(port)
    try:
        with _quiet():
            transport = SerialTransport(port, baudrate=_BAUD, timeout=_READ_TIMEOUT_S)
    except ValueError as err:
        # pyserial rejects a URL it cannot parse before mpremote opens it.
        raise ReaderArgumentError(
            f"port {port} is invalid: {err}; {_PORT_ADVICE}"
        ) from err
    except TransportError as err:
        cause = _open_failure(port) or str(err)
        raise BoardNotFoundError(
            f"cannot open serial port {port}: {cause}; check that it is the "
            "reader's port and that no other program (a serial monitor, or "
            "the box's serial uplink) has it open"
        ) from err
    deadline = time.monotonic() + timeout_s
    # A board reset by opening the port can miss the first Ctrl-A while it
    # boots, so the banner is requested again until the deadline.
    while True:
        remaining = deadline - time.monotonic()
        try:
            with _quiet():
                transport.enter_raw_repl(
                    soft_reset=True, timeout_overall=max(remaining, 0.5)
                )
        except (TransportError, OSError, ValueError) as err:
            if time.monotonic() < deadline - 0.5:
                continue
            _LOGGER.info("No MicroPython REPL on %s: %s", port, err)
            with contextlib.suppress(OSError):
                transport.close()
            return None
        return MicroPythonBoard(port, transport)


def flash_micropython(
    port: str,
    image: bytes,
    on_progress: OnProgress | None = None,
    on_connected: Callable[[str], None] | None = None,
) -> str:
    """Write ``image`` at 0x1000 through the ESP32 ROM bootloader, verify it, reset.

    ``on_connected`` is called with the chip name once the bootloader
    responded and before anything is written; what it raises stops the
    flashing. Returns the chip name. Raises BoardTimeoutError when no
    bootloader responds, BoardError when the chip is not an original ESP32
    or writing or verifying fails.
    """
    from esptool.cmds import (
        attach_flash,
        detect_chip,
        reset_chip,
        run_stub,
        verify_flash,
        write_flash,
    )
    from esptool.util import FatalError

    check_port(port)
    # A socket:// port is a TCP bridge with no DTR and RTS lines to reset
    # the chip, so the board must already wait in its bootloader. Without
    # the lines, esptool's stub flasher is not loaded either.
    bridged = port.startswith("socket://")
    connect_mode = "no-reset" if bridged else "default-reset"
    with _esptool_progress(on_progress), _quiet():
        try:
            # NOTE: only a real board shows that DTR/RTS ("default-reset")
            # puts it into its bootloader through the USB bridge's auto-reset
            # circuit, and that the stub writes and verifies a full image.
            esp = detect_chip(
                port,
                _BAUD,
                connect_mode=connect_mode,
                connect_attempts=_CONNECT_ATTEMPTS,
            )
        except (FatalError, OSError) as err:
            # esptool raises FatalError from pyserial's error when the port
            # does not open.
            if _port_busy(err):
                raise _port_in_use_error(port) from err
            raise BoardTimeoutError(
                f"the board at {port} responded neither as MicroPython nor as "
                f"the ESP32 bootloader ({_describe(err)}); check the USB cable, or "
                "hold the BOOT button while you press EN and run the command again"
            ) from err
        try:
            chip = str(esp.CHIP_NAME)
            if chip != "ESP32":
                raise BoardError(
                    f"the board at {port} is an {chip}, but the bundle's "
                    "MicroPython image is for the original ESP32 "
                    "(ESP32_GENERIC); use an ESP32 board"
                )
            if on_connected is not None:
                on_connected(chip)
            if not bridged:
                esp = run_stub(esp)
            attach_flash(esp)
            write_flash(esp, [(ESP32_IMAGE_OFFSET, image)])
            verify_flash(esp, [(ESP32_IMAGE_OFFSET, image)])
            reset_chip(esp, "hard-reset")
        except FatalError as err:
            raise BoardError(
                f"flashing MicroPython on the board at {port} failed: {err}; "
                "check the USB cable"
            ) from err
        finally:
            with contextlib.suppress(OSError, AttributeError):
                esp._port.close()
    _LOGGER.info("Flashed %d bytes of MicroPython on %s", len(image), port)
    return chip


def _describe(err: BaseException) -> str:
    """Return the error's message, with its type when the message alone is terse."""
    text = str(err).strip()
    if " " in text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextlib.contextmanager
def _esptool_progress(on_progress: OnProgress | None) -> Iterator[None]:
    """Route esptool's progress bar to ``on_progress`` while flashing."""
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    class _Logger(TemplateLogger):
        def print(self, *args: Any, **kwargs: Any) -> None:
            _LOGGER.debug("esptool: %s", " ".join(str(arg) for arg in args))

        def note(self, message: str) -> None:
            _LOGGER.debug("esptool note: %s", message)

        def warning(self, message: str) -> None:
            _LOGGER.warning("esptool: %s", message)

        def error(self, message: str) -> None:
            _LOGGER.error("esptool: %s", message)

        def stage(self, finish: bool = False) -> None:
            pass

        def progress_bar(
            self,
            cur_iter: int,
            total_iters: int,
            prefix: str = "",
            suffix: str = "",
            bar_length: int = 30,
        ) -> None:
            if on_progress is not None:
                on_progress(cur_iter, total_iters)

        def set_verbosity(self, verbosity: str) -> None:
            pass

    previous = EspLog.instance
    log.set_logger(_Logger())
    try:
        yield
    finally:
        EspLog.instance = previous
