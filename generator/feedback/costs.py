"""What each topic cell and template cost in a round: tokens and, where the models have prices, money.

Counted from the generation rows, every row: a pipeline keeps each attempt of a record as a row
with the tokens of the stages that ran in that attempt (`engine.pipeline.lineage.attempt_row`), so
rejected attempts, judges and checks are paid for by the cell whose record needed them. A single
stage writes one row per record. Per group:

    records       distinct records (a pipeline's final rows; one row each otherwise)
    attempts      rows
    prompt_tokens, completion_tokens, reasoning_tokens (of completion), tokens = prompt + completion
    cost          tokens x the price of the model that spent them (per stage in a pipeline, as
                  `<stage>.model` says; the row's model otherwise); null when no model has a price

Written into each round file (`costs`), so the allocator's value per token (`allocator.value:
per_token`) and the report read it without opening the shards again.
"""
from __future__ import annotations

from typing import Any

import polars as pl

from generator.engine.budget import price_cost

TOKENS = ("prompt_tokens", "completion_tokens", "reasoning_tokens")


def _stage_models(frame: pl.DataFrame) -> list[str]:
    """Pipeline stages whose rows carry their own model and tokens (generate, judge, dialogue)."""
    return [c[: -len(".model")] for c in frame.columns
            if c.endswith(".model") and f"{c[: -len('.model')]}.prompt_tokens" in frame.columns
            and f"{c[: -len('.model')]}.attempt" in frame.columns]


def row_costs(frame: pl.DataFrame, prices: dict[str, dict | None]) -> list[float]:
    """Money spent by each row: per stage that ran in the row's attempt (a stage kept from an earlier
    attempt was paid for by that attempt's row), else the row's own tokens at its model's price."""
    n = frame.height
    stages = _stage_models(frame) if "final" in frame.columns else []
    if not stages:
        return [price_cost(p or 0, c or 0, prices.get(m))
                for m, p, c in zip(frame["model"].to_list(), frame["prompt_tokens"].to_list(),
                                   frame["completion_tokens"].to_list())]
    out = [0.0] * n
    attempt = frame["attempts"].to_list()
    for s in stages:
        cols = [frame[f"{s}.{k}"].to_list() for k in ("model", "prompt_tokens", "completion_tokens", "attempt")]
        for i, (m, p, c, a) in enumerate(zip(*cols)):
            if m is not None and a is not None and a == attempt[i]:
                out[i] += price_cost(p or 0, c or 0, prices.get(m))
    return out


def _group(frame: pl.DataFrame, by: str, cost: list[float], priced: bool) -> dict[str, dict[str, Any]]:
    vals = [str(v) for v in frame[by].to_list()]
    ids = frame["id"].to_list()
    tok = {k: frame[k].fill_null(0).to_list() if k in frame.columns else [0] * frame.height for k in TOKENS}
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, set] = {}
    for i, g in enumerate(vals):
        d = out.setdefault(g, {"records": 0, "attempts": 0, **{k: 0 for k in TOKENS}, "tokens": 0, "cost": 0.0})
        d["attempts"] += 1
        if ids[i] not in seen.setdefault(g, set()):
            seen[g].add(ids[i])
            d["records"] += 1
        for k in TOKENS:
            d[k] += int(tok[k][i])
        d["tokens"] += int(tok["prompt_tokens"][i]) + int(tok["completion_tokens"][i])
        d["cost"] += cost[i]
    for d in out.values():
        d["cost"] = round(d["cost"], 9) if priced else None
    return dict(sorted(out.items()))


def round_costs(frame: pl.DataFrame, round: int, prices: dict[str, dict | None]) -> dict[str, Any]:
    """Round `round`'s cost per cell (`cells`), per template (`by.template`) and in all (`total`).
    `frame` holds every generation row of the run (all attempts); `prices`: model -> price or None."""
    rows = frame.filter(pl.col("round") == round)
    priced = any(prices.values())
    cost = row_costs(rows, prices) if rows.height else []
    cells = _group(rows, "topic_id", cost, priced) if rows.height else {}
    by = {"template": _group(rows, "template", cost, priced)} if rows.height and "template" in rows.columns else {}
    total = {"records": 0, "attempts": 0, **{k: 0 for k in TOKENS}, "tokens": 0, "cost": 0.0 if priced else None}
    for d in cells.values():
        for k in total:
            if k != "cost" or priced:
                total[k] += d[k]
    return {"round": round, "priced": priced, "cells": cells, "by": by, "total": total}
