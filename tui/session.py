"""The admin session: the console's admin token, unlocked with the PIN.

Actions that change the box (charges, tokens, drops, restocks, provisioning)
need an edge token with scope ``console:admin``. The box issues one for 15
minutes of its own time in reply to ``console/unlock`` with the right PIN,
and enforces the lock-out after wrong PINs itself. :class:`AdminSession`
keeps that token, asks for the PIN in a modal when there is none or it has
under a minute of the box's time left, and forgets it on
:meth:`AdminSession.lock`. The box's clock is what counts: a demo night runs
it faster than real time, so 15 minutes may pass in 30 real seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.errors import RequestError

if TYPE_CHECKING:
    from textual.app import App

    from tui.link import ConsoleLink

_LOGGER = logging.getLogger(__name__)

# A token with less time left than this is replaced before use, so an
# action started now does not fail halfway through on an expired token.
RENEW_BEFORE_S = 60.0


class AdminSession:
    """The admin token of one console, and the PIN modal that obtains it."""

    def __init__(
        self,
        app: App[Any],
        link: ConsoleLink,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._link = link
        self._monotonic = monotonic
        # The token lives only here, never in a screen's attributes.
        self._token: str | None = None
        self._token_id: str | None = None
        # The token's expiry in the box's Unix time, from the unlock reply.
        self._expires_at: float | None = None
        # The expiry in this computer's monotonic time, used only while the
        # box's time is not known (no box status received yet).
        self._expires_monotonic: float = 0.0
        self._pending: asyncio.Future[str | None] | None = None

    @property
    def unlocked(self) -> bool:
        """Whether a token with more than a minute of the box's time left is held."""
        return self._token is not None and self.remaining_s() > RENEW_BEFORE_S

    @property
    def token_id(self) -> str | None:
        """The id of the held token (not a secret: the box lists it), or None."""
        return self._token_id if self._token is not None else None

    def remaining_s(self) -> float:
        """Return the seconds of the box's time the held token has left.

        0 without a token. Before the first box status the box's time is
        unknown, and the token's lifetime is counted on this computer's clock.
        """
        if self._token is None:
            return 0.0
        box_now = self._link.state.box_time()
        if box_now is not None and self._expires_at is not None:
            return max(0.0, self._expires_at - box_now)
        return max(0.0, self._expires_monotonic - self._monotonic())

    async def token(self) -> str | None:
        """Return a valid admin token, asking for the PIN when none is held.

        Returns None when the person cancels the PIN modal, including after
        the box locked the console out. Several callers at once share one
        modal.
        """
        if self.unlocked:
            return self._token
        if self._pending is None or self._pending.done():
            from tui.screens.pin import PinScreen

            self._pending = asyncio.get_running_loop().create_future()
            # The modal resolves the future itself. A push_screen callback
            # would run on the caller's message queue, which is blocked in
            # this await when the caller is a message handler.
            self._app.push_screen(PinScreen(self, self._pending))
        return await asyncio.shield(self._pending)

    async def unlock(self, pin: str) -> str:
        """Send ``console/unlock`` with ``pin`` and keep the token it returns.

        Raises RequestError with the box's refusal (``wrong-pin`` with
        ``attempts_left``, ``locked-out`` with ``retry_after_s``, ``no-pin``)
        or ``offline``/``timeout``.
        """
        reply = await self._link.request(
            "console", "unlock", {"pin": pin}, mutating=True
        )
        token = reply.get("token")
        ttl_s = reply.get("ttl_s")
        if not isinstance(token, str) or not isinstance(ttl_s, int | float):
            raise RequestError(
                "bad-reply", "the box's unlock reply has no token or ttl_s"
            )
        self._token = token
        token_id = reply.get("token_id")
        self._token_id = token_id if isinstance(token_id, str) else None
        expires_at = reply.get("expires_at")
        self._expires_at = (
            float(expires_at) if isinstance(expires_at, int | float) else None
        )
        self._expires_monotonic = self._monotonic() + float(ttl_s)
        _LOGGER.info("Console unlocked with token %s", self._token_id)
        self._changed()
        return token

    def lock(self) -> None:
        """Forget the admin token; the next sensitive action asks for the PIN."""
        if self._token is not None:
            _LOGGER.info("Console locked; token %s forgotten", self._token_id)
        self._token = None
        self._token_id = None
        self._expires_at = None
        self._expires_monotonic = 0.0
        self._changed()

    def _changed(self) -> None:
        # The header shows whether the console is unlocked.
        self._link.notify("session")
