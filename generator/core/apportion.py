"""Largest-remainder apportionment (Hamilton's method): integer shares that sum exactly to a total.

One routine for the feedback loop (generations per topic cell) and the mix (tokens per source).
Arithmetic is exact (fractions), so equal remainders are equal and the tie rule decides them:
`ties="index"` gives the extra unit to the lower index, `ties="weight"` to the heavier weight first.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import numpy as np


def _exact(x: Any) -> Fraction:
    return Fraction(int(x)) if isinstance(x, (int, np.integer)) else Fraction(x)


def apportion(total: int, weights: Sequence[Any], already: Sequence[int] | None = None,
              ties: str = "weight") -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; sums to `total`).

    With `already` (counts given so far), the cumulative total is apportioned and `already` subtracted,
    so repeated calls stay proportional over time; no count is negative. All-zero weights give zeros."""
    n = len(weights)
    w = [_exact(x) for x in weights]
    if total < 0 or any(x < 0 for x in w):
        raise ValueError("apportion: negative total or weight")
    wsum = sum(w)
    if n == 0 or total == 0 or wsum == 0:
        return [0] * n
    w = [x / wsum for x in w]
    if already is None:
        goal = [x * total for x in w]
    else:
        done = [Fraction(int(a)) for a in already]
        goal = [max(x * (total + sum(done)) - a, Fraction(0)) for x, a in zip(w, done)]
        gsum = sum(goal)
        goal = [g * total / gsum for g in goal] if gsum > 0 else [x * total for x in w]
    base = [g.numerator // g.denominator for g in goal]
    rest = total - sum(base)
    if ties == "index":
        order = sorted(range(n), key=lambda i: (-(goal[i] - base[i]), i))
    else:
        order = sorted(range(n), key=lambda i: (-(goal[i] - base[i]), -w[i], i))
    for i in order[:rest]:
        base[i] += 1
    return base
