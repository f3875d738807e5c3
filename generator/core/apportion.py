"""Largest-remainder apportionment (Hamilton's method): integer shares that sum exactly to a total."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def apportion(total: int, weights: Sequence[float], already: Sequence[int] | None = None) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; sums to `total`).

    With `already` (counts given so far), the cumulative total is apportioned and `already` subtracted,
    so repeated calls stay proportional over time; no count is negative."""
    n = len(weights)
    if n == 0 or total <= 0:
        return [0] * n
    already = list(already) if already is not None else [0] * n
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    goal = w * (total + sum(already)) - np.asarray(already, dtype=float)
    goal = np.clip(goal, 0, None)
    if goal.sum() <= 0:
        goal = w.copy()
    goal = goal * (total / goal.sum())
    base = np.floor(goal).astype(int)
    rest = total - int(base.sum())
    order = sorted(range(n), key=lambda i: (-(goal[i] - base[i]), -w[i], i))
    for i in order[:rest]:
        base[i] += 1
    return [int(b) for b in base]
