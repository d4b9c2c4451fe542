"""Suppression of figures about small groups of guests.

Every figure the box shows or exports is computed from a *group*: the
distinct guests (bands) it is about. A group of one to four guests is too
small to show, because a figure about it can point at a person ("the two
guests who used Maya's code spent 84 EUR"). Such a group is suppressed: each
of its values becomes null and the group carries ``"suppressed": true``. A
group of zero guests is shown, since a zero reveals nothing about anyone.

Suppressing a group is not enough when a shown total minus the shown parts
gives the hidden value back. Groups that add up to a total form a
:class:`Partition`. When its total is shown and exactly one of its parts is
not, that part can be recovered by subtraction; if it is a hidden group, the
smallest other shown nonzero part is suppressed as well, or, when there is
none, the total. A part may be *implicit*: never shown itself, such as the
guests who claimed a drop but did not pay, which a reader gets by
subtracting two shown stages. An implicit part of one to four guests counts
as hidden. The rule runs until nothing changes, because suppressing a total
can expose a partition the total is part of.

:func:`suppress` is the one place that decides; every export path (the
report's HTML and JSON, anything published) renders what it decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MIN_GROUP = 5
"""The minimum number of distinct guests that a shown figure may be about."""


@dataclass(slots=True)
class Group:
    """The figures about one set of distinct guests.

    ``values`` are what the export shows (counts, spend); they are all
    replaced by null when the group is suppressed. An implicit group
    (``shown=False``) is never exported and takes part only in partitions.
    """

    guests: int
    values: dict[str, Any] = field(default_factory=dict)
    shown: bool = True


@dataclass(frozen=True, slots=True)
class Partition:
    """Groups whose guests add up to the guests of ``total``."""

    total: str
    parts: tuple[str, ...]


def is_small(guests: int) -> bool:
    """Return whether a group of ``guests`` distinct guests must be hidden."""
    return 0 < guests < MIN_GROUP


def suppress(
    groups: Mapping[str, Group], partitions: Iterable[Partition] = ()
) -> set[str]:
    """Return the keys of the groups to hide, small ones and their complements.

    Every partition's total and parts must be keys of ``groups``. Implicit
    groups appear in the result when they are small, although they are
    never exported.
    """
    hidden = {key for key, group in groups.items() if is_small(group.guests)}
    rules = list(partitions)
    for rule in rules:
        for key in (rule.total, *rule.parts):
            if key not in groups:
                raise KeyError(f"partition names the unknown group {key!r}")
    changed = True
    while changed:
        changed = False
        for rule in rules:
            if rule.total in hidden:
                continue
            # A reader recovers a part from the shown total only when every
            # other part is shown too; an implicit part is never shown.
            unknown = [
                key for key in rule.parts if key in hidden or not groups[key].shown
            ]
            if len(unknown) != 1 or unknown[0] not in hidden:
                continue
            candidates = [
                key
                for key in rule.parts
                if key not in hidden and groups[key].guests > 0 and groups[key].shown
            ]
            if candidates:
                smallest = min(candidates, key=lambda key: (groups[key].guests, key))
                hidden.add(smallest)
            else:
                hidden.add(rule.total)
            changed = True
    return hidden


def render(group: Group, hidden: bool) -> dict[str, Any]:
    """Return ``group`` as an exported object: its guests and values, or nulls."""
    if hidden:
        return {
            "guests": None,
            **{name: None for name in group.values},
            "suppressed": True,
        }
    return {"guests": group.guests, **group.values, "suppressed": False}
