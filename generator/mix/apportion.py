"""Hamilton's method (largest remainder): integer shares of a token budget."""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import numpy as np


def hamilton(total: int, weights: Sequence[Any]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; ties -> lower index)."""
    ws = [Fraction(int(w)) if isinstance(w, (int, np.integer)) else Fraction(w) for w in weights]
    if total < 0 or any(w < 0 for w in ws):
        raise ValueError("hamilton: negative total or weight")
    wsum = sum(ws)
    if wsum == 0 or total == 0:
        return [0] * len(ws)
    quotas = [total * w / wsum for w in ws]
    floors = [q.numerator // q.denominator for q in quotas]
    rest = total - sum(floors)
    order = sorted(range(len(ws)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:rest]:
        floors[i] += 1
    return floors
