"""A run's budget gate (engine.budget.Gate), opened with what earlier sessions into the run folder
already spent: calls, tokens and cost count over every session (a resume continues the budget; the
ledger under answers/ is the record of it), seconds count this invocation."""
from __future__ import annotations

import logging

from generator.config.spec import Spec
from generator.config.target import BudgetConfig
from generator.engine.budget import Gate
from generator.engine.run_folder import RunFolder

log = logging.getLogger(__name__)


def prices(spec: Spec) -> dict[str, dict | None]:
    return {m.name: m.price.model_dump() if m.price else None for m in spec.models}


def open_gate(spec: Spec, folder: RunFolder, manifest: dict, budget: BudgetConfig | None) -> Gate:
    """The gate of this invocation (one with no limits when there is no budget: a target can still
    close it when it finds the target hopeless)."""
    limits = budget.limits() if budget is not None else {}
    spent = {"calls": 0, "tokens": 0, "cost": 0.0}
    if any(k in limits for k in spent) and folder.has_plan():
        from generator.export.usage import compute_usage

        total = compute_usage(folder.path, manifest)["total"]
        spent = {"calls": int(total.get("requests") or 0),
                 "tokens": int(total.get("prompt_tokens") or 0) + int(total.get("completion_tokens") or 0),
                 "cost": float(total.get("cost") or 0.0)}
        log.info("budget: earlier sessions spent %s", spent)
    return Gate(limits, prices(spec), spent)


def budget_of(spec: Spec, overrides: dict | None) -> BudgetConfig | None:
    """The spec's `budget:` with the command line's limits on top (`overrides`: key -> value)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if spec.budget is None and not given:
        return None
    base = spec.budget.model_dump() if spec.budget is not None else {}
    return BudgetConfig(**{**base, **given})
