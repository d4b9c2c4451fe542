"""Errors raised by the board simulator."""

from __future__ import annotations


class BoardSimulatorError(RuntimeError):
    """The board simulator could not start or serve a connection."""


class MicroPythonRuntimeError(BoardSimulatorError, FileNotFoundError):
    """Node.js or the MicroPython WebAssembly package is missing."""
