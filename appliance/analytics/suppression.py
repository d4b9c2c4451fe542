"""Suppression of figures about small groups of guests.

Every figure the box shows or exports is computed from a *group*: the
distinct guests (bands) it is about. A group of one to four guests is too
small to show, because a figure about it can point at a person ("the two
guests who used Maya's code spent 84 EUR"). Such a group is suppressed: each
of its values becomes null and the group carries ``"suppressed": true``. A
group of zero guests is shown, since a zero reveals nothing about anyone.

Suppressing a group is not enough when a reader can compute its values from
the shown ones. Examples are a total minus its shown parts, a creator's
sales minus a drop's revenue (its paid guests times the public price), and
longer chains of such steps. The figures therefore come with
:class:`Relation` equations between their values, the ones a reader can set
up. A :class:`Partition` is the common case of parts that add up to a total.
A relation may name an *implicit* group, one that is never shown, such as
the guests who claimed a drop but did not pay. A reader who subtracts two
shown stages learns about it, so an implicit group of one to four guests is
protected like a shown one. An implicit group of zero guests counts as
known, because a reader can often tell that it is empty.

:func:`suppress` solves the relations for the values that are not shown
(:mod:`appliance.analytics._equations`). While a value of a small group can
be computed, it hides one more shown group, the one nearest to that value
in the relations (a part before a total, the smallest first), and solves
again.

:func:`suppress` is the one place that decides; every export path (the
report's HTML and JSON, anything published) renders what it decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.analytics._equations import Equation, Variable, solvable

MIN_GROUP = 5
"""The minimum number of distinct guests that a shown figure may be about."""


@dataclass(slots=True)
class Group:
    """The figures about one set of distinct guests.

    ``values`` are what the export shows (counts, spend); they are all
    replaced by null when the group is suppressed. An implicit group
    (``shown=False``) is never exported and takes part only in relations.
    """

    guests: int
    values: dict[str, Any] = field(default_factory=dict)
    shown: bool = True


@dataclass(frozen=True, slots=True)
class Figure:
    """One value of a group (``guests`` or a key of its values) times ``factor``."""

    group: str
    value: str = "guests"
    factor: int = 1


@dataclass(frozen=True, slots=True)
class Relation:
    """An equation a reader can set up: ``total`` is the sum of ``parts``.

    The equation may be one a reader only assumes, such as a drop's revenue
    being its paid guests times its price. Such a relation makes the rule
    hide more than it has to, never less.
    """

    total: Figure
    parts: tuple[Figure, ...]


@dataclass(frozen=True, slots=True)
class Partition:
    """Groups whose guests, and the named ``values``, add up to those of ``total``."""

    total: str
    parts: tuple[str, ...]
    values: tuple[str, ...] = ()

    def relations(self) -> list[Relation]:
        """Return one relation for the guests and one for each of ``values``."""
        return [
            Relation(
                Figure(self.total, value),
                tuple(Figure(part, value) for part in self.parts),
            )
            for value in ("guests", *self.values)
        ]


def is_small(guests: int) -> bool:
    """Return whether a group of ``guests`` distinct guests must be hidden."""
    return 0 < guests < MIN_GROUP


def suppress(
    groups: Mapping[str, Group], rules: Iterable[Partition | Relation] = ()
) -> set[str]:
    """Return the keys of the groups to hide: small ones and those that give them back.

    Every group a rule names must be a key of ``groups``. Implicit groups
    appear in the result when they are small, although they are never
    exported.
    """
    relations: list[Relation] = []
    for rule in rules:
        relations += rule.relations() if isinstance(rule, Partition) else [rule]
    rules_of = _Rules(groups, relations)
    hidden = {key for key, group in groups.items() if is_small(group.guests)}
    protected = {variable for variable in rules_of.variables if variable[0] in hidden}
    # A value that the relations force to be zero without any shown figure
    # reveals nothing, and no hiding can change that.
    settled: set[Variable] = set()
    while True:
        leaks = sorted(rules_of.recoverable(hidden) & protected - settled)
        if not leaks:
            return hidden
        target = leaks[0]
        choice = rules_of.nearest_cover(target, hidden)
        if choice is None:
            settled.add(target)
        else:
            hidden.add(choice)


class _Rules:
    """The relations of one document as equations over ``(group, value)``."""

    def __init__(self, groups: Mapping[str, Group], relations: list[Relation]) -> None:
        self.groups = groups
        self.equations: list[Equation] = []
        self.parts: list[set[str]] = []
        for relation in relations:
            for figure in (relation.total, *relation.parts):
                if figure.group not in groups:
                    raise KeyError(
                        f"a relation names the unknown group {figure.group!r}"
                    )
            terms: Equation = {}
            _add(terms, relation.total, 1)
            for part in relation.parts:
                _add(terms, part, -part.factor)
            self.equations.append(terms)
            self.parts.append({part.group for part in relation.parts})
        self.variables = {
            variable for equation in self.equations for variable in equation
        }

    def unknown(self, hidden: set[str]) -> set[Variable]:
        """Return the values a reader does not see.

        Those are the values of hidden groups and of nonempty implicit ones.
        """
        return {
            variable
            for variable in self.variables
            if variable[0] in hidden
            or (not self.groups[variable[0]].shown and self.groups[variable[0]].guests)
        }

    def recoverable(self, hidden: set[str]) -> set[Variable]:
        """Return the unseen values that a reader can compute from the shown ones."""
        return solvable(self.equations, self.unknown(hidden))

    def nearest_cover(self, target: Variable, hidden: set[str]) -> str | None:
        """Return the shown group to hide next so that ``target`` is better covered.

        The search walks out from ``target`` through the relations that
        share an unseen value, one step at a time. At the first step with
        shown nonzero groups it returns the first one whose hiding alone
        makes ``target`` unrecoverable, else the first one. Parts come
        before totals, and smaller groups first. Returns None when no
        relation within reach has a shown group.
        """
        unknown = self.unknown(hidden)
        reached = {target}
        visited: set[int] = set()
        while True:
            step = [
                index
                for index, equation in enumerate(self.equations)
                if index not in visited and reached & equation.keys()
            ]
            if not step:
                return None
            visited.update(step)
            rank: dict[str, int] = {}
            for index in step:
                for group, _ in self.equations[index].keys() - unknown:
                    if group in hidden or not self.groups[group].shown:
                        continue
                    if not self.groups[group].guests:
                        continue
                    is_total = 0 if group in self.parts[index] else 1
                    rank[group] = min(rank.get(group, is_total), is_total)
            candidates = sorted(
                rank, key=lambda key: (rank[key], self.groups[key].guests, key)
            )
            for candidate in candidates:
                if target not in self.recoverable(hidden | {candidate}):
                    return candidate
            if candidates:
                return candidates[0]
            reached |= {
                variable
                for index in step
                for variable in self.equations[index]
                if variable in unknown
            }


def _add(terms: Equation, figure: Figure, factor: int) -> None:
    """Add ``factor`` times ``figure`` to the equation ``terms``."""
    variable = (figure.group, figure.value)
    terms[variable] = terms.get(variable, 0) + factor


def render(group: Group, hidden: bool) -> dict[str, Any]:
    """Return ``group`` as an exported object: its guests and values, or nulls."""
    if hidden:
        return {
            "guests": None,
            **{name: None for name in group.values},
            "suppressed": True,
        }
    return {"guests": group.guests, **group.values, "suppressed": False}
