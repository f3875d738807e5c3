"""Does a metric move the right way when a sample holds more distinct intents?

Samples of a fixed size (`size` texts) are drawn from a labelled corpus (CLINC150, Banking77) with
1, 2, 5, 10, 20, 50 distinct intents (equal shares per intent), `draws` times per level. For every
metric, the Spearman rank correlation between the number of intents and the mean score per level is
computed and signed by the metric's direction (+1 = moves towards "more diverse" perfectly).

    python -m scoring.validation [--embedders static,minilm] [--draws 3]   # prints markdown tables
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

LEVELS = (1, 2, 5, 10, 20, 50)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_labelled(name: str, data_dir: Path = DATA) -> tuple[list[str], list[str]]:
    if name == "clinc150":
        rows = json.loads((data_dir / "clinc150" / "data_full.json").read_text())["train"]
        return [r[0] for r in rows], [r[1] for r in rows]
    if name == "banking77":
        with open(data_dir / "banking77" / "train.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], [r["category"] for r in rows]
    raise ValueError(name)


def intent_sample(texts: Sequence[str], labels: Sequence[str], n_intents: int, size: int, seed: int) -> list[str]:
    """`size` texts from `n_intents` random intents with about equal shares (no repeated text)."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by.setdefault(y, []).append(i)
    per = -(-size // n_intents)
    eligible = sorted(y for y, ix in by.items() if len(ix) >= per)
    chosen = rng.choice(len(eligible), size=n_intents, replace=False)
    idx: list[int] = []
    for c in chosen:
        ix = by[eligible[c]]
        idx += list(rng.choice(ix, size=per, replace=False))
    idx = list(rng.permutation(idx)[:size])
    return [texts[i] for i in idx]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    def ranks(a):
        a = np.asarray(a, dtype=float)
        order = a.argsort(kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for v in np.unique(a):  # average ranks for ties
            m = a == v
            r[m] = r[m].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def intent_scores(dataset: str, metrics: Sequence[str], embedder: str = "static", size: int = 100,
                  draws: int = 3, levels: Sequence[int] = LEVELS, seed: int = 0) -> dict[str, np.ndarray]:
    """{metric: array (levels x draws)} of scores (details like distinct_1 are added as metrics)."""
    from scoring.metrics import score_texts

    texts, labels = load_labelled(dataset)
    out: dict[str, np.ndarray] = {}
    for li, k in enumerate(levels):
        for d in range(draws):
            sample = intent_sample(texts, labels, k, size, seed * 1000 + li * 100 + d)
            res = score_texts(sample, metrics, seed=seed, embedder=embedder)
            for name, r in res.items():
                vals = {name: r.value}
                if name in ("distinct_n", "ngram_entropy"):
                    vals.update({k2: v for k2, v in r.details.items() if isinstance(v, float)})
                for n2, v in vals.items():
                    out.setdefault(n2, np.zeros((len(levels), draws)))[li, d] = v
    return out


def direction(name: str) -> bool | None:
    from scoring.metrics import get

    base = name
    if name.startswith("distinct_"):
        base = "distinct_n"
    elif name.startswith("entropy_"):
        base = "ngram_entropy"
    return get(base).higher_is_diverse


def signed_correlations(scores: dict[str, np.ndarray], levels: Sequence[int] = LEVELS) -> dict[str, float]:
    """Spearman(levels, mean score per level), sign-flipped for lower-is-diverse metrics."""
    out = {}
    for name, a in scores.items():
        rho = spearman(levels, a.mean(1))
        d = direction(name)
        out[name] = rho if d is not False else -rho
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from scoring.metrics import DEFAULT_METRICS, EMBEDDING, get

    ap = argparse.ArgumentParser()
    ap.add_argument("--embedders", default="static,minilm")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--size", type=int, default=100)
    a = ap.parse_args(argv)
    embedders = a.embedders.split(",")
    lex = [m for m in DEFAULT_METRICS if get(m).kind != EMBEDDING]
    emb = [m for m in DEFAULT_METRICS if get(m).kind == EMBEDDING]
    for ds in ("clinc150", "banking77"):
        rows: dict[str, dict[str, float]] = {}
        raw: dict[str, dict[str, np.ndarray]] = {}
        s = intent_scores(ds, lex, size=a.size, draws=a.draws)
        for n, v in signed_correlations(s).items():
            rows.setdefault(n, {})["lexical"] = v
        for e in embedders:
            raw[e] = intent_scores(ds, emb, embedder=e, size=a.size, draws=a.draws)
            for n, v in signed_correlations(raw[e]).items():
                rows.setdefault(n, {})[e] = v
        print(f"\n### {ds} (size {a.size}, {a.draws} draws per level, levels {LEVELS})\n")
        cols = ["lexical"] + embedders
        print("| metric | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for n, r in rows.items():
            print(f"| {n} | " + " | ".join("" if c not in r else f"{r[c]:+.2f}" for c in cols) + " |")
        if "static" in raw and "minilm" in raw:
            print(f"\nstatic vs minilm, Spearman over the {len(LEVELS) * a.draws} samples' scores:")
            for n in raw["static"]:
                print(f"- {n}: {spearman(raw['static'][n].ravel(), raw['minilm'][n].ravel()):+.2f}")


if __name__ == "__main__":
    main()
