"""Throughput of each cheap diversity metric on 10,000 GSM8K texts (question + answer).

    python bench/score.py [--n 10000] [--minilm-sample 256]

GSM8K's train split has 7,473 rows; test rows are appended and, if still short, the texts are reused
with a numbered prefix (so exact duplicates do not appear). Prints per-metric seconds, all cheap
metrics together (static embedding included) against the 60 s target, and MiniLM's embedding time
on a subsample, extrapolated to N and labelled so.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402
DATA = ROOT.parent / "shared" / "data" / "gsm8k"
TARGET_S = 60.0


def load(n: int) -> list[str]:
    rows = []
    for split in ("train", "test"):
        p = DATA / f"{split}.jsonl"
        if p.exists():
            rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if not rows:
        sys.exit(f"no GSM8K data under {DATA}")
    base = [r["question"] + "\n" + r["answer"] for r in rows]
    out = list(base[:n])
    k = 1
    while len(out) < n:
        out += [f"({k}) {t}" for t in base[: n - len(out)]]
        k += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--minilm-sample", type=int, default=256)
    a = ap.parse_args()
    print(describe(), flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    from scoring.embed import static_table, embed
    from scoring.metrics import DEFAULT_METRICS, EMBEDDING, get

    texts = load(a.n)
    n_tok = sum(len(t.split()) for t in texts)
    reused = max(0, len(texts) - 8792)
    print(f"{len(texts)} GSM8K texts, {n_tok} whitespace tokens, "
          f"load average {os.getloadavg()[0]:.1f} (other jobs share these CPUs)")
    if reused:
        print(f"({reused} texts are GSM8K texts reused with a prefix: near_dup_rate counts them)")

    t0 = time.perf_counter()
    static_table()  # load (or distill once) the static table; not counted below
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = embed(texts, "static")
    t_emb = time.perf_counter() - t0
    rows = [("embed: static (256-d)", t_emb)]
    for name in DEFAULT_METRICS:
        m = get(name)
        t0 = time.perf_counter()
        r = m(texts, embeddings=emb if m.kind == EMBEDDING else None)
        rows.append((f"{name} = {r.value:.4g}", time.perf_counter() - t0))
    total = sum(s for _, s in rows)
    w = max(len(r[0]) for r in rows) + 2
    print(f"\n{'metric':<{w}} {'seconds':>8} {'texts/s':>10}")
    for label, s in rows:
        print(f"{label:<{w}} {s:8.2f} {len(texts) / s:10.0f}")
    print(f"{'ALL cheap metrics (static embedding incl.)':<{w}} {total:8.2f} {len(texts) / total:10.0f}"
          f"   target {TARGET_S:.0f} s: {'OK' if total <= TARGET_S else 'OVER'}")
    print(f"(static table load{'/distill' if t_load > 5 else ''}: {t_load:.1f} s, once per process)")

    sub = texts[: a.minilm_sample]
    embed(sub[:8], "minilm", cache=False)  # load the model
    t0 = time.perf_counter()
    embed(sub, "minilm", cache=False)
    s = time.perf_counter() - t0
    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    print(f"MiniLM (all-MiniLM-L6-v2) embedding: {len(sub)} texts in {s:.1f} s = {len(sub) / s:.0f} texts/s; "
          f"EXTRAPOLATED to {len(texts)} texts: {s * len(texts) / len(sub):.0f} s")


if __name__ == "__main__":
    main()
