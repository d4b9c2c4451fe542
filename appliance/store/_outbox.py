"""Events that the store commits together with the state change they report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A committed event waiting to be published, in box sequence order.

    ``seq`` orders the box's own events whatever its wall clock reads; ``id``
    is globally unique, so consumers and the upstream collector deduplicate
    on it.
    """

    seq: int
    id: str
    type: str
    created_at: float
    clock_trusted: bool
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> OutboxEvent:
        """Build an event from an ``outbox`` row (seq, id, type, at, trusted, body)."""
        seq, event_id, event_type, created_at, trusted, body = row
        return cls(
            seq, event_id, event_type, created_at, bool(trusted), json.loads(body)
        )
