"""What a run asked of its models: requests, tokens and, where a model declares a price, cost.

Every answer a run paid for is in its request cache (`cache.sqlite`, one entry per request,
retries included, replays not counted twice), keyed back to the plan by the request id
`<record id>#<attempt>`. A run folder without a cache falls back to the generation rows, which
carry the tokens of each record's final attempt only. Cost is tokens x the model's
`price` (per million tokens) from the spec in `manifest.json`; it is never guessed: a model
without a price has no cost.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl

from generator.core.run_layout import CACHE, read_generation_files, read_manifest, read_plan

GROUP_COLUMNS = ("stage", "template")  # grouped by, besides model, when the run has them


def prices(manifest: dict) -> dict[str, dict | None]:
    models = (manifest.get("spec") or {}).get("models") or []
    return {m.get("name"): m.get("price") for m in models if isinstance(m, dict)}


def cost_of(prompt_tokens: int, completion_tokens: int, price: dict | None) -> float | None:
    if not price:
        return None
    return prompt_tokens / 1e6 * float(price["input_per_mtok"]) + completion_tokens / 1e6 * float(price["output_per_mtok"])


def _cache_frame(path: Path) -> pl.DataFrame | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=60)
    try:
        rows = conn.execute("SELECT value FROM results").fetchall()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    recs = []
    for (value,) in rows:
        v = json.loads(value)
        rid = str(v.get("id") or "")
        recs.append({"id": rid.rsplit("#", 1)[0], "prompt_tokens": int(v.get("prompt_tokens") or 0),
                     "completion_tokens": int(v.get("completion_tokens") or 0)})
    return pl.DataFrame(recs, schema={"id": pl.Utf8, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64})


def calls_frame(run_dir: str | Path) -> tuple[pl.DataFrame, str]:
    """One row per paid request with model and group columns; and where it came from."""
    plan = read_plan(run_dir)
    cached = _cache_frame(Path(run_dir) / CACHE)
    if cached is not None and plan is not None and cached.height:
        keys = ["id", "model", *[c for c in GROUP_COLUMNS if c in plan.columns]]
        return cached.join(plan.select(keys), on="id", how="inner"), "cache"
    gens = read_generation_files(run_dir)
    if gens is None:
        return pl.DataFrame(schema={"model": pl.Utf8, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64}), "generations"
    keys = ["model", *[c for c in GROUP_COLUMNS if c in gens.columns]]
    return gens.select([*keys, pl.col("prompt_tokens").cast(pl.Int64).fill_null(0),
                        pl.col("completion_tokens").cast(pl.Int64).fill_null(0)]), "generations"


def compute_usage(run_dir: str | Path) -> dict[str, Any]:
    """Per model (and per model and group column): requests, prompt and completion tokens, cost."""
    manifest = read_manifest(run_dir)
    price = prices(manifest)
    calls, source = calls_frame(run_dir)
    groups = [c for c in GROUP_COLUMNS if c in calls.columns]

    def rows(keys: list[str]) -> list[dict]:
        if calls.is_empty():
            return []
        agg = (calls.group_by(keys).agg(pl.len().alias("requests"), pl.col("prompt_tokens").sum(),
                                        pl.col("completion_tokens").sum()).sort(keys))
        out = []
        for r in agg.iter_rows(named=True):
            r = {k: (int(v) if k in ("requests", "prompt_tokens", "completion_tokens") else v) for k, v in r.items()}
            r["cost"] = cost_of(r["prompt_tokens"], r["completion_tokens"], price.get(r["model"]))
            out.append(r)
        return out

    models = rows(["model"])
    for m in models:
        m["price"] = price.get(m["model"])
    total = {"requests": sum(m["requests"] for m in models),
             "prompt_tokens": sum(m["prompt_tokens"] for m in models),
             "completion_tokens": sum(m["completion_tokens"] for m in models)}
    costs = [m["cost"] for m in models]
    total["cost"] = sum(costs) if costs and all(c is not None for c in costs) else None
    return {"run": str(run_dir), "source": source, "models": models,
            "by": {g: rows(["model", g]) for g in groups}, "total": total}


def usage_markdown(usage: dict) -> list[str]:
    """The usage section of a dataset card (markdown lines)."""
    if not usage["models"]:
        return ["No model calls recorded."]
    lines = ["| model | requests | prompt tokens | completion tokens | cost |", "|---|---:|---:|---:|---:|"]
    for m in usage["models"]:
        cost = money(m["cost"]) if m["cost"] is not None else "(no price)"
        lines.append(f"| {_md(m['model'])} | {m['requests']:,} | {m['prompt_tokens']:,} | "
                     f"{m['completion_tokens']:,} | {cost} |")
    note = ("every request paid for, retries included (request cache)" if usage["source"] == "cache"
            else "final attempts only (the run folder has no request cache)")
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
