"""The console's privacy actions: wellness notes and erasure of a guest's contact.

The handlers of wellness notes belong to the box's
:class:`~appliance.analytics.wellness.WellnessNotes`; this module serves
``erase-contact``, which runs :func:`~appliance.analytics.erasure.erase_contact`
and, once the request's group committed, rebuilds the database files so the
erased bytes leave them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from appliance.analytics.erasure import (
    erase_contact,
    scrub_files,
    selector_from_request,
)
from appliance.requests import Request
from appliance.store import Transaction

if TYPE_CHECKING:
    from appliance.runtime import Box


class PrivacyActions:
    """The ``erase-contact`` handler of one box."""

    def __init__(self, box: Box) -> None:
        self._box = box

    def erase_contact(
        self, transaction: Transaction, request: Request
    ) -> dict[str, Any]:
        """Erase the contact named by ``band``, ``email`` or ``wallet_id``."""
        selector = selector_from_request(request.data)
        erasure = erase_contact(
            transaction,
            selector,
            self._box.clock.now(),
            f"{request.requester_kind}/{request.requester}",
        )
        # The request worker commits the group before the loop runs the
        # next callback, and sends the reply after it.
        asyncio.get_running_loop().call_soon(scrub_files, self._box.store)
        return erasure.to_json()
