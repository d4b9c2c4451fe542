"""The state of a drop as guests see it, and what a try-on page's button sells.

:func:`drop_state` is the one place that turns a drop's times and its
``api/drops/status`` reply into the state that the drop pages, the drops
list, the try-on page and the stock JSON all show. :func:`choose_offer`
picks the drop that the try-on page's one-tap button claims from, or
returns in words the reason there is none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.commerce.config import CommerceConfig, DropConfig
from appliance.portal._format import night_time

DropState = Literal["scheduled", "open", "sold-out", "ended", "stopped"]
# States in which a claim can never succeed, so no page offers one.
CLOSED_STATES: frozenset[str] = frozenset({"sold-out", "ended", "stopped"})


def drop_state(drop: DropConfig, status: Mapping[str, Any], now: float) -> DropState:
    """Return the state of ``drop`` at Unix time ``now``.

    ``status`` is the reply data of ``api/drops/status``: its ``state`` is
    the venue's manual one (``live`` or ``stopped``, else ``scheduled``) and
    ``available`` the units left. The box's claim rules decide the same way:
    a stopped drop is closed, a drop past its end has ended, and a drop set
    live or past its start is open while units are left.
    """
    manual = status.get("state")
    if manual == "stopped":
        return "stopped"
    if now >= drop.ends_at:
        return "ended"
    if manual == "live" or now >= drop.starts_at:
        return "open" if int(status.get("available", 0)) > 0 else "sold-out"
    return "scheduled"


def state_text(
    drop: DropConfig, state: DropState, commerce: CommerceConfig, now: float
) -> str:
    """Return ``state`` in words, with the time that matters for a guest."""
    if state == "open":
        return f"open until {night_time(drop.ends_at, commerce, now)}"
    if state == "scheduled":
        return f"opens {night_time(drop.starts_at, commerce, now)}"
    return {"sold-out": "sold out", "ended": "ended", "stopped": "closed by the venue"}[
        state
    ]


@dataclass(frozen=True, slots=True)
class DropView:
    """One drop of an item at the time a page is drawn."""

    drop: DropConfig
    state: DropState
    available: int
    # Units this guest has reserved or paid, 0 for a visitor not signed in.
    units_held: int

    @property
    def claimable(self) -> bool:
        """Whether a claim of this guest can succeed now."""
        return self.state == "open" and self.units_held < self.drop.per_guest_limit


@dataclass(frozen=True, slots=True)
class Offer:
    """The offer of the try-on page's button: ``drop``, or ``reason`` in words."""

    drop: DropView | None
    reason: str | None


def choose_offer(
    views: Sequence[DropView], commerce: CommerceConfig, now: float
) -> Offer | None:
    """Return the drop the one-tap button claims from, or the reason there is none.

    Returns None when the item has no drop on this box tonight: it is then
    sold at the bar only. The first drop that is open, has units left and
    of which the guest has claimed fewer units than the per-guest limit is
    chosen.
    """
    if not views:
        return None
    for view in views:
        if view.claimable:
            return Offer(view, None)
    scheduled = [view for view in views if view.state == "scheduled"]
    if scheduled:
        first = min(scheduled, key=lambda view: view.drop.starts_at)
        opens = night_time(first.drop.starts_at, commerce, now)
        return Offer(None, f"The drop opens {opens}; buy it here from then on.")
    states = {view.state for view in views}
    if "open" in states:
        return Offer(
            None,
            "You already hold the most one guest may claim of tonight's drop; "
            "see it on My band.",
        )
    if "sold-out" in states:
        return Offer(None, "Sold out: every unit of tonight's drop is taken.")
    if "stopped" in states:
        return Offer(None, "The venue has closed tonight's drop.")
    return Offer(None, "Tonight's drop has ended.")
