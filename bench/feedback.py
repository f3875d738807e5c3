"""Feedback loop against uniform allocation at equal total budget, on the embedded model.

    SYNTHGEN_CACHE=/tmp/sgcache .venv/bin/python bench/feedback.py [--seeds 5] [--budget 48]
    .venv/bin/python bench/feedback.py --value [--seeds 5] [--value-tokens 40000]   (no model: see value_run)

Each arm runs the same spec (specs/math_rounds.yaml) with the same seeds and the same budget:

- `uniform`: `allocator.rule: uniform` (cells by weight every round; no caps, no pool growth);
- `feedback`: the spec's allocator (UCB on yield, template mix by yield, saturation caps, pool growth
  on stall);
- `feedback-nogrow` (with --ablate): the allocator without pool growth, to separate re-allocation
  from growth.

`rounds.min_gain` stops a stalled uniform run, so the bench removes it from the uniform arm and
checks that every arm spends exactly the budget. The allocator decides on static-embedding novelty
and Vendi (a token table distilled from all-MiniLM-L6-v2), quality flags and MinHash near
duplicates. The scores are ranked by how far they are from that:

- held out (the allocator never computes them): lexical diversity of the usable (`ok`, not
  refused) texts on one fixed whitespace-token budget for every run (the smallest run's total, so
  an arm cannot win by delivering more text): distinct-1/2/3 and the gzip compression ratio, each
  the mean over `--draws` seeded samples of that budget;
- seen by the allocator, reported for completeness: the MinHash near-duplicate rate (Jaccard >= 0.8
  on word 5-grams; the allocator zeroes such rows in its yield) and Vendi on MiniLM embeddings
  (correlated with the static embedding the allocator uses, which is distilled from MiniLM);
- optional (`--judge-url`, a capable model behind an OpenAI-compatible server): the LLM
  cluster-agent score on the same number of usable texts per run, criteria generated once from all
  runs' texts and frozen.

The effect is the paired difference feedback - uniform per seed, reported as a mean with a 95%
t-interval and a 95% bootstrap percentile interval over seeds. One vLLM engine serves every run (a
shared backend), so the model loads once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe, machine  # noqa: E402
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


ARMS = {
    "uniform": {"rounds.allocator.rule": "uniform", "rounds.min_gain": "null"},
    "feedback": {},
    "feedback-nogrow": {"rounds.allocator.grow_topics": "false", "rounds.allocator.grow_personas": "false",
                        "rounds.min_gain": "null"},
}


def held_out(texts: list[str], token_budget: int, seed: int, draws: int) -> dict[str, float]:
    """Lexical diversity on a fixed token budget (mean over `draws` samples) and duplicate rates."""
    import statistics as st

    from scoring.metrics import find_duplicates
    from scoring.metrics.base import sample_token_budget
    from scoring.metrics.lexical import compression_ratio, distinct_n

    out: dict[str, list[float]] = {"distinct1": [], "distinct2": [], "distinct3": [], "compression": []}
    for d in range(draws):
        sample = sample_token_budget(texts, token_budget, seed * 1000 + d)
        for n in (1, 2, 3):
            out[f"distinct{n}"].append(distinct_n(sample, n))
        out["compression"].append(compression_ratio(sample))
    dups = find_duplicates(texts) if texts else []
    return {**{k: st.mean(v) for k, v in out.items()}, "n_ok": len(texts),
            "near_dup_rate": sum(x is not None for x in dups) / max(len(dups), 1)}


def minilm_vendi(texts: list[str], doc_budget: int, seed: int) -> dict[str, float]:
    import numpy as np

    from scoring.embed import embed
    from scoring.metrics.base import sample_docs
    from scoring.metrics.semantic import vendi_score

    x = embed(texts, embedder="minilm")
    return {"vendi_minilm": vendi_score(x),
            "vendi_minilm_matched": vendi_score(x[np.asarray(sample_docs(len(texts), doc_budget, seed))])}


def judge_scores(runs: list[dict], doc_budget: int, args) -> None:
    """Cluster-agent score per run through an OpenAI-compatible server; criteria frozen once."""
    import random

    from generator.engine.backends.openai_http import OpenAIBackend
    from scoring.cluster_agent import ClusterAgent, ClusterAgentConfig

    backend = OpenAIBackend(args.judge_model, args.judge_url, args.judge_key_env)
    try:
        agent = ClusterAgent(backend, ClusterAgentConfig())
        pool = [t for r in runs for t in r["texts"]]
        criteria = agent.generate_criteria(random.Random(0).sample(pool, min(len(pool), 200)))
        for r in runs:
            sample = random.Random(r["seed"]).sample(r["texts"], min(doc_budget, len(r["texts"])))
            res = agent.score(sample, criteria=criteria, keep_runs=False)
            r["cluster_agent"] = float("nan") if res.score is None or not res.signal else float(res.score)
    finally:
        backend.close()


def interval(d: list[float], seed: int = 0, resamples: int = 10000) -> dict[str, float]:
    """Mean of paired differences with a 95% t-interval and a 95% bootstrap percentile interval."""
    import numpy as np
    from scipy import stats

    a = np.asarray(d, dtype=float)
    n, m = len(a), float(a.mean())
    half = float(stats.t.ppf(0.975, n - 1) * a.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    boot = np.random.default_rng(seed).choice(a, size=(resamples, n), replace=True).mean(axis=1)
    return {"mean": m, "t_lo": m - half, "t_hi": m + half, "boot_lo": float(np.percentile(boot, 2.5)),
            "boot_hi": float(np.percentile(boot, 97.5)), "wins": int((a > 0).sum()), "n": n}


# (key, label, higher is more diverse, held out from the allocator)
METRICS = [("distinct2", "distinct-2 @budget", True, True), ("distinct3", "distinct-3 @budget", True, True),
           ("distinct1", "distinct-1 @budget", True, True), ("compression", "gzip ratio @budget", False, True),
           ("near_dup_rate", "MinHash near-dup rate", False, False),
           ("vendi_minilm_matched", "MiniLM Vendi, doc-matched", True, False),
           ("vendi_minilm", "MiniLM Vendi", True, False), ("n_ok", "usable rows", True, False),
           ("cluster_agent", "cluster-agent (judge)", True, True)]


def report(runs: list[dict], arms: list[str], seeds: int, budgets: str) -> dict:
    import statistics

    keys = [m for m in METRICS if all(m[0] in r for r in runs)]
    print(f"\n{budgets}\nmean ± sd over {seeds} seeds; held out = never computed by the allocator")
    print(f"{'metric':28s} {'held out':>8s} " + " ".join(f"{a:>18s}" for a in arms)
          + f" {'feedback - uniform [95% t]':>34s} {'[95% bootstrap]':>20s} {'wins':>5s}")
    summary: dict = {"arms": {}, "effects": {}}
    for key, label, higher, held in keys:
        cols = []
        for arm in arms:
            v = [float(r[key]) for r in runs if r["arm"] == arm]
            m, sd = statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
            summary["arms"].setdefault(arm, {})[key] = {"mean": m, "sd": sd, "values": v}
            cols.append(f"{m:9.3f} ± {sd:<6.3f}")
        by = {(r["arm"], r["seed"]): float(r[key]) for r in runs}
        d = [by[("feedback", s)] - by[("uniform", s)] for s in sorted({r["seed"] for r in runs})]
        e = interval(d)
        summary["effects"][key] = {**e, "diffs": d, "higher_is_diverse": higher, "held_out": held}
        wins = e["wins"] if higher else e["n"] - e["wins"] - sum(x == 0 for x in d)
        print(f"{label:28s} {'yes' if held else 'no':>8s} " + " ".join(f"{c:>18s}" for c in cols)
              + f" {e['mean']:+10.4f} [{e['t_lo']:+.4f}, {e['t_hi']:+.4f}]"
              + f" [{e['boot_lo']:+.4f}, {e['boot_hi']:+.4f}] {wins:>3d}/{e['n']}")
    print("wins: seeds where feedback is more diverse (for the gzip ratio and duplicates: lower)")
    return summary


def run_arms(args, arms: list[str]) -> list[dict]:
    """Every (seed, arm) run on one shared engine; returns each run's usable texts and counts."""
    import polars as pl

    from generator.config.spec import load_spec
    from generator.core.backend import Borrowed
    from generator.engine.executors.local import LocalExecutor
    from generator.feedback.rounds import run_rounds
    from generator.feedback.yields import row_flags

    if args.fake:
        from generator.testing.fake import FakeBackend

        inner = FakeBackend(model="smollm2-135m")
        inner.load_seconds = 0.0
    else:
        from generator.engine.backends.vllm_offline import VLLMOfflineBackend

        inner = VLLMOfflineBackend("smollm2-135m", engine={"max_model_len": 2048})
    shared = Borrowed(inner)  # one engine for every run; executors never close it
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    runs: list[dict] = []
    try:
        for s in range(args.seeds):
            for arm in arms:
                over = {"seed": str(100 + s), "rounds.budget": str(args.budget),
                        **dict(kv.split("=", 1) for kv in args.set), **ARMS[arm]}
                if args.max_tokens is not None:
                    over["sampling.max_tokens"] = str(args.max_tokens)
                spec = load_spec(args.spec, over)
                t0 = time.time()
                res = run_rounds(spec, out=out / f"{arm}-s{s}",
                                 executor=LocalExecutor(backend_factory=lambda c, **_: shared))
                frame = pl.read_parquet(str(res.run_dir / "generations" / "*.parquet"))
                assert frame.height == args.budget, f"{arm} seed {s} spent {frame.height} != {args.budget}"
                flags = row_flags(frame)
                texts = [t for t, f in zip(frame["text"].to_list(), flags) if f == "ok"]
                by_tpl: dict[str, list[int]] = {}
                for t, f in zip(frame["template"].to_list(), flags):
                    by_tpl.setdefault(t, [0, 0])
                    by_tpl[t][0] += 1
                    by_tpl[t][1] += f == "ok"
                last = res.manifest["rounds"]["finished"]
                rounds = json.loads((res.run_dir / "rounds" / f"round-{last:03d}.json").read_text())
                runs.append({"arm": arm, "seed": 100 + s, "texts": texts, "seconds": time.time() - t0,
                             "cells": len(rounds["active"]), "tracked_static_vendi": rounds["tracked"],
                             "max_tokens": spec.sampling.max_tokens,
                             "flags": {f: flags.count(f) for f in set(flags)}, "templates": by_tpl})
                mix = ", ".join(f"{t.split('/')[-1]} {ok}/{n}" for t, (n, ok) in sorted(by_tpl.items()))
                print(f"{arm:16s} seed {100 + s}: {len(texts)}/{frame.height} usable ({mix}), "
                      f"{len(rounds['active'])} cells, {time.time() - t0:.0f}s", flush=True)
    finally:
        inner.close()
    return runs


# ---------------------------------------------------------------- value per token (scripted backend)

VALUE_ARMS = {  # arm -> spec overrides; every arm runs to the same token budget
    "uniform": {"rounds.allocator.rule": "uniform"},
    "diversity": {"rounds.allocator.value": "per_generation"},
    "per-token": {"rounds.allocator.value": "per_token"},
}
TRUNCATED_WORDS = 200  # a truncated answer runs to max_tokens


def value_cells() -> list[dict]:
    """Eight cells, 2 x 2 x 2: acceptance 0.85 or 0.35 (the rest truncated at max_tokens), answers of
    30 or 120 words, and fresh text or one of two canned answers (near duplicates, no new diversity)."""
    return [{"name": f"cell-{i}", "accept": a, "words": w, "fresh": f}
            for i, (a, w, f) in enumerate((a, w, f) for a in (0.85, 0.35) for w in (30, 120) for f in (True, False))]


def value_spec(root: Path, seed: int, tokens_per_round: int, rounds: int, over: dict):
    """The bench spec: one free-text template over the eight inline cells, `rounds` rounds; the
    generation budget is twice what the token budget buys, so the token budget ends every arm."""
    from generator.config.spec import load_spec

    root.mkdir(parents=True, exist_ok=True)
    (root / "ask.j2").write_text("---\nname: ask\ndescription: bench\npurpose: general\nvariables: [topic]\n---\n"
                                  "Write a short note about {{ topic }}.\n")
    cells = value_cells()
    (root / "spec.yaml").write_text(json.dumps({
        "name": "value-bench", "seed": seed, "topics": [{"items": [c["name"] for c in cells]}],
        "templates": [{"template": str(root / "ask.j2")}], "models": [{"name": "scripted"}],
        "sampling": {"max_tokens": TRUNCATED_WORDS},
        "rounds": {"count": rounds, "budget": 2 * rounds * tokens_per_round // 100, "first_round_share": 1 / rounds,
                   "embedder": "hash", "allocator": {"grow_topics": False, "grow_personas": False}},
        "run": {"shard_size": 16}}))
    return load_spec(root / "spec.yaml", {"rounds.min_gain": "null", **over})


def value_responder(r) -> str:
    """The scripted model: each cell's acceptance, answer length and freshness (`value_cells`)."""
    import random as _random

    prompt = r.messages[-1]["content"]
    cell = next(c for c in value_cells() if c["name"] + "." in prompt)
    rng = _random.Random(r.sampling.seed)
    if rng.random() >= cell["accept"]:
        return " ".join(f"w{rng.randrange(5000)}" for _ in range(TRUNCATED_WORDS)) + "<truncated>"
    if not cell["fresh"]:
        canned = _random.Random(f"{cell['name']}-{rng.randrange(2)}")
        return " ".join(f"w{canned.randrange(5000)}" for _ in range(cell["words"]))
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(cell["words"]))


def value_run(args) -> int:
    """Accepted diverse records per 1,000 tokens for the uniform, diversity-only and per-token
    allocators at the same token budget (scripted backend: cells differ in acceptance, answer
    length and freshness), paired per seed."""
    import polars as pl

    from generator.config.target import BudgetConfig
    from generator.engine.executors.local import LocalExecutor
    from generator.feedback.rounds import run_rounds
    from generator.feedback.yields import row_flags
    from generator.testing.fake import FakeBackend
    from scoring.metrics import find_duplicates

    logging.getLogger("generator.runs.closeout").setLevel(logging.ERROR)  # every run has truncated rows by design
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    per_round = args.value_tokens // args.value_rounds
    runs: list[dict] = []
    t_all = time.time()
    for s in range(args.seeds):
        for arm, over in VALUE_ARMS.items():
            spec = value_spec(out / f"{arm}-s{s}" / "spec", 100 + s, per_round, args.value_rounds, over)
            fake = FakeBackend(model="scripted", responder=value_responder)
            fake.load_seconds = 0.0
            t0 = time.time()
            res = run_rounds(spec, out=out / f"{arm}-s{s}" / "run", budget=BudgetConfig(tokens=args.value_tokens),
                             executor=LocalExecutor(backend_factory=lambda c, **_: fake))
            df = pl.read_parquet(str(res.run_dir / "generations" / "*.parquet")).sort("round", "topic_id", "generation")
            ok = [t for t, f in zip(df["text"].to_list(), row_flags(df)) if f == "ok"]
            diverse = sum(d is None for d in find_duplicates(ok)) if ok else 0
            tokens = int((df["prompt_tokens"] + df["completion_tokens"]).sum())
            by_cell = dict(df.group_by("topic_id").len().iter_rows())
            runs.append({"arm": arm, "seed": 100 + s, "tokens": tokens, "records": df.height, "accepted": len(ok),
                         "diverse": diverse, "per_1k": 1000 * diverse / tokens, "cells": by_cell,
                         "rounds": res.manifest["rounds"]["finished"], "seconds": time.time() - t0})
            r = runs[-1]
            print(f"{arm:10s} seed {100 + s}: {r['diverse']} accepted diverse of {r['records']} records, "
                  f"{tokens} tokens, {r['per_1k']:.3f} per 1k tokens, {r['rounds']} rounds, "
                  f"{r['seconds']:.0f}s", flush=True)
    print(f"\nscripted backend, token budget {args.value_tokens} per run, {args.value_rounds} rounds planned, "
          f"{args.seeds} seeds; mean over seeds [95% t-interval]")
    keys = (("per_1k", "accepted diverse / 1k tokens"), ("diverse", "accepted diverse records"),
            ("accepted", "accepted records"), ("records", "records"), ("tokens", "tokens spent"))
    print(f"{'metric':30s} " + " ".join(f"{a:>24s}" for a in VALUE_ARMS))
    summary: dict = {"arms": {}, "effects": {}}
    for key, label in keys:
        cols = []
        for arm in VALUE_ARMS:
            e = interval([float(r[key]) for r in runs if r["arm"] == arm])
            summary["arms"].setdefault(arm, {})[key] = e
            nd = 3 if key == "per_1k" else 0
            cols.append(f"{e['mean']:.{nd}f} [{e['t_lo']:.{nd}f}, {e['t_hi']:.{nd}f}]")
        print(f"{label:30s} " + " ".join(f"{c:>24s}" for c in cols))
    print("records per cell (mean over seeds; acceptance / answer words / fresh or canned):")
    for c in value_cells():
        means = [statistics.mean(r["cells"].get(c["name"], 0) for r in runs if r["arm"] == arm) for arm in VALUE_ARMS]
        label = f"{c['name']} {c['accept']:.2f}/{c['words']}/{'fresh' if c['fresh'] else 'canned'}"
        print(f"  {label:28s} " + " ".join(f"{m:>24.1f}" for m in means))
    by = {(r["arm"], r["seed"]): r["per_1k"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    for base in ("uniform", "diversity"):
        d = [by[("per-token", s)] - by[(base, s)] for s in seeds]
        e = interval(d)
        summary["effects"][f"per-token - {base}"] = {**e, "diffs": d}
        print(f"per-token - {base:9s} (accepted diverse / 1k tokens): {e['mean']:+.4f} "
              f"[{e['t_lo']:+.4f}, {e['t_hi']:+.4f}], bootstrap [{e['boot_lo']:+.4f}, {e['boot_hi']:+.4f}], "
              f"ahead in {e['wins']}/{e['n']} seeds")
    print(f"whole value bench {time.time() - t_all:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "summary": summary,
                                               "cells": value_cells(), "runs": runs}, indent=2))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "math_rounds.yaml"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=48, help="generations per run (default 48)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override sampling.max_tokens (default: the spec's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra spec override for every arm, e.g. --set 'templates=[{template: math/word_problem}]'")
    ap.add_argument("--ablate", action="store_true", help="also run the allocator without pool growth")
    ap.add_argument("--draws", type=int, default=5, help="token-budget samples averaged per lexical score")
    ap.add_argument("--no-minilm", action="store_true", help="skip MiniLM Vendi (not held out; slow on CPU)")
    ap.add_argument("--judge-url", help="OpenAI-compatible server of a capable judge for the cluster-agent score")
    ap.add_argument("--judge-model", help="the judge's model name on that server")
    ap.add_argument("--judge-key-env", default=None, help="environment variable holding the judge's API key")
    ap.add_argument("--out", default="/tmp/synthgen-bench-feedback")
    ap.add_argument("--fake", action="store_true", help="fake backend (control flow only, numbers meaningless)")
    ap.add_argument("--json", help="write the per-run numbers here")
    ap.add_argument("--value", action="store_true", help="instead: value per token on the scripted backend "
                    "(uniform, diversity-only and per-token allocators at the same token budget; no model)")
    ap.add_argument("--value-tokens", type=int, default=40000, help="token budget per run with --value")
    ap.add_argument("--value-rounds", type=int, default=16, help="rounds planned per run with --value")
    args = ap.parse_args(argv)
    print(describe(), flush=True)
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 for an interval")
    if args.value:
        return value_run(args)
    if bool(args.judge_url) != bool(args.judge_model):
        ap.error("--judge-url and --judge-model go together")

    arms = ["uniform", "feedback"] + (["feedback-nogrow"] if args.ablate else [])
    t_all = time.time()
    runs = run_arms(args, arms)
    gen_seconds = time.time() - t_all
    doc_budget = min(len(r["texts"]) for r in runs)
    token_budget = min(sum(len(t.split()) for t in r["texts"]) for r in runs)
    for r in runs:
        r.update(held_out(r["texts"], token_budget, r["seed"], args.draws))
        if not args.no_minilm:
            r.update(minilm_vendi(r["texts"], doc_budget, r["seed"]))
    if args.judge_url:
        judge_scores(runs, doc_budget, args)
    budgets = (f"budget {args.budget} generations per run, max_tokens {runs[0]['max_tokens']}, {args.seeds} seeds; "
               f"fixed budgets: {token_budget} whitespace tokens (lexical, {args.draws} draws), {doc_budget} "
               f"documents (doc-matched); generation {gen_seconds:.0f}s")
    summary = report(runs, arms, args.seeds, budgets)
    print(f"whole bench {time.time() - t_all:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "args": vars(args), "summary": summary, "token_budget": token_budget, "doc_budget": doc_budget,
            "seconds": time.time() - t_all,
            "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
