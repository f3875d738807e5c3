"""Texts to look at in a report: a few examples per group and the most similar pairs of documents."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CHARS = 600  # longer texts are cut (the report says so) to keep the page readable


def _cut(text: str, chars: int = CHARS) -> str:
    return text if len(text) <= chars else text[:chars] + " […]"


def examples_by_group(texts: Sequence[str], groups: Sequence[str] | None, per_group: int = 3,
                      max_groups: int = 40, seed: int = 0) -> dict[str, list[str]]:
    """Up to `per_group` seeded texts of each group (the largest `max_groups` groups); `all` without groups."""
    labels = list(groups) if groups is not None else ["all"] * len(texts)
    idx_by: dict[str, list[int]] = {}
    for i, g in enumerate(labels):
        if texts[i].strip():
            idx_by.setdefault(str(g), []).append(i)
    rng = np.random.default_rng(seed)
    keep = sorted(idx_by, key=lambda g: (-len(idx_by[g]), g))[:max_groups]
    n = per_group if groups is not None else max(per_group, 5)
    out = {}
    for g in sorted(keep):
        ix = idx_by[g]
        pick = sorted(rng.choice(len(ix), size=min(n, len(ix)), replace=False).tolist())
        out[g] = [_cut(texts[ix[j]]) for j in pick]
    return out


def similar_pairs(embeddings: np.ndarray, texts: Sequence[str], groups: Sequence[str] | None = None,
                  top: int = 8, max_docs: int = 3000, seed: int = 0) -> list[dict[str, Any]]:
    """The `top` most cosine-similar pairs of different texts (on a seeded sample of `max_docs`).

    Exact copies are left out (the duplicate-rate metrics count them): each text is kept once."""
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t.strip(), i)
    keep = np.array(sorted(first.values()), dtype=int)
    if len(keep) < 2:
        return []
    if len(keep) > max_docs:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_docs, replace=False))
    x = np.asarray(embeddings, dtype=np.float32)[keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    best: list[tuple[float, int, int]] = []
    for s in range(0, len(x), 512):  # row blocks: the full n x n matrix is never held
        sims = x[s:s + 512] @ x.T
        rows = np.arange(sims.shape[0])
        sims[np.arange(len(x))[None, :] <= (rows + s)[:, None]] = -np.inf  # each pair once, never a text with itself
        flat = np.argpartition(-sims.ravel(), min(top, sims.size) - 1)[:top]
        best += [(float(sims.flat[f]), s + f // len(x), f % len(x)) for f in flat if np.isfinite(sims.flat[f])]
        best = sorted(best, reverse=True)[:top]
    out = []
    for sim, i, j in best:
        a, b = int(keep[i]), int(keep[j])
        out.append({"similarity": round(sim, 4), "a": _cut(texts[a]), "b": _cut(texts[b]),
                    "group_a": None if groups is None else str(groups[a]),
                    "group_b": None if groups is None else str(groups[b])})
    return out
