"""Exceptions shared by the Nightbox appliance services.

Each error also inherits the builtin that fits it, so callers that only know
Python's exceptions still catch the right thing.
"""

from __future__ import annotations

from typing import Any


class NightboxError(Exception):
    """Base class for every error the appliance raises on purpose."""


class ConfigError(NightboxError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


class PayloadError(NightboxError, ValueError):
    """A bus payload is malformed; the message names the field and the value."""


class StoreError(NightboxError, RuntimeError):
    """The box's database cannot be used as it is; the message gives the reason."""


class HardwareError(NightboxError, RuntimeError):
    """A device of the box (scanner, camera, buttons) failed to start or work."""


class BrokerUnavailableError(NightboxError, ConnectionError):
    """No MQTT broker could be started or reached."""


class RequestError(NightboxError):
    """A bus request got an error reply, or no reply in time.

    ``code`` is a stable machine-readable word (``out-of-stock``,
    ``already-issued``, ``timeout`` ...), ``message`` a sentence for people and
    ``details`` the error's other fields.
    """

    def __init__(
        self, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}
