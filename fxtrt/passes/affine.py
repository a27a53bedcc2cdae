"""Affine (multilinear) expressions of dims, fitted exactly from integer points.

``generalize_batch`` aligns traces at concrete sizes; each literal that changed between them is
fitted here as ``sum(coeff * product of dims)`` over every subset of the baked dims, with exact
fractions, so that a fit either reproduces every point or does not exist.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence


@dataclass(frozen=True)
class Expr:
    """``sum(coef * prod(dims))`` over subsets of the dynamic dims; the empty subset is the constant."""

    terms: tuple[tuple[tuple[str, ...], Fraction], ...]

    def __str__(self) -> str:
        parts = []
        for dims, c in self.terms:
            if c == 0:
                continue
            mono = "*".join(dims)
            if not dims:
                parts.append(str(c))
            elif c == 1:
                parts.append(mono)
            else:
                parts.append(f"{c}*{mono}")
        return " + ".join(parts).replace("+ -", "- ") or "0"

    def at(self, point: dict[str, int]) -> Fraction:
        """The expression's value at ``point``."""
        return sum((c * math.prod(point[d] for d in dims) for dims, c in self.terms), Fraction(0))

    @property
    def is_integral(self) -> bool:
        return all(c.denominator == 1 for _, c in self.terms)

    @property
    def is_constant(self) -> bool:
        return all(not dims or c == 0 for dims, c in self.terms)


def fit(dims: Sequence[str], points: Sequence[dict[str, int]], values: Sequence[Any]) -> Expr | None:
    """The multilinear expression through (point, value) pairs; None if it does not exist.

    With 2 sizes per dim on every corner of the grid the system is square and exactly solvable.
    """
    subsets = [s for r in range(len(dims) + 1) for s in itertools.combinations(dims, r)]
    rows = [[Fraction(math.prod(p[d] for d in s)) for s in subsets] + [Fraction(v)] for p, v in zip(points, values)]
    n = len(subsets)
    # Gauss-Jordan elimination over the rationals: exact, tiny (n = 2**k).
    r = 0
    for col in range(n):
        pivot = next((i for i in range(r, len(rows)) if rows[i][col] != 0), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        rows[r] = [x / rows[r][col] for x in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col] != 0:
                f = rows[i][col]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[r])]
        r += 1
    if r < n or any(all(x == 0 for x in row[:-1]) and row[-1] != 0 for row in rows):
        return None
    return Expr(tuple((s, rows[i][-1]) for i, s in enumerate(subsets)))
