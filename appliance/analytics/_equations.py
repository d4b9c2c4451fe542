"""Detection of the unknowns of linear equations that have a single value.

The suppression rule needs the hidden figures that a reader can compute from
the shown ones. Each relation between figures is a linear equation, in which
the shown figures are constants and the hidden ones unknowns. An unknown
``x`` is determined exactly when the unit vector of ``x`` is a combination
of the equations' rows restricted to the unknowns, which Gaussian
elimination decides. The arithmetic uses :class:`fractions.Fraction`, so no
rounding can make a determined value look undetermined.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

Variable = tuple[str, str]
"""A value of a group: ``(group key, value name)``."""

Equation = dict[Variable, int]
"""An equation ``sum(coefficient * variable) = 0``; missing variables have 0."""


def solvable(equations: Iterable[Equation], unknown: set[Variable]) -> set[Variable]:
    """Return the variables in ``unknown`` whose value the equations determine.

    Every other variable counts as known. Equations that contradict each
    other are not detected; the figures come from one consistent store.
    """
    # Rows in reduced echelon form, by their pivot. Each pivot occurs in
    # its own row only, so a unit vector lies in the row space exactly when
    # a row is that unit vector.
    rows: dict[Variable, dict[Variable, Fraction]] = {}
    for equation in equations:
        row = {
            variable: Fraction(coefficient)
            for variable, coefficient in equation.items()
            if coefficient and variable in unknown
        }
        for pivot in [variable for variable in row if variable in rows]:
            _subtract(row, rows[pivot], row[pivot])
        if not row:
            continue
        pivot = min(row)
        scale = row[pivot]
        row = {variable: value / scale for variable, value in row.items()}
        for other in rows.values():
            if pivot in other:
                _subtract(other, row, other[pivot])
        rows[pivot] = row
    return {pivot for pivot, row in rows.items() if len(row) == 1}


def _subtract(
    row: dict[Variable, Fraction], other: dict[Variable, Fraction], times: Fraction
) -> None:
    """Subtract ``times`` times ``other`` from ``row`` in place, dropping zeros."""
    for variable, value in other.items():
        result = row.get(variable, Fraction(0)) - times * value
        if result:
            row[variable] = result
        else:
            row.pop(variable, None)
