"""Feedback loop against uniform allocation at equal total budget, on the embedded model.

    SYNTHGEN_CACHE=/tmp/sgcache .venv/bin/python bench/feedback.py [--seeds 3] [--budget 72]

Each arm runs the same spec (specs/math_rounds.yaml) with the same seeds and the same budget:

- `uniform`: `allocator.rule: uniform` (cells by weight every round; no caps, no pool growth);
- `feedback`: the spec's allocator (UCB on yield, template mix by yield, saturation caps, pool growth
  on stall);
- `feedback-nogrow` (with --ablate): the allocator without pool growth, to separate re-allocation
  from growth.

`rounds.min_gain` stops a stalled uniform run, so the bench removes it from the uniform arm and
checks that every arm spends exactly the budget. The allocator decides on static-embedding novelty,
quality flags, MinHash near duplicates, within-cell static Vendi and static Vendi for stalls; the scores here are
held out from all of those:

- primary: Vendi on MiniLM embeddings (all-MiniLM-L6-v2, not the distilled static table) of the
  usable (`ok`, not refused) texts: the training set each arm actually delivers;
- secondary: distinct-2 on a token-budget-matched sample (lexical, embedding-free), and MiniLM Vendi
  on a document-budget-matched sample (the same number of usable texts in every run), so that an
  arm cannot win only by delivering more usable rows.

One vLLM engine serves every run (a shared backend), so the model loads once.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


ARMS = {
    "uniform": {"rounds.allocator.rule": "uniform", "rounds.min_gain": "null"},
    "feedback": {},
    "feedback-nogrow": {"rounds.allocator.grow_topics": "false", "rounds.allocator.grow_personas": "false",
                        "rounds.min_gain": "null"},
}


def held_out(texts: list[str], doc_budget: int, token_budget: int, seed: int) -> dict[str, float]:
    import numpy as np

    from scoring.embed import embed
    from scoring.metrics.base import sample_docs, sample_token_budget
    from scoring.metrics.lexical import distinct_n
    from scoring.metrics.semantic import vendi_score

    x = embed(texts, embedder="minilm")
    idx = sample_docs(len(texts), doc_budget, seed)
    return {"n_ok": len(texts), "vendi_minilm": vendi_score(x),
            "vendi_minilm_matched": vendi_score(x[np.asarray(idx)]),
            "distinct2_matched": distinct_n(sample_token_budget(texts, token_budget, seed), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "math_rounds.yaml"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=72)
    ap.add_argument("--max-tokens", type=int, default=None, help="override sampling.max_tokens (default: the spec's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra spec override for every arm, e.g. --set 'templates=[{template: math/word_problem}]'")
    ap.add_argument("--ablate", action="store_true", help="also run the allocator without pool growth")
    ap.add_argument("--out", default="/tmp/synthgen-bench-feedback")
    ap.add_argument("--fake", action="store_true", help="fake backend (control flow only, numbers meaningless)")
    ap.add_argument("--json", help="write the per-run numbers here")
    args = ap.parse_args(argv)

    import polars as pl

    from generator.core.backend import Borrowed
    from generator.engine.executors.local import LocalExecutor
    from generator.feedback.rounds import run_rounds
    from generator.config.spec import load_spec
    from generator.feedback.yields import row_flags

    if args.fake:
        from generator.engine.backends.fake import FakeBackend

        inner = FakeBackend(model="smollm2-135m")
        inner.load_seconds = 0.0
    else:
        from generator.engine.backends.vllm_offline import VLLMOfflineBackend

        inner = VLLMOfflineBackend("smollm2-135m", engine={"max_model_len": 2048})
    shared = Borrowed(inner)  # one engine for every run; executors never close it
    arms = ["uniform", "feedback"] + (["feedback-nogrow"] if args.ablate else [])
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    runs: list[dict] = []
    t_all = time.time()
    for s in range(args.seeds):
        for arm in arms:
            over = {"seed": str(100 + s), "rounds.budget": str(args.budget),
                    **dict(kv.split("=", 1) for kv in args.set), **ARMS[arm]}
            if args.max_tokens is not None:
                over["sampling.max_tokens"] = str(args.max_tokens)
            spec = load_spec(args.spec, over)
            t0 = time.time()
            res = run_rounds(spec, out=out / f"{arm}-s{s}", executor=LocalExecutor(backend_factory=lambda c, **_: shared))
            frame = pl.read_parquet(str(res.run_dir / "generations" / "*.parquet"))
            assert frame.height == args.budget, f"{arm} seed {s} spent {frame.height} != {args.budget}"
            flags = row_flags(frame)
            texts = [t for t, f in zip(frame["text"].to_list(), flags) if f == "ok"]
            by_tpl: dict[str, list[int]] = {}
            for t, f in zip(frame["template"].to_list(), flags):
                by_tpl.setdefault(t, [0, 0])
                by_tpl[t][0] += 1
                by_tpl[t][1] += f == "ok"
            rounds = json.loads((res.run_dir / "rounds" / f"round-{res.manifest['rounds']['finished']:03d}.json")
                                .read_text())
            runs.append({"arm": arm, "seed": 100 + s, "texts": texts, "seconds": time.time() - t0,
                         "cells": len(rounds["active"]), "tracked_static_vendi": rounds["tracked"],
                         "flags": {f: flags.count(f) for f in set(flags)}, "templates": by_tpl})
            mix = ", ".join(f"{t.split('/')[-1]} {ok}/{n}" for t, (n, ok) in sorted(by_tpl.items()))
            print(f"{arm:16s} seed {100 + s}: {len(texts)}/{frame.height} usable ({mix}), "
                  f"{len(rounds['active'])} cells, {time.time() - t0:.0f}s", flush=True)
    gen_seconds = time.time() - t_all
    doc_budget = min(len(r["texts"]) for r in runs)
    token_budget = min(sum(len(t.split()) for t in r["texts"]) for r in runs)
    for r in runs:
        r.update(held_out(r["texts"], doc_budget, token_budget, r["seed"]))
    keys = ["vendi_minilm", "vendi_minilm_matched", "distinct2_matched", "n_ok", "cells", "tracked_static_vendi"]
    print(f"\nbudget {args.budget} generations, max_tokens {spec.sampling.max_tokens}, {args.seeds} seeds; "
          f"matched samples: {doc_budget} docs / {token_budget} tokens; generation {gen_seconds:.0f}s")
    print(f"{'arm':16s} " + " ".join(f"{k:>24s}" for k in keys))
    summary = {}
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        cols = []
        summary[arm] = {}
        for k in keys:
            v = [float(r[k]) for r in rs]
            m, sd = statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
            summary[arm][k] = {"mean": m, "sd": sd, "values": v}
            cols.append(f"{m:10.3f} ± {sd:<6.3f} (sd)")
        print(f"{arm:16s} " + " ".join(f"{c:>24s}" for c in cols))
    def run_of(arm: str, s: int) -> dict:
        return [r for r in runs if r["arm"] == arm and r["seed"] == 100 + s][0]

    diffs = {k: [run_of("feedback", s)[k] - run_of("uniform", s)[k] for s in range(args.seeds)]
             for k in ("vendi_minilm", "vendi_minilm_matched", "distinct2_matched", "n_ok")}
    wins = sum(1 for d in diffs["vendi_minilm"] if d > 0)
    for k, d in diffs.items():
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        print(f"feedback - uniform, {k:22s}: " + "  ".join(f"{x:+.3f}" for x in d)
              + f"   mean {statistics.mean(d):+.3f} ± {sd:.3f} (sd)")
    print(f"feedback beats uniform on held-out MiniLM Vendi in {wins}/{args.seeds} seeds; "
          f"whole bench {time.time() - t_all:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "wins": wins, "diffs": diffs,
                                               "seconds": time.time() - t_all,
                                               "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs]},
                                              indent=2))
    inner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
