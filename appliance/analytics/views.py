"""Page views of the guest portal, counted per night, page and subject.

A view adds one to a counter row keyed by the night, the page kind and the
drop or item shown. Nothing about the guest who looked is stored, so the
counters can be shown and exported as they are.
"""

from __future__ import annotations

import logging
import re

from appliance.clock import Clock
from appliance.commerce.config import CommerceConfig
from appliance.errors import PayloadError
from appliance.store import Store

_LOGGER = logging.getLogger(__name__)

# The portal's pages that count views: a drop's page and an item's try-on page.
PAGES = frozenset({"drop", "try-on"})
# Drop and item ids follow the site file's id rule.
_SUBJECT = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}\Z")


def record_view(
    store: Store, clock: Clock, commerce: CommerceConfig, page: str, subject: str
) -> None:
    """Add one view of ``page`` about ``subject`` to tonight's counter.

    ``page`` is ``drop`` or ``try-on`` and ``subject`` the drop or item id.
    Raises :class:`PayloadError` for any other page or a malformed id, so a
    caller never counts a value taken from a URL without checking it. The
    update emits no event: a view is not a state change that anyone else
    needs to hear about.
    """
    if page not in PAGES:
        raise PayloadError(
            f"page {page!r} is not counted; use one of {', '.join(sorted(PAGES))}"
        )
    if not _SUBJECT.match(subject):
        raise PayloadError(
            f"subject {subject[:60]!r} is not a drop or item id; use lowercase "
            "letters, digits and dashes"
        )
    night = commerce.night_of(clock.now())
    with store.transaction() as transaction:
        transaction.execute(
            "INSERT INTO page_views (night, page, subject, views) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (night, page, subject) DO UPDATE SET views = views + 1",
            (night, page, subject),
        )


def views_of_night(store: Store, night: str) -> dict[tuple[str, str], int]:
    """Return the night's view counters keyed by ``(page, subject)``."""
    rows = store.query(
        "SELECT page, subject, views FROM page_views WHERE night = ?", (night,)
    )
    return {(str(page), str(subject)): int(views) for page, subject, views in rows}
