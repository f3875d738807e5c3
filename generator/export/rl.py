"""Export layouts for reasoning data: the `messages` layout's reasoning, and the `rl` layout.

- `messages` with reasoning: each assistant turn carries its thinking the way chat templates
  read it: `reasoning_content` beside `content` (`--reasoning field`, the default), or inline as
  `<think>\\n...\\n</think>\\n\\n` before the answer (`--reasoning inline`), or not at all
  (`--reasoning drop`).
- `rl`: one row per problem (record) in the column layout common RL trainers read: `prompt` (the
  chat messages the solver saw), `reward_model` ({ground_truth, style: "rule"}: the reference answer
  a rule-based reward compares with), `data_source` (the run's name unless given), `verifier` (how
  the run checked answers: `<stage>:<check>:<extract>`), `pass_rate` (the share of the run's own
  samples that passed, where it had several) and `id`, `topic`, `template`, `model` for lineage.
"""
from __future__ import annotations

import json
from typing import Any

import polars as pl

from generator.export.rows import ExportError, chat_message

GROUNDED = ("reference", "reasoning_gym")  # checks whose `<stage>.reference` is the ground truth


def _checker(manifest: dict, frame: pl.DataFrame, reference: str | None) -> tuple[str, str, str | None]:
    """(ground-truth column, verifier name, pass-rate column or None) of the run."""
    stages = ((manifest.get("spec") or {}).get("stages")) or []
    # a difficulty stage's check is the verify stage of its name (generator.engine.pipeline.difficulty)
    verify = [s for s in stages if isinstance(s, dict) and s.get("kind") in ("verify", "difficulty")]
    pick = next((s for s in verify if s.get("check") in GROUNDED), verify[0] if verify else None)
    rate = None
    if pick is not None:
        rate = f"{pick['name']}.pass_rate" if f"{pick['name']}.pass_rate" in frame.columns else None
        name = f"{pick['name']}:{pick.get('check')}:{pick.get('extract', 'number')}"
    else:
        name = "reference"
    column = reference or (f"{pick['name']}.reference" if pick is not None and pick.get("check") in GROUNDED
                           else None)
    if column is None:
        raise ExportError("--layout rl needs a reference answer per problem: the run has no verify stage with "
                          "`check: reference` or `reasoning_gym`; name the column with --reference COLUMN "
                          "(e.g. problem.json)")
    if column not in frame.columns:
        raise ExportError(f"--reference {column}: the run has no such column; columns: "
                          f"{', '.join(sorted(frame.columns))}")
    return column, name, rate


def rl_frame(frame: pl.DataFrame, manifest: dict, reference: str | None = None,
             data_source: str | None = None) -> tuple[pl.DataFrame, int]:
    """The rl layout (module docstring), and how many rows it left out (further samples of a
    problem already written, problems without a reference)."""
    column, verifier, rate = _checker(manifest, frame, reference)
    meta = [c for c in ("id", "topic", "template", "model") if c in frame.columns]
    first = frame.unique("id", keep="first", maintain_order=True) if "id" in frame.columns else frame
    has_ref = first.filter(pl.col(column).is_not_null() & (pl.col(column).cast(pl.Utf8) != ""))
    source = data_source or str(manifest.get("name") or "synthgen")
    out = has_ref.select(
        pl.col("messages").alias("prompt"),
        pl.struct(pl.col(column).cast(pl.Utf8).alias("ground_truth"), pl.lit("rule").alias("style")).alias("reward_model"),
        pl.lit(source).alias("data_source"),
        pl.lit(verifier).alias("verifier"),
        (pl.col(rate).cast(pl.Float64) if rate else pl.lit(None, pl.Float64)).alias("pass_rate"),
        *meta,
    )
    return out, frame.height - out.height

