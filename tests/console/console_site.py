"""Helpers for the console tests: the console's bus client, its requests, its PIN."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from appliance.bus.client import Bus
from appliance.config import SiteConfig
from appliance.console.pin import PinFile, pin_path
from appliance.errors import RequestError
from tests.conftest import ClientFactory

PIN = "480213"
WRONG_PIN = "480214"
CONSOLE_USER = "terminal-console"
TIMEOUT_S = 10.0


def set_pin(config: SiteConfig, pin: str = PIN) -> None:
    """Set the console PIN of the site's box."""
    PinFile(pin_path(config.data_dir)).set(pin)


def console_client(
    make_client: ClientFactory,
) -> contextlib.AbstractAsyncContextManager[Bus]:
    """Return the console's bus client, logged in as ``terminal-console``."""
    return make_client(CONSOLE_USER, "terminal", "console")


async def call(
    bus: Bus,
    action: str,
    data: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    mutating: bool = False,
    service: str = "console",
) -> dict[str, Any]:
    """Send ``api/<service>/<action>`` and return the reply's data."""
    fields = dict(data or {})
    if mutating and "idempotency_key" not in fields:
        fields["idempotency_key"] = str(uuid.uuid4())
    return await bus.request(
        bus.topics.api(service, action), fields, token=token, timeout_s=TIMEOUT_S
    )


async def refused(
    bus: Bus,
    action: str,
    data: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    mutating: bool = False,
    service: str = "console",
) -> RequestError:
    """Send a request that must fail and return its error."""
    try:
        reply = await call(
            bus, action, data, token=token, mutating=mutating, service=service
        )
    except RequestError as err:
        return err
    raise AssertionError(f"{service}/{action} succeeded: {reply}")


async def unlock(bus: Bus, pin: str = PIN) -> str:
    """Unlock the console and return its admin token."""
    reply = await call(bus, "unlock", {"pin": pin}, mutating=True)
    return str(reply["token"])
