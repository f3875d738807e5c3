"""The rows a pipeline writes: one per attempt of each record, with every stage's columns.

Columns: the plan's (the entry stage's prompt, template, model, seed), the usual result columns
(`messages`, `prompt`, `completion` and `text` are the output stage's), then

    final        true on the one row that ends the record (its last attempt)
    decided_by   the stage that decided this attempt (a rejecting check, a failed generation,
                 or the last stage when everything passed)
    reason       why (the check's reason), null when it passed
    seed_id      the seed data row the record came from (null for topic cells)
    sample       with a verify stage's `keep:`: which sample of its target this row is (one row
                 per kept sample; pipeline.samples)
    <stage>.*    per stage: status, attempt (the attempt that produced it), reason, and by kind
                 generate: text, json, texts, prompt, template, model, seed, tries, tokens,
                 reasoning, reasoning_tokens, reasoning_forced (a thinking model's trace);
                 judge: one Float64 column per criterion, mean, reasons (JSON), with
                 `per_turn` also turn_scores (one per assistant turn, null where elided),
                 turn_reasons (JSON) and turn_min; or winner/chosen/rejected (a compared
                 transcript: its conversation, JSON); and the reasoning columns; verify: passed,
                 agree, answer, majority; filter: passed;
                 conversation/agent: text, conversation, tools, turns, tool_calls, simulator (the user
                 simulator's prompt and closing turn; conversations only) (JSON text), steps,
                 failed_calls, model, tokens; agent also passed, answer, expected (its answer check).

When a conversation or agent stage is the output, the row's `conversation`, `tools` and
`simulator` are its trajectory (what the `messages` export layout writes), `text` its final answer, and `messages` the
conversation before that answer (role and content only).
"""
from __future__ import annotations

from typing import Any

import polars as pl

from generator.core.redact import scrub_text
from generator.engine.pipeline.context import StageOut, jsonable
from generator.engine.pipeline.dag import DIALOGUE_KINDS, Pipeline, StageNode
from generator.engine.run_folder import GENERATION_SCHEMA

RECORD_COLUMNS: dict[str, Any] = {"final": pl.Boolean, "decided_by": pl.Utf8, "reason": pl.Utf8, "seed_id": pl.Utf8}
_MODEL_COLS = {"model": pl.Utf8, "seed": pl.Int64, "tries": pl.Int32, "prompt_tokens": pl.Int32,
               "completion_tokens": pl.Int32}
# generate and judge stages: a thinking model's reasoning, kept apart from the answer
REASONING_COLS = {"reasoning": pl.Utf8, "reasoning_tokens": pl.Int32, "reasoning_forced": pl.Boolean}


def stage_columns(node: StageNode) -> dict[str, Any]:
    cols: dict[str, Any] = {"status": pl.Utf8, "attempt": pl.Int32, "reason": pl.Utf8}
    c = node.cfg
    if node.kind == "generate":
        cols.update({"text": pl.Utf8, "json": pl.Utf8, "texts": pl.List(pl.Utf8), "prompt": pl.Utf8,
                     "template": pl.Utf8, **_MODEL_COLS, **REASONING_COLS})
    elif node.kind == "judge" and c.compare:
        cols.update({"winner": pl.Utf8, "chosen": pl.Utf8, "rejected": pl.Utf8, **_MODEL_COLS, **REASONING_COLS})
    elif node.kind == "judge":
        cols.update({cr.name: pl.Float64 for cr in c.criteria})
        cols.update({"mean": pl.Float64, "reasons": pl.Utf8, **_MODEL_COLS, **REASONING_COLS})
        if c.per_turn:
            cols.update({"turn_scores": pl.List(pl.Float64), "turn_reasons": pl.Utf8, "turn_min": pl.Float64})
    elif node.kind == "verify":
        cols.update({"passed": pl.Boolean, "agree": pl.Int32, "answer": pl.Utf8, "majority": pl.Utf8})
        if c.check in ("reference", "reasoning_gym"):
            cols["reference"] = pl.Utf8  # the reference's final answer: an RL export's ground truth
        if c.keep is not None:  # every sample verified apart (pipeline.samples)
            cols.update({"verdicts": pl.List(pl.Boolean), "pass_rate": pl.Float64, "kept": pl.List(pl.Int32)})
    elif node.kind in DIALOGUE_KINDS:
        cols.update({"text": pl.Utf8, **{k: pl.Utf8 for k in TRAJECTORY_COLUMNS}, "steps": pl.Int32,
                     "failed_calls": pl.Int32, **_MODEL_COLS})
        del cols["seed"]  # every turn has its own seed (in `turns`)
        if node.kind == "agent":
            cols.update({"passed": pl.Boolean, "answer": pl.Utf8, "expected": pl.Utf8})
    else:
        cols["passed"] = pl.Boolean
    return {f"{node.name}.{k}": v for k, v in cols.items()}


TRAJECTORY_COLUMNS = ("conversation", "tools", "turns", "tool_calls", "simulator")


def pipeline_schema(pipeline: Pipeline) -> dict[str, Any]:
    schema = {**GENERATION_SCHEMA, **RECORD_COLUMNS}
    for node in pipeline.nodes.values():
        schema.update(stage_columns(node))
    if pipeline.nodes[pipeline.output].kind in DIALOGUE_KINDS:
        schema.update({"conversation": pl.Utf8, "tools": pl.Utf8, "simulator": pl.Utf8})
    if any(n.kind == "verify" and n.cfg.keep is not None for n in pipeline.nodes.values()):
        schema["sample"] = pl.Int32  # which of the target's samples a kept row is (pipeline.samples)
    return schema


def _stage_values(node: StageNode, out: StageOut) -> dict[str, Any]:
    v = out.view
    vals: dict[str, Any] = {"status": out.status, "attempt": out.attempt, "reason": out.reason}
    if node.kind in ("generate", "judge"):
        vals.update({"model": out.model, "seed": out.seed, "tries": out.tries, "prompt_tokens": out.prompt_tokens,
                     "completion_tokens": out.completion_tokens, "reasoning": out.reasoning,
                     "reasoning_tokens": out.reasoning_tokens, "reasoning_forced": out.reasoning_forced})
    if node.kind == "generate":
        vals.update({"text": v.get("text"), "json": jsonable(v.get("json") or None), "texts": v.get("texts"),
                     "prompt": v.get("prompt"), "template": out.template})
    elif node.kind == "judge" and node.cfg.compare:
        vals.update({"winner": v.get("winner"), "chosen": v.get("chosen"), "rejected": v.get("rejected")})
    elif node.kind in DIALOGUE_KINDS:
        vals.update({"text": v.get("text"), "steps": v.get("steps"), "failed_calls": v.get("failed_calls"),
                     "model": out.model, "tries": out.tries, "prompt_tokens": out.prompt_tokens,
                     "completion_tokens": out.completion_tokens})
        vals.update({k: out.columns.get(k) for k in TRAJECTORY_COLUMNS})
        if node.kind == "agent":
            vals.update({k: v.get(k) for k in ("passed", "answer", "expected")})
    elif node.kind == "judge":
        vals.update({cr.name: v.get(cr.name) for cr in node.cfg.criteria})
        vals.update({"mean": v.get("mean"), "reasons": jsonable(v.get("reasons") or None)})
        if node.cfg.per_turn:
            vals.update({"turn_scores": v.get("turn_scores"), "turn_reasons": jsonable(v.get("turn_reasons")),
                         "turn_min": v.get("turn_min")})
    else:
        vals.update({k: v.get(k) for k in ("passed", "agree", "answer", "majority", "verdicts", "pass_rate", "kept",
                                           "reference") if k in v})
    return {f"{node.name}.{k}": x for k, x in vals.items()}


def single_row(plan_row: dict, out: StageOut | None, status: str, reason: str | None) -> dict[str, Any]:
    """The row of a single-stage spec (a one-node pipeline): the plan row and its final answer, in
    the run folder's plain generation schema."""
    row: dict[str, Any] = dict(plan_row)
    if out is None:  # ended before its stage could answer (the scheduler's liveness guard)
        row.update({"completion": None, "text": "", "prompt_tokens": 0, "completion_tokens": 0,
                    "finish_reason": None, "status": status, "attempts": 0, "error": reason, "reasoning": None,
                    "reasoning_tokens": 0})
        return row
    error = out.error  # the answer's own fault; an empty answer has none
    row.update({"completion": out.completion, "text": out.view.get("text") or "",
                "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                "finish_reason": out.finish_reason, "status": status, "attempts": out.tries,
                "error": scrub_text(error) if error else None, "reasoning": out.reasoning,
                "reasoning_tokens": out.reasoning_tokens})
    return row


def attempt_row(pipeline: Pipeline, plan_row: dict, outputs: dict[str, StageOut], attempt: int, status: str,
                decided_by: str, reason: str | None, final: bool, seed_id: str | None) -> dict[str, Any]:
    """One row: this attempt's outputs (stages kept from earlier attempts are repeated, with their
    own `<stage>.attempt`; tokens count only the stages produced in this attempt)."""
    row: dict[str, Any] = dict(plan_row)
    out = outputs.get(pipeline.output)
    fresh = [o for o in outputs.values() if o.attempt == attempt]
    row.update({
        "completion": out.completion if out else None,
        "text": (out.view.get("text") or "") if out and status in ("ok", "truncated") else "",
        "prompt_tokens": sum(o.prompt_tokens for o in fresh),
        "completion_tokens": sum(o.completion_tokens for o in fresh),
        "reasoning": out.reasoning if out and status in ("ok", "truncated") else None,
        "reasoning_tokens": sum(o.reasoning_tokens for o in fresh),
        "finish_reason": None, "status": status, "attempts": attempt,
        "error": reason if status not in ("ok", "truncated", "rejected") else None,
        "final": final, "decided_by": decided_by, "reason": reason, "seed_id": seed_id,
    })
    if pipeline.nodes[pipeline.output].kind in DIALOGUE_KINDS:
        row["conversation"] = out.columns.get("conversation") if out else None
        row["tools"] = out.columns.get("tools") if out else None
        row["simulator"] = out.columns.get("simulator") if out else None
    if out is not None and out.messages:
        row["messages"] = out.messages
        row["prompt"] = out.messages[-1]["content"]
        row["finish_reason"] = "length" if out.status == "truncated" else "stop"
    for name, node in pipeline.nodes.items():
        if name in outputs:
            row.update(_stage_values(node, outputs[name]))
    return row


def stage_rates(frame: pl.DataFrame, pipeline_stages: list[str]) -> dict[str, dict[str, Any]]:
    """Per stage: how often it ran (counting each attempt once), passed, and rejected records."""
    rates: dict[str, dict[str, Any]] = {}
    for s in pipeline_stages:
        col = f"{s}.attempt"
        if col not in frame.columns:
            continue
        ran = frame.filter(pl.col(col) == pl.col("attempts"))
        failed = ran.filter((pl.col("decided_by") == s) & ~pl.col("status").is_in(["ok", "truncated"]))
        n, bad = ran.height, failed.height
        rates[s] = {"ran": n, "passed": n - bad, "rejected": bad,
                    "pass_rate": round((n - bad) / n, 4) if n else None}
    return rates
