"""Acceptance as it happens: records ended and accepted, attempts and rejections per stage, counted
from the rows the scheduler hands out (final rows and a pipeline's rejected attempts), and what
they say about a target: the acceptance rate's bounds (Wilson) and the stage that rejects most."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable

OK = ("ok", "beyond_target")  # beyond_target: accepted, past a target's count (runs.target)


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson bounds (low, high) on a rate seen as `successes` of `n` at `confidence`."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass
class StageCount:
    ran: int = 0
    rejected: int = 0

    @property
    def passed(self) -> int:
        return self.ran - self.rejected


@dataclass
class Tally:
    """`stages`: the pipeline's stage order (a single-stage spec: its one stage). `accepts`: whether
    a final `ok` row counts (a target's `where:`); every final ok row counts without it."""

    stages: list[str]
    accepts: Callable[[dict], bool] | None = None
    ended: int = 0
    accepted: int = 0
    attempts: int = 0
    steps: int = 0  # agent and conversation steps (turns) of the rows seen
    by_stage: dict[str, StageCount] = field(default_factory=dict)

    def add(self, row: dict) -> None:
        """A row the scheduler handed out: a record's final row, or (`final` false) a rejected attempt."""
        self.attempts += 1
        status = row.get("status")
        attempts = row.get("attempts")
        single = not any(f"{s}.attempt" in row for s in self.stages)
        for s in self.stages:
            ran = single or (row.get(f"{s}.attempt") is not None and row.get(f"{s}.attempt") == attempts)
            if not ran:
                continue
            c = self.by_stage.setdefault(s, StageCount())
            c.ran += 1
            decided = single or row.get("decided_by") == s
            if decided and status not in (*OK, "truncated"):
                c.rejected += 1
            self.steps += int(row.get(f"{s}.steps") or 0)
        if row.get("final", True):
            self.ended += 1
            if status in OK and (self.accepts is None or self.accepts(row)):
                self.accepted += 1

    def worst_stage(self) -> str | None:
        """`solve passed 0 of 9`: the stage with the lowest pass rate (most rejections on a tie)."""
        seen = [(c.passed / c.ran, -c.rejected, s, c) for s, c in self.by_stage.items() if c.ran]
        if not seen:
            return None
        _, _, name, c = min(seen)
        return f"{name} passed {c.passed} of {c.ran}"

    def rejections(self) -> dict[str, int]:
        return {s: c.rejected for s, c in self.by_stage.items() if c.rejected}

    def view(self) -> dict[str, Any]:
        return {"ended": self.ended, "accepted": self.accepted, "attempts": self.attempts, "steps": self.steps,
                "stages": {s: {"ran": c.ran, "passed": c.passed, "rejected": c.rejected}
                           for s, c in self.by_stage.items()}}
