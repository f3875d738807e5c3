"""Per-cell yield after a round: how much new, usable diversity each cell's latest generations added.

For the generations of round `r` (the latest), measured against everything generated so far:

- quality flags: the row's status (`truncated`, `empty`, `invalid_json`, `error`) and `refused` (an
  `ok` text that opens with a refusal phrase, see `REFUSAL`). Flagged rows yield zero.
- near duplicates: MinHash-LSH over word 5-grams (`scoring.metrics.find_duplicates`, Jaccard >= 0.8)
  in generation order (earlier rounds first); a text that repeats an earlier one yields zero.
- novelty: cosine distance (static embeddings, L2-normalized) to the nearest other usable text of
  the run (`novelty`) or of the same cell (`cell_novelty`), clipped to [0, 1].
- yield of a row = novelty, or 0 when flagged or a near duplicate; a cell's yield is the mean over
  all its rows of the round (flagged rows count as zero yield).
- within-cell diversity: the Vendi score of the cell's usable texts before and after the round
  (the research's within-topic D: it stops rising once a topic has enough generations) and their
  mean pairwise cosine distance.

The same row yields are also summed per template, persona and model (reported, not allocated).
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import polars as pl

# A refusal opens the answer; checked on the first 160 characters, lowercased.
REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i cannot|i can ?not|i can't|i won'?t|i'?m unable|i am unable|"
    r"i'?m not able to|i am not able to|as an ai\b|as a language model|i must decline|unfortunately,? i can)")


def is_refusal(text: str | None) -> bool:
    return bool(text) and bool(REFUSAL.search(text.strip()[:160].lower().replace("\u2019", "'")))


def row_flags(frame: pl.DataFrame) -> list[str]:
    """'ok' or the flag of each row (status, or `refused` for an ok text that refuses)."""
    out = []
    for status, text in zip(frame["status"].to_list(), frame["text"].to_list()):
        if status != "ok":
            out.append(status or "error")
        elif not (text or "").strip():
            out.append("empty")
        elif is_refusal(text):
            out.append("refused")
        else:
            out.append("ok")
    return out


def _vendi(x: np.ndarray) -> float:
    if len(x) == 0:
        return 0.0
    from scoring.metrics.semantic import vendi_score

    return float(vendi_score(x))


def _mcd(x: np.ndarray) -> float:
    from scoring.metrics.semantic import mean_cosine_distance

    return float(mean_cosine_distance(x)) if len(x) > 1 else 0.0


def _ordered(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(["round", "topic_id", "generation", "id"])


def global_scores(texts: list[str], x: np.ndarray, which: str, seed: int = 0,
                  embedder: str = "static") -> dict[str, float | None]:
    """Run-level scores of the usable texts: Vendi, mean pairwise distance, near-dup rate (+ `which`)."""
    from scoring.metrics import find_duplicates

    out: dict[str, float | None] = {"n": len(texts), "vendi": _vendi(x), "mean_cosine_distance": _mcd(x)}
    dups = find_duplicates(texts) if texts else []
    out["near_dup_rate"] = (sum(d is not None for d in dups) / len(dups)) if dups else 0.0
    if which == "cluster_proxy":
        from scoring.metrics.semantic import cluster_proxy_metric

        res = cluster_proxy_metric(texts, embeddings=x, seed=seed, embedder=embedder) if len(texts) >= 10 else None
        out["cluster_proxy"] = None if res is None or math.isnan(res.value) else float(res.value)
    out["tracked"] = out.get(which)
    return out


def _novelty(x: np.ndarray, rows: list[int], cell_of: np.ndarray | None) -> dict[int, float]:
    """1 - similarity to the nearest other usable text, for the usable `rows`: over the whole run, or
    within the same cell when `cell_of` is given (cell_novelty). A text with no neighbour scores 1."""
    if not rows:
        return {}
    sims = x[rows] @ x.T
    sims[np.arange(len(rows)), rows] = -np.inf
    if cell_of is not None:
        sims = np.where(cell_of[rows][:, None] == cell_of[None, :], sims, -np.inf)
    best = sims.max(1)
    # float32 dot products of identical unit vectors land within ~1e-7 of 1, depending on summation
    # order: round so a repeated text is exactly not novel
    return {u: 1.0 if not np.isfinite(best[k]) else float(np.clip(round(1.0 - float(best[k]), 6), 0.0, 1.0))
            for k, u in enumerate(rows)}


# Kept whole: the per-cell, per-group and global summaries share one embedding pass and its indexes.
def compute_yields(frame: pl.DataFrame, round: int, embedder: str = "static", metric: str = "novelty",
                   score: str = "vendi", seed: int = 0, weight_column: str | None = None) -> dict[str, Any]:
    """Yields of round `round`'s rows (see the module docstring) and the run's global scores.

    `frame` holds every generation row of the run so far (rounds <= `round`). `weight_column` (a
    pipeline judge's 1-5 score, `rounds.signal: judge`) scales each row's yield by (score - 1) / 4;
    a row without a score yields zero."""
    from scoring.embed import embed
    from scoring.metrics import find_duplicates

    frame = _ordered(frame.filter(pl.col("round") <= round))
    flags = row_flags(frame)
    texts_all = [t or "" for t in frame["text"].to_list()]
    usable = [i for i, f in enumerate(flags) if f == "ok"]
    texts = [texts_all[i] for i in usable]
    x = embed(texts, embedder=embedder) if texts else np.zeros((0, 1), dtype=np.float32)
    pos = {row: k for k, row in enumerate(usable)}  # frame row -> usable index
    dups = find_duplicates(texts) if texts else []

    cells = frame["topic_id"].to_list()
    rounds = frame["round"].to_list()
    cell_arr = np.array([cells[i] for i in usable], dtype=object)
    round_arr = np.array([rounds[i] for i in usable])

    latest = [i for i in range(frame.height) if rounds[i] == round]
    novelty = _novelty(x, [pos[i] for i in latest if i in pos], cell_arr if metric == "cell_novelty" else None)

    weights = [1.0] * frame.height
    if weight_column is not None:
        weights = [0.0 if v is None else min(max((float(v) - 1.0) / 4.0, 0.0), 1.0)
                   for v in frame[weight_column].to_list()]
    row_yield: dict[int, float] = {}
    row_dup: dict[int, bool] = {}
    for i in latest:
        u = pos.get(i)
        if u is None:
            row_yield[i] = 0.0
            continue
        row_dup[i] = dups[u] is not None
        row_yield[i] = 0.0 if row_dup[i] else novelty[u] * weights[i]

    def summarize(members: list[int]) -> dict[str, Any]:
        ys = [row_yield[i] for i in members]
        fl: dict[str, int] = {}
        for i in members:
            if flags[i] != "ok":
                fl[flags[i]] = fl.get(flags[i], 0) + 1
        nov = [novelty[pos[i]] for i in members if i in pos]
        return {"n": len(members), "ok": sum(1 for i in members if flags[i] == "ok"), "flags": fl,
                "near_dup": sum(1 for i in members if row_dup.get(i)),
                "novelty_mean": float(np.mean(nov)) if nov else None,
                "yield_sum": float(sum(ys)), "yield_sq": float(sum(y * y for y in ys)),
                "yield_mean": float(np.mean(ys)) if ys else 0.0}

    by_cell: dict[str, list[int]] = {}
    for i in latest:
        by_cell.setdefault(cells[i], []).append(i)
    totals: dict[str, int] = {}
    for c in cells:
        totals[c] = totals.get(c, 0) + 1
    cell_out: dict[str, Any] = {}
    for c in sorted(set(cells)):
        members = by_cell.get(c, [])
        d = summarize(members)
        in_cell = cell_arr == c if len(cell_arr) else np.zeros(0, dtype=bool)
        before = x[in_cell & (round_arr < round)] if len(cell_arr) else x[:0]
        after = x[in_cell] if len(cell_arr) else x[:0]
        d.update({"total": totals[c], "total_ok": int(in_cell.sum()),
                  "within_vendi_before": _vendi(before), "within_vendi": _vendi(after),
                  "within_mcd": _mcd(after)})
        cell_out[c] = d

    by: dict[str, dict[str, Any]] = {}
    for col in ("template", "model", "persona_ids"):
        if col not in frame.columns:
            continue
        vals = frame[col].to_list()
        groups: dict[str, list[int]] = {}
        for i in latest:
            keys = (vals[i] or ["(none)"])[:1] if col == "persona_ids" else [vals[i]]
            for k in keys:
                groups.setdefault(str(k), []).append(i)
        by["persona" if col == "persona_ids" else col] = {k: summarize(v) for k, v in sorted(groups.items())}

    flag_counts: dict[str, int] = {}
    for i in latest:
        flag_counts[flags[i]] = flag_counts.get(flags[i], 0) + 1
    return {"round": round, "metric": metric, "embedder": embedder, "cells": cell_out, "by": by,
            "flags": flag_counts, "scores": global_scores(texts, x, score, seed, embedder)}
