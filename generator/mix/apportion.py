"""Hamilton's method (largest remainder) for token budgets: ties go to the lower index."""
from __future__ import annotations

from typing import Any, Sequence

from generator.core.apportion import apportion


def hamilton(total: int, weights: Sequence[Any]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder; ties -> lower index)."""
    return apportion(total, weights, ties="index")
