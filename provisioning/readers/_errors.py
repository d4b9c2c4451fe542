"""Exceptions of reader provisioning.

Each one also inherits the builtin that fits it, and ``nightbox reader``
maps each class to its own exit code.
"""

from __future__ import annotations

from appliance.errors import NightboxError


class ReaderSetupError(NightboxError):
    """Base class of every error that reader provisioning raises on purpose."""


class BundleError(ReaderSetupError, ValueError):
    """The reader bundle is missing, incomplete or does not match its manifest."""


class ReaderArgumentError(ReaderSetupError, ValueError):
    """A reader's id, role, zone, uplink or kit stock is invalid or conflicts."""


class BoardNotFoundError(ReaderSetupError, FileNotFoundError):
    """The serial port does not exist or cannot be opened."""


class BoardTimeoutError(ReaderSetupError, TimeoutError):
    """The board responded neither as a MicroPython REPL nor as the ROM bootloader."""


class BoardError(ReaderSetupError, RuntimeError):
    """Flashing, copying or writing a file on the board failed part way.

    ``reader_id`` is the reader that was registered in the site file before
    the failure, or None when none was.
    """

    def __init__(self, message: str, *, reader_id: str | None = None) -> None:
        super().__init__(message)
        self.reader_id = reader_id
