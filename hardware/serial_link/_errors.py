"""Errors of the serial link; each also inherits the builtin that fits it."""

from __future__ import annotations


class SerialLinkError(Exception):
    """Base class of the errors that :mod:`hardware.serial_link` raises."""


class SerialPortError(SerialLinkError, OSError):
    """The serial port could not be opened, read or written; the message names it."""


class FrameError(SerialLinkError, ValueError):
    """A line or payload is not a valid frame; the message names the check."""
