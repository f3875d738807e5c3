"""A run folder in memory for the viewer: one polars frame, filtered and paged on the server.

Records are the rows of generations/*.parquet plus the planned rows not generated yet (status
`pending`). Columns the engine does not write (stage outputs, judge scores, `duplicate_of`, ...) are
kept and shown as they are.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from generator.core.benchmarks import count_hits
from generator.core.errors import RunFolderError
from generator.core.run_layout import (GENERATIONS, PLAN, SHARD_GLOB, read_generation_files,
                                         read_manifest, read_plan)
from generator.engine.run_folder import GENERATION_SCHEMA
from generator.export.provenance import decontamination_counts

# filter name -> column; a filter is offered when its column exists
FILTERS = {"template": "template", "topic": "topic_id", "persona": "persona_ids", "model": "model",
           "status": "status", "round": "round", "stage": "stage", "benchmark": "_benchmarks"}
# lineage shown in the record's header, in this order
LINEAGE = ("id", "round", "topic_id", "topic", "subtopic", "level", "keywords", "persona_ids", "companion_topics",
           "template", "template_hash", "template_vars", "model", "temperature", "top_p", "repetition_penalty",
           "max_tokens", "seed", "generation", "shard", "structured", "status", "finish_reason", "attempts",
           "prompt_tokens", "completion_tokens", "reasoning_tokens", "error", "duplicate_of")
# columns with their own place on the page (not repeated among the extra columns)
SHOWN = set(LINEAGE) | {"messages", "prompt", "completion", "text", "conversation", "tools", "reasoning"}
SNIPPET = 240


class RunError(ValueError):
    """The folder is not a run folder the viewer can read."""


def text_expr(df: pl.DataFrame) -> pl.Expr:
    """The record's training text, else its completion."""
    if "text" in df.columns and "completion" in df.columns:
        return (pl.when(pl.col("text").fill_null("") == "").then(pl.col("completion")).otherwise(pl.col("text")))
    col = "text" if "text" in df.columns else "completion"
    return pl.col(col) if col in df.columns else pl.lit("")


def _message(role: str) -> pl.Expr:
    """The content of the first message with `role` (null when there is none)."""
    return (pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == role)
                                         .struct.field("content")).list.first())


def load_run(run_dir: str | Path) -> pl.DataFrame:
    """Every record of a run folder, with helper columns `_row`, `_system`, `_user`, `_text`, `_q`."""
    run = Path(run_dir)
    gens, plan = read_generation_files(run), read_plan(run)
    if gens is None and plan is None:
        raise RunError(f"{run}: no {PLAN} or {GENERATIONS}/{SHARD_GLOB}")
    df = gens if gens is not None else pl.DataFrame()
    if plan is not None:
        pending = plan if df.is_empty() else plan.join(df.select("id"), on="id", how="anti")
        if pending.height:
            pending = pending.with_columns(pl.lit("pending").alias("status"))
            df = pending if df.is_empty() else pl.concat([df, pending], how="diagonal_relaxed")
    for col, dtype in GENERATION_SCHEMA.items():
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(col))
    df = df.sort(["round", "topic_id", "generation", "id"], nulls_last=True)
    df = df.with_columns(_message("system").alias("_system"), _message("user").alias("_user"),
                         text_expr(df).fill_null("").alias("_text"))
    df = df.with_columns(pl.concat_str([pl.col("_system"), pl.col("_user"), pl.col("completion"), pl.col("text"),
                                        pl.col("error"), pl.col("id")], separator="\n", ignore_nulls=True)
                         .str.to_lowercase().alias("_q"))
    if "contamination" in df.columns and df["contamination"].null_count() < df.height:
        df = df.with_columns(_benchmarks(df["contamination"]).alias("_benchmarks"))
    return df.with_row_index("_row")


def _benchmarks(contamination: pl.Series) -> pl.Series:
    """The benchmarks each row's decontamination hits name (the `benchmark` filter's values)."""
    hits = contamination.str.json_decode(pl.List(pl.Struct({"benchmark": pl.String})))
    return hits.list.eval(pl.element().struct.field("benchmark")).list.unique(maintain_order=True)


def decontamination(df: pl.DataFrame, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Hits per benchmark: the manifest's counts (what `synthgen report` and the card show) once the
    run has written them, else counted from the rows' `contamination` (a run still generating:
    `records`, `contaminated` and `rejected` are then unknown); None when nothing was checked."""
    counts = decontamination_counts(manifest)
    if counts is not None:
        return plain({**counts, "from": "manifest"})
    if "_benchmarks" not in df.columns:
        return None
    hits = count_hits(df["contamination"].drop_nulls().to_list())
    return {"benchmarks": hits["benchmarks"], "records": None, "contaminated": None, "rejected": None,
            "ngram": None, "action": None, "from": "rows"}


def facets(df: pl.DataFrame) -> dict[str, list[list[Any]]]:
    """For each filter whose column exists: its values with their record counts, most frequent first."""
    out = {}
    for name, col in FILTERS.items():
        if col not in df.columns or df[col].null_count() == df.height:
            continue
        s = df[col]
        if isinstance(s.dtype, pl.List):
            s = s.explode()
        counts = s.drop_nulls().value_counts(sort=True, name="n")
        out[name] = [[plain(v), n] for v, n in counts.iter_rows()]
    return out


def filter_expr(df: pl.DataFrame, params: dict[str, str]) -> pl.Expr:
    """The polars predicate for the exact filters and `dup` (the full-text `q` is applied after them)."""
    conds = [pl.lit(True)]
    for name, col in FILTERS.items():
        v = params.get(name)
        if v in (None, "") or col not in df.columns:
            continue
        dtype = df.schema[col]
        if isinstance(dtype, pl.List):
            conds.append(pl.col(col).list.contains(pl.lit(v)))
        elif dtype.is_integer():
            conds.append(pl.col(col) == _int(v))
        else:
            conds.append(pl.col(col) == v)
    dup = params.get("dup")
    if dup and "duplicate_of" in df.columns:
        conds.append(pl.col("duplicate_of").is_not_null() if dup == "only" else pl.col("duplicate_of").is_null())
    return pl.all_horizontal(conds)


def matching(df: pl.DataFrame, params: dict[str, str]) -> pl.DataFrame:
    """The records matching the query; the substring search runs on what the exact filters kept."""
    hit = df.filter(filter_expr(df, params))
    q = (params.get("q") or "").strip().lower()
    return hit.filter(pl.col("_q").str.contains(q, literal=True)) if q else hit


def _int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise RunError(f"expected a number, got {v!r}") from None


def query(df: pl.DataFrame, params: dict[str, str], page_size: int = 25) -> dict[str, Any]:
    """One page of the filtered records, as short rows for the list."""
    hit = matching(df, params)
    page = max(_int(params.get("page") or "1"), 1)
    size = min(max(_int(params.get("size") or str(page_size)), 1), 200)
    pages = max(math.ceil(hit.height / size), 1)
    rows = hit.slice((page - 1) * size, size)
    return {"total": hit.height, "page": page, "pages": pages, "size": size, "records": summaries(rows)}


def summaries(rows: pl.DataFrame) -> list[dict[str, Any]]:
    cols = ["id", "template", "topic_id", "persona_ids", "model", "status", "round"]
    if "duplicate_of" in rows.columns:
        cols.append("duplicate_of")
    if "stage" in rows.columns:
        cols.append("stage")
    out = []
    for r, snip in zip(rows.select(cols).iter_rows(named=True), rows["_text"].str.slice(0, SNIPPET).to_list()):
        r = {k: plain(v) for k, v in r.items()}
        r["snippet"] = snip
        out.append(r)
    return out


def record(df: pl.DataFrame, rid: str) -> dict[str, Any] | None:
    """Everything about one record: prompts, completion, text, lineage and any extra column."""
    hit = df.filter(pl.col("id") == rid)
    if hit.is_empty():
        return None
    if "final" in hit.columns:  # a pipeline record's last attempt, the one that decided it
        hit = hit.sort(pl.col("final").fill_null(False), descending=True)
    row = hit.row(0, named=True)
    extra = {k: plain(v) for k, v in row.items() if k not in SHOWN and not k.startswith("_")}
    return {"id": rid, "system": row["_system"], "user": row["_user"], "prompt": row.get("prompt"),
            "messages": plain(row.get("messages")), "completion": row.get("completion"), "text": row.get("text"),
            "reasoning": row.get("reasoning"),
            "lineage": {k: plain(row[k]) for k in LINEAGE if k in row},
            "conversation": _json(row.get("conversation")), "tools": _json(row.get("tools")),
            "extra": extra}


def _json(text: Any) -> Any:
    """A conversation or agent stage's JSON column (turns, tool calls), parsed; None when absent."""
    if not text:
        return None
    try:
        return plain(json.loads(text))
    except ValueError:
        return None


def plain(v: Any) -> Any:
    """A JSON-safe value (non-finite floats become null)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return json.loads(json.dumps(v, default=str))


def manifest(run_dir: str | Path) -> dict[str, Any]:
    """The run's manifest; {} when it is missing or unreadable (the viewer still shows the rows)."""
    try:
        return read_manifest(run_dir)
    except (OSError, RunFolderError):
        return {}
