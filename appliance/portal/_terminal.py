"""The portal as a terminal of the box: its edge token and its requests.

The portal calls the box's request API in-process (``RequestServer.call``)
as the terminal ``portal``, through the same token, idempotency and commit
path as any terminal on the bus. Its token lives in memory only. It is
renewed when half its lifetime has passed on the monotonic clock, because
the box's wall clock may jump, and once more when the box rejects it (a
revocation, or a lifetime the box judged over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from appliance.requests import RequestServer
from appliance.tokens import EdgeTokens

_LOGGER = logging.getLogger(__name__)

TERMINAL = "portal"
# Everything the portal sells is a drop claim, and it reads balances from
# the store, so it needs no wallet scope.
SCOPES = ("optin:register", "drops:claim")
# The token's lifetime, unless the site's token_max_ttl_s is shorter.
TOKEN_TTL_S = 2 * 3600.0
# Token rejections that a fresh token cures.
_RENEWABLE = frozenset({"token-expired", "token-revoked", "token-not-yet-valid"})


class PortalTerminal:
    """Sends the portal's requests to the box with a token it renews itself."""

    def __init__(
        self,
        requests: RequestServer,
        tokens: EdgeTokens,
        max_ttl_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = requests
        self._tokens = tokens
        self._ttl_s = min(TOKEN_TTL_S, max_ttl_s)
        self._monotonic = monotonic
        self._token: str | None = None
        self._issued_at = 0.0
        self.renewals = 0

    def _current_token(self) -> str:
        age = self._monotonic() - self._issued_at
        if self._token is None or age >= self._ttl_s / 2:
            self._renew()
        assert self._token is not None
        return self._token

    def _renew(self) -> None:
        issued = self._tokens.issue(TERMINAL, SCOPES, self._ttl_s)
        self._token = issued.token
        self._issued_at = self._monotonic()
        self.renewals += 1

    async def call(
        self, service: str, action: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Run ``api/<service>/<action>`` as the portal; return the box's reply.

        The reply is ``{"ok": True, "data": …}`` or ``{"ok": False, "error":
        …}``, as :meth:`RequestServer.call` returns it.
        """
        reply = await self._requests.call(
            service, action, data, token=self._current_token(), terminal=TERMINAL
        )
        code = None if reply.get("ok") else reply.get("error", {}).get("code")
        if code in _RENEWABLE:
            _LOGGER.warning(
                "The box rejected the portal's token (%s); issuing a new one", code
            )
            self._renew()
            reply = await self._requests.call(
                service, action, data, token=self._token, terminal=TERMINAL
            )
        return reply
