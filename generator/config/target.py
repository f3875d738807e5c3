"""The `target:` and `budget:` sections (docs/targets.md): how many accepted records a run is for,
and what it may spend getting them. Neither changes what a record is, so neither is part of the
spec's hash (a run resumed with a larger budget or target keeps its records)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from generator.config.base import Strict

BUDGET_KEYS = ("records", "calls", "tokens", "cost", "seconds")


class TargetConfig(Strict):
    accepted: int = Field(ge=1, description="Records that must end `ok` (and pass `where:`); synthgen plans "
                          "more records, append-stably, until this many are accepted.")
    where: str | None = Field(None, description="A filter expression over the final row (e.g. "
                              "`judge.correctness >= 4`; the pipeline filter language); only rows that pass it count as accepted.")
    on_hopeless: Literal["stop", "warn"] = Field("warn", description="When the acceptance seen so far says "
                                                 "the budget cannot reach the target: stop the run, or only say so.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence of the acceptance bound the "
                              "hopeless check uses (a Wilson upper bound on the acceptance rate).")


class BudgetConfig(Strict):
    """Limits on one run folder's spending; checked before each request is sent. Calls, tokens and
    cost count every session into the folder (a resume continues the same budget); seconds count
    this invocation."""

    records: int | None = Field(None, ge=1, description="Records planned, at most.")
    calls: int | None = Field(None, ge=1, description="Model calls (requests that reach a model; cache hits "
                              "are free).")
    tokens: int | None = Field(None, ge=1, description="Prompt plus completion tokens (reasoning tokens are "
                               "completion tokens).")
    cost: float | None = Field(None, gt=0, description="Money, from the models' `price:` (a model without a "
                               "price costs nothing here).")
    seconds: float | None = Field(None, gt=0, description="Wall time of this invocation's generation.")

    def limits(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in BUDGET_KEYS if getattr(self, k) is not None}
