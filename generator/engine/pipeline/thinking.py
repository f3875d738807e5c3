"""Reasoning models in a pipeline: which requests carry reasoning markers and a thinking budget,
and what a stage keeps of its samples' reasoning.

A model entry with `reasoning:` marks every request to it with its markers, so each backend
returns the answer (`text`) and the thinking (`reasoning`) apart; a generate stage's
`max_reasoning_tokens` adds the budget. Both are in the request's cache key only when set, so
requests to other models keep their keys. Later stages, judges, verifiers and filters read a
stage's `text` (the answer); its reasoning only where they name `<stage>.reasoning`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from generator.core.backend import Request, Result
from generator.core.reasoning import Markers


class Thinking:
    def __init__(self, models: list[Any], stages: dict[str, Any]):
        self.markers: dict[str, Markers] = {m.name: m.markers() for m in models if m.reasoning is not None}
        self.budgets: dict[str, int] = {name: cfg.max_reasoning_tokens for name, cfg in stages.items()
                                        if getattr(cfg, "max_reasoning_tokens", None)}

    def dress(self, request: Request, model: str, stage: str) -> Request:
        """`request` as sent to `model` for `stage`: with the model's markers and the stage's budget."""
        markers = self.markers.get(model)
        if markers is None:
            return request
        return replace(request, reasoning=markers, max_reasoning_tokens=self.budgets.get(stage))


def forced(res: Result) -> bool:
    return bool(res.meta.get("reasoning_forced"))


def unfinished(res: Result) -> bool:
    """The reasoning never ended (cut by max_tokens, or the model stopped inside it): no answer."""
    return bool(res.meta.get("reasoning_unfinished"))


def sample_columns(samples: list[tuple[Request, Result, Any]]) -> dict[str, Any]:
    """Per sample (in sample order): its answer's status and text, its reasoning and whether its end
    marker was forced (`StageOut.columns["samples"]`, what `keep:` turns into rows)."""
    return {"samples": [{"status": a.status, "text": a.text, "completion": r.text, "reasoning": r.reasoning,
                         "reasoning_tokens": r.reasoning_tokens, "reasoning_forced": forced(r)}
                        for _, r, a in samples]}
