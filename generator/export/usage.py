"""What a run asked of its models: requests, cache hits, tokens, busy time and, where a model
declares a price, cost; per model, per stage and per session, summed over resumes; and per
server of a `backend: openai` fleet, for the latest session (from the manifest).

Two records of it are published into the run folder by every request cache, append-only
(`answers/*.parquet`, one file per flush; see `generator.engine.run_folder`):
- the usage ledger, in each file's metadata (written in the same file as the answers it counts,
  so a killed session is counted exactly up to its last published answer): model calls, errors,
  cache hits and tokens per session, model and stage, and each model's busy seconds;
- the answers themselves (one per request, retries included, replays not counted twice), keyed
  back to the plan by request id, which give the per-template split.
A run written before answers were published keeps both in `cache.sqlite`, read here as well.
A run folder without a ledger is counted from the answers; one without answers from the
generation rows, which carry each record's final attempt only. Cost is tokens x the model's
`price` (per million tokens) from the spec in `manifest.json`; it is never guessed: a model
without a price has no cost.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import polars as pl

from generator.core import storage
from generator.core.run_layout import (CACHE, generation_files, published_usage, read_answers, read_generation_files,
                                      read_manifest, read_plan)

GROUP_COLUMNS = ("stage", "template")  # grouped by, besides model, when the run has them
# reasoning_tokens: of completion_tokens, those spent reasoning (0 in ledgers written before it was counted)
COUNTS = ("requests", "cache_hits", "errors", "prompt_tokens", "completion_tokens", "reasoning_tokens")


def prices(manifest: dict) -> dict[str, dict | None]:
    models = (manifest.get("spec") or {}).get("models") or []
    return {m.get("name"): m.get("price") for m in models if isinstance(m, dict)}


def cost_of(prompt_tokens: int, completion_tokens: int, price: dict | None) -> float | None:
    if not price:
        return None
    return prompt_tokens / 1e6 * float(price["input_per_mtok"]) + completion_tokens / 1e6 * float(price["output_per_mtok"])


def _query(path: Any, sql: str, args: tuple = ()) -> list[tuple] | None:
    """Rows of a read-only query on an old-style `cache.sqlite` (None: none, or no such table)."""
    if storage.is_url(path) or not Path(path).exists():
        return None  # runs on URLs were never written with one
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error:
        return None
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def _record_id(request_id: str) -> str:
    """`rec#attempt` (one stage) or `rec/stage/attempt/sample#tries` (a pipeline) -> `rec`."""
    return request_id.split("/", 1)[0].rsplit("#", 1)[0] if "/" in request_id else request_id.rsplit("#", 1)[0]


_CALLS = {"id": pl.Utf8, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64}


def _cache_frame(run_dir: Any) -> pl.DataFrame | None:
    """One row per answer in the run folder (published files, and an old `cache.sqlite`), keyed by
    record id: (id, prompt_tokens, completion_tokens). None when there are none of either."""
    parts = []
    # SQLite reads the three fields out of each answer: the answers' texts never reach Python
    rows = _query(storage.join(run_dir, CACHE), "SELECT key, json_extract(value, '$.id'), "
                  "json_extract(value, '$.prompt_tokens'), json_extract(value, '$.completion_tokens') FROM results")
    if rows is not None:
        parts.append(pl.DataFrame([(k, str(rid or ""), int(p or 0), int(c or 0)) for k, rid, p, c in rows],
                                  schema={"key": pl.Utf8, **_CALLS}, orient="row"))
    published = read_answers(run_dir, ["key", "id", "prompt_tokens", "completion_tokens"])
    if published is not None:
        parts.append(published.select(pl.col("key").cast(pl.Utf8), *(pl.col(c).cast(t) for c, t in _CALLS.items())))
    if not parts:
        return None
    # an answer is published once per writer that paid for it; a replayed one is not published again
    frame = pl.concat(parts, how="vertical").unique("key", keep="first", maintain_order=True)
    ids = [_record_id(str(r or "")) for r in frame["id"].to_list()]
    return frame.select(pl.Series("id", ids, pl.Utf8), pl.col("prompt_tokens").fill_null(0),
                        pl.col("completion_tokens").fill_null(0))


def calls_frame(run_dir: Any) -> tuple[pl.DataFrame, str]:
    """One row per paid request with model and group columns; and where it came from."""
    plan = read_plan(run_dir, ["id", "model", *GROUP_COLUMNS])
    cached = _cache_frame(run_dir)
    if cached is not None and plan is not None and cached.height:
        keys = ["id", "model", *[c for c in GROUP_COLUMNS if c in plan.columns]]
        return cached.join(plan.select(keys), on="id", how="inner"), "cache"
    gens = read_generation_files(run_dir)
    if gens is None:
        return pl.DataFrame(schema={"model": pl.Utf8, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64}), "generations"
    keys = ["model", *[c for c in GROUP_COLUMNS if c in gens.columns]]
    return gens.select([*keys, pl.col("prompt_tokens").cast(pl.Int64).fill_null(0),
                        pl.col("completion_tokens").cast(pl.Int64).fill_null(0)]), "generations"


def _ledger_rows(run_dir: Any, session: str | None) -> tuple[list[tuple], list[tuple], dict[str, float]]:
    """Usage and busy rows, and each session's start: published files and an old `cache.sqlite`."""
    usage, busy, started = published_usage(run_dir, session)
    path = storage.join(run_dir, CACHE)
    where, args = (" WHERE session = ?", (session,)) if session else ("", ())
    usage += _query(path, f"SELECT session, model, stage, {', '.join(COUNTS[:-1])}, 0 FROM usage{where}", args) or []
    busy += _query(path, f"SELECT session, model, seconds, first_at, last_at FROM busy{where}", args) or []
    for sid, at in _query(path, f"SELECT session, started FROM sessions{where}", args) or []:
        started.setdefault(sid, at)
    return usage, busy, started


def ledger(run_dir: Any, session: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The usage ledger: (counts per session/model/stage, busy seconds per session/model), or None."""
    book = _ledger(run_dir, session)
    return None if book is None else book[:2]


def _ledger(run_dir: Any, session: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict] | None:
    usage, busy, started = _ledger_rows(run_dir, session)
    if not usage:
        return None
    width = 3 + len(COUNTS)  # a row written before reasoning tokens were counted has one count less
    usage = [tuple(r) + (0,) * (width - len(r)) for r in usage]
    counts = pl.DataFrame(usage, schema={"session": pl.Utf8, "model": pl.Utf8, "stage": pl.Utf8,
                                         **{c: pl.Int64 for c in COUNTS}}, orient="row")
    counts = counts.group_by(["session", "model", "stage"], maintain_order=True).agg(pl.col(c).sum() for c in COUNTS)
    spans = pl.DataFrame(busy or [], schema={"session": pl.Utf8, "model": pl.Utf8, "busy_s": pl.Float64,
                                             "first_at": pl.Float64, "last_at": pl.Float64}, orient="row")
    if spans.height:
        spans = spans.group_by(["session", "model"], maintain_order=True).agg(
            pl.col("busy_s").sum(), pl.col("first_at").min(), pl.col("last_at").max())
    return counts, spans, started


def _with_cost(r: dict, price: dict[str, dict | None]) -> dict:
    r = {k: (int(v) if k in COUNTS else v) for k, v in r.items()}
    r["cost"] = cost_of(r["prompt_tokens"], r["completion_tokens"], price.get(r["model"]))
    return r


def _sum_rows(frame: pl.DataFrame, keys: list[str], price: dict[str, dict | None]) -> list[dict]:
    if frame.is_empty():
        return []
    cols = [c for c in COUNTS if c in frame.columns]
    agg = frame.group_by(keys).agg([pl.col(c).sum() for c in cols]).sort(keys)
    return [_with_cost(r, price) for r in agg.iter_rows(named=True)]


def _models(counts: pl.DataFrame, spans: pl.DataFrame, price: dict[str, dict | None]) -> list[dict]:
    rows = _sum_rows(counts, ["model"], price)
    busy = dict(spans.group_by("model").agg(pl.col("busy_s").sum()).iter_rows()) if spans.height else {}
    for m in rows:
        m["price"] = price.get(m["model"])
        m["busy_s"] = round(float(busy.get(m["model"], 0.0)), 3)
        m["completion_tokens_per_s"] = round(m["completion_tokens"] / m["busy_s"], 2) if m["busy_s"] > 0 else None
    return rows


def _total(models: list[dict]) -> dict[str, Any]:
    total: dict[str, Any] = {c: sum(m.get(c, 0) for m in models) for c in COUNTS}
    costs = [m["cost"] for m in models]
    total["cost"] = sum(costs) if costs and all(c is not None for c in costs) else None
    return total


def _progress(run_dir: Any, total: dict, answered: set[str]) -> dict[str, Any] | None:
    """How far the run is, and its totals at this rate for the records still to come (None when
    every planned record is written). `answered`: ids of records with an answer in the cache."""
    plan = read_plan(run_dir, ["id", "shard"])
    if plan is None or plan.is_empty():
        return None
    written = set(storage.name_of(p) for p in generation_files(run_dir))
    pending = plan.filter(~pl.col("shard").is_in(list(written)))
    if pending.is_empty():
        return None
    started = answered & set(pending["id"].to_list())
    done = plan.height - pending.height + len(started)  # records written, or with an answer in the cache
    if done == 0:
        return {"planned": plan.height, "records_answered": 0, "projected": None}
    scale = plan.height / done
    projected = {c: round(total[c] * scale) for c in ("requests", "prompt_tokens", "completion_tokens")}
    projected["cost"] = total["cost"] * scale if total["cost"] is not None else None
    return {"planned": plan.height, "records_answered": done, "projected": projected}


def endpoints(manifest: dict) -> list[dict]:
    """Per server of each `backend: openai` model, as its backend described it at the end of the
    latest session (`manifest.json` -> models -> endpoints): requests sent, answers, errors,
    hedges sent to it and how many answered first, completion tokens and their rate over the endpoint's busy span, state."""
    rows = []
    for model, desc in (manifest.get("models") or {}).items():
        for e in (desc.get("endpoints") or []) if isinstance(desc, dict) else []:
            rows.append({"model": model, "url": e.get("url"), "requests": int(e.get("requests") or 0),
                         "answered": int(e.get("answered") or 0), "errors": int(e.get("errors") or 0),
                         "redispatched": int(e.get("redispatched") or 0), "hedges": int(e.get("hedges") or 0),
                         "hedges_won": int(e.get("hedges_won") or 0),
                         "completion_tokens": int(e.get("completion_tokens") or 0),
                         "busy_s": e.get("busy_s"), "completion_tokens_per_s": e.get("completion_tokens_per_s"),
                         "window": e.get("window"), "state": e.get("state")})
    return rows


def compute_usage(run_dir: Any, manifest: dict | None = None) -> dict[str, Any]:
    """Usage per model, per (model, stage or template) and per session, with the totals; while a
    run is unfinished, `progress` holds the totals projected to the whole plan at this rate.
    `manifest`: the run's, when it is newer than the one on disk (prices come from its spec)."""
    manifest = manifest if manifest is not None else read_manifest(run_dir)
    price = prices(manifest)
    calls, source = calls_frame(run_dir)
    book = _ledger(run_dir)
    by: dict[str, list[dict]] = {}
    sessions: list[dict] = []
    if book is not None:
        counts, spans, first = book
        source = "ledger"
        models = _models(counts, spans, price)
        by["stage"] = _sum_rows(counts, ["model", "stage"], price)
        for (sid,), part in counts.group_by(["session"]):
            ms = _models(part, spans.filter(pl.col("session") == sid), price)
            sessions.append({"session": sid, "started_at": first.get(sid), "models": ms, "total": _total(ms)})
        sessions.sort(key=lambda x: (x["started_at"] or 0, x["session"]))
    else:
        cnt = calls.with_columns(pl.lit(1, pl.Int64).alias("requests"))
        models = _sum_rows(cnt, ["model"], price)
        for m in models:
            m["price"] = price.get(m["model"])
        by.update({g: _sum_rows(cnt, ["model", g], price) for g in GROUP_COLUMNS if g in calls.columns})
    if "template" in calls.columns and source in ("ledger", "cache"):
        by["template"] = _sum_rows(calls.with_columns(pl.lit(1, pl.Int64).alias("requests")), ["model", "template"], price)
    total = _total(models)
    # the cached answers already read above say which records have started
    answered = set(calls["id"].to_list()) if "id" in calls.columns else set()
    return {"run": str(run_dir), "source": source, "models": models, "by": by, "sessions": sessions,
            "total": total, "progress": _progress(run_dir, total, answered), "endpoints": endpoints(manifest)}


def sessions_cost(run_dir: Any, price: dict[str, dict | None], but: str | None = None) -> float:
    """The cost of every session in the ledger except `but` (0 for models without a price)."""
    book = ledger(run_dir)
    if book is None:
        return 0.0
    counts = book[0].filter(pl.col("session") != but) if but else book[0]
    return sum(r["cost"] or 0.0 for r in _sum_rows(counts, ["model"], price))


def session_totals(run_dir: Any, session: str) -> dict[str, dict[str, int]]:
    """Per model, what one session has used so far (read while it runs: the ledger is live)."""
    book = ledger(run_dir, session)
    if book is None:
        return {}
    return {r["model"]: r for r in _sum_rows(book[0], ["model"], {})}


def usage_markdown(usage: dict) -> list[str]:
    """The usage section of a dataset card (markdown lines)."""
    if not usage["models"]:
        return ["No model calls recorded."]
    lines = ["| model | requests | prompt tokens | completion tokens | cost |", "|---|---:|---:|---:|---:|"]
    for m in usage["models"]:
        cost = money(m["cost"]) if m["cost"] is not None else "(no price)"
        lines.append(f"| {_md(m['model'])} | {m['requests']:,} | {m['prompt_tokens']:,} | "
                     f"{m['completion_tokens']:,} | {cost} |")
    note = {"ledger": "every model call, retries included, summed over the run's sessions (usage ledger)",
            "cache": "every request paid for, retries included (published answers)"}.get(
        usage["source"], "final attempts only (the run folder has no request cache)")
    lines += ["", f"Counted from: {note}. Cost is tokens x the price per million tokens declared in the "
              f"spec; models without a `price` show none."]
    return lines


def _md(text: Any) -> str:
    import html

    return html.escape(str(text), quote=False).replace("|", "\\|")


def money(cost: float | None) -> str:
    """A cost to show: cents for sums of a unit or more, six decimals below."""
    if cost is None:
        return "-"
    return f"{cost:,.2f}" if cost >= 1 else f"{cost:.6f}"
