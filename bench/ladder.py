"""The paper's template ladder: diversity by template rung, on the same topic cells.

    SYNTHGEN_CACHE=/tmp/sgcache .venv/bin/python bench/ladder.py --records 24
    .venv/bin/python bench/ladder.py --model smollm2-135m --model Qwen/Qwen2.5-1.5B-Instruct --records 64

Runs the four `specs/ladder_*.yaml` (Topic, Topic Styles, Topic Styles Persona, Multi-Topic
Styles Persona; same seed, same topic sample) with the first N planned records of each, so every
rung covers the same topic cells, for each model given (`--model`, repeatable; default the
embedded model). One engine per model serves all four rungs. The usable (`ok`) texts of the
rungs are then scored together with `scoring.compare`, as `synthgen compare` does: embedding
metrics (cluster proxy, Vendi) on the same number of documents per rung, lexical ones
(distinct-n, compression ratio) on the same token budget. Prints one table per model in the
paper's form (rows: template rung; columns: diversity metrics, with the usable count) and draws
each metric against the rung (`--png`, default docs/ladder.png).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe, machine  # noqa: E402
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNGS = [("Topic", "ladder_topic"), ("+Style", "ladder_topic_style"),
         ("+Persona", "ladder_topic_style_persona"), ("Multi-topic", "ladder_multi_topic_style_persona")]
METRICS = ["cluster_proxy", "vendi", "distinct_n", "compression_ratio"]
STATUSES = ("ok", "truncated", "invalid_json", "empty", "error")


def run_rungs(model: str, records: int, out: Path, max_tokens: int | None) -> list[dict]:
    """Generate every rung with one engine; returns per-rung run folders, statuses and times."""
    import polars as pl

    from generator.config.spec import load_spec
    from generator.core.backend import Borrowed
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec

    inner = VLLMOfflineBackend(model, engine={"max_model_len": 2048})
    shared = Borrowed(inner)  # one engine for the four rungs; the executors never close it
    rows = []
    try:
        for label, name in RUNGS:
            over = {"models": f"[{{name: '{model}'}}]"}
            if max_tokens is not None:
                over["sampling.max_tokens"] = str(max_tokens)
            spec = load_spec(ROOT / "specs" / f"{name}.yaml", over)
            t0 = time.time()
            res = run_spec(spec, out=out / name, limit=records, score=False,
                           executor=LocalExecutor(backend_factory=lambda c, **_: shared))
            frame = pl.read_parquet(str(res.run_dir / "generations" / "*.parquet"))
            st = frame["status"].to_list()
            rows.append({"rung": label, "spec": name, "run_dir": str(res.run_dir), "n": frame.height,
                         "statuses": {s: st.count(s) for s in STATUSES},
                         "topic_cells": frame["topic_id"].n_unique(), "seconds": time.time() - t0,
                         "completion_tokens": int(frame["completion_tokens"].fill_null(0).sum())})
            r = rows[-1]
            print(f"{model} {label:12s} {r['statuses']['ok']}/{r['n']} usable "
                  f"({', '.join(f'{k} {v}' for k, v in r['statuses'].items() if v)}), "
                  f"{r['topic_cells']} cells, {r['seconds']:.0f}s", flush=True)
    finally:
        inner.close()
    return rows


def score_rungs(rows: list[dict], embedder: str, seed: int) -> dict:
    from scoring import compare

    usable = [r for r in rows if r["statuses"]["ok"] >= 2]
    if len(usable) < 2:
        return {"error": "fewer than two rungs with two usable texts"}
    return compare([r["run_dir"] for r in usable], metrics=METRICS, embedder=embedder, seed=seed)


def _value(cmp: dict, run_dir: str, metric: str) -> tuple[float | None, float | None]:
    for row in cmp.get("table", []):
        if row["metric"] == metric:
            return row["values"].get(run_dir), row["spreads"].get(run_dir)
    return None, None


def print_table(model: str, rows: list[dict], cmp: dict) -> None:
    heads = ["usable"] + [f"{m} ({'+' if m != 'compression_ratio' else '-'})" for m in METRICS]
    print(f"\nDiversity by template rung, {model} ({cmp.get('n_docs', 0)} documents per rung for embedding "
          f"metrics, {cmp.get('token_budget', 0)} tokens for lexical ones; embedder {cmp.get('embedder')}; "
          f"+ higher is more diverse, - lower is)")
    print(f"{'rung':12s} " + " ".join(f"{h:>24s}" for h in heads))
    for r in rows:
        cells = [f"{r['statuses']['ok']}/{r['n']}"]
        for m in METRICS:
            v, s = _value(cmp, r["run_dir"], m)
            cells.append("n/a" if v is None else f"{v:.3f}" + (f" ± {s:.3f}" if s is not None else ""))
        print(f"{r['rung']:12s} " + " ".join(f"{c:>24s}" for c in cells))


def plot(results: dict[str, tuple[list[dict], dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    labels = [label for label, _ in RUNGS]
    for ax, m in zip(axes, METRICS):
        for model, (rows, cmp) in results.items():
            vals = [_value(cmp, r["run_dir"], m) for r in rows]
            xs = [i for i, (v, _) in enumerate(vals) if v is not None]
            ax.errorbar(xs, [vals[i][0] for i in xs], yerr=[vals[i][1] or 0 for i in xs], marker="o",
                        capsize=3, label=model)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_title(m + (" (lower = more diverse)" if m == "compression_ratio" else ""), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Diversity by template rung (same topic cells)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=[], help="model name or path (repeatable; default smollm2-135m)")
    ap.add_argument("--records", type=int, default=32, help="records per rung: the first N planned (default 32)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override sampling.max_tokens (default: the specs')")
    ap.add_argument("--embedder", default="minilm", choices=["static", "minilm"], help="embeddings for Vendi and the cluster proxy")
    ap.add_argument("--seed", type=int, default=0, help="scoring seed")
    ap.add_argument("--out", default="/tmp/synthgen-bench-ladder")
    ap.add_argument("--resume", action="store_true",
                    help="keep the run folders under --out and continue them (finished shards and cached answers are reused)")
    ap.add_argument("--png", default=str(ROOT / "docs" / "ladder.png"))
    ap.add_argument("--json", help="write the statuses and scores here")
    args = ap.parse_args(argv)
    print(describe(), flush=True)
    models = args.model or ["smollm2-135m"]
    out = Path(args.out)
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    results = {}
    for model in models:
        rows = run_rungs(model, args.records, out / model.replace("/", "--"), args.max_tokens)
        cmp = score_rungs(rows, args.embedder, args.seed)
        results[model] = (rows, cmp)
    for model, (rows, cmp) in results.items():
        print_table(model, rows, cmp)
    plot(results, Path(args.png))
    print(f"\nplot: {args.png}; whole bench {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "seconds": time.time() - t0, "models": {
            m: {"rungs": rows, "compare": {k: v for k, v in cmp.items() if k != "datasets"}}
            for m, (rows, cmp) in results.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
