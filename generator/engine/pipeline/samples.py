"""Many answers per problem, verified one by one (`keep:` on a verify stage).

A generate stage with `n: 16` writes sixteen samples, each its own request (its own seed and cache
entry, so a resumed run re-solves only what it never received). A verify stage with `keep:` runs
its check on every sample of its target apart and records each verdict (`<stage>.verdicts`), the
problem's pass rate (`<stage>.pass_rate`) and the samples it keeps (`<stage>.kept`):
`keep: {correct: k}` the first k correct ones, `keep: all_correct` every correct one. A record
with fewer than `min_correct` (default 1) correct is rejected (so `on_reject` can write a new
problem); `min_correct: 0` rejects none (a difficulty band's filter decides instead). When the record ends,
each kept sample is a row of its own, named by `sample`: the target's `text` and reasoning
columns are that sample's (and the row's `text`, when the target is the output stage); the first
kept sample's row is the record's `final` row (with the record's tokens), the others follow it
with `final: false` and no tokens, so counts and sums stay per record.
"""
from __future__ import annotations

from typing import Any

from generator.engine.pipeline.context import StageOut
from generator.engine.pipeline.dag import Pipeline
from generator.engine.pipeline.verify import Verdict


def texts(target: StageOut) -> list[str]:
    """Each sample's answer, in sample order."""
    return [s["text"] or "" for s in target.columns.get("samples") or [{"text": target.view.get("text")}]]


def combine(keep: Any, verdicts: list[Verdict], min_correct: int = 1) -> Verdict:
    """One verdict for the stage from its samples' verdicts (module docstring); it fails when
    fewer than `min_correct` samples pass."""
    passed = [v.passed for v in verdicts]
    correct = [k for k, ok in enumerate(passed) if ok]
    kept = correct if keep == "all_correct" else correct[:keep.correct]
    n = len(verdicts)
    rate = round(len(correct) / n, 4) if n else 0.0
    reason = f"{len(correct)} of {n} samples pass" + (f"; kept {len(kept)}" if kept else "")
    if not kept:
        first = next((v.reason for v in verdicts if not v.passed), "")
        reason += f" (first failure: {first})" if first else ""
    answers = [v.answer for v in verdicts]
    return Verdict(len(correct) >= min_correct, reason, agree=len(correct), answer=next((a for a in answers if a), None),
                   majority=next((v.majority for v in verdicts if v.majority), None), verdicts=passed,
                   pass_rate=rate, kept=kept, reference=next((v.reference for v in verdicts if v.reference), None))


def keeper(pipeline: Pipeline) -> Any:
    """The verify stage with `keep:` (at most the first one listed), or None."""
    return next((n for n in pipeline.nodes.values() if n.kind == "verify" and n.cfg.keep is not None), None)


def expand(pipeline: Pipeline, row: dict, outputs: dict[str, StageOut]) -> list[dict]:
    """A record's final row as one row per kept sample (module docstring); other rows as they are."""
    node = keeper(pipeline)
    if node is None:
        return [row]
    check, target = outputs.get(node.name), node.cfg.target
    kept = check.view.get("kept") if check is not None and row.get("status") in ("ok", "truncated") else None
    samples = outputs[target].columns.get("samples") if target in outputs else None
    if not kept or not samples:
        return [dict(row, sample=None)]
    rows = []
    for j, k in enumerate(kept):
        s = samples[k]
        r = dict(row, sample=k, final=row["final"] and j == 0)
        if j:  # the record's tokens are counted once, on its first row
            r.update(prompt_tokens=0, completion_tokens=0, reasoning_tokens=0)
        r.update({f"{target}.text": s["text"], f"{target}.reasoning": s["reasoning"],
                  f"{target}.reasoning_tokens": s["reasoning_tokens"], f"{target}.reasoning_forced": s["reasoning_forced"]})
        if target == pipeline.output:
            r.update({"text": s["text"], "completion": s["completion"], "reasoning": s["reasoning"]})
        rows.append(r)
    return rows
