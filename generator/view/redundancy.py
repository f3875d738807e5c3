"""Redundancy in a run: embeddings of the record texts, nearest neighbours, k-means clusters, and the
diversity scores of a run (for compare). Computed once per run in a background thread and cached.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

# cheap metrics for the compare view (no judge, no O(n^2) pairwise pass)
COMPARE_METRICS = ("distinct_n", "compression_ratio", "near_dup_rate", "vendi", "mean_cosine_distance",
                   "kmeans_entropy")
SCORE_SAMPLE = 2000  # documents scored per run, seeded, so compare answers in seconds on any run size
FIT_SAMPLE = 10000   # rows k-means is fitted on; every row is then assigned to its nearest centroid
WAIT = 20.0  # seconds a request waits for the embeddings before answering 503 (the page retries)


def _embed(texts: list[str], embedder: str) -> np.ndarray:
    from scoring.embed import embed

    return embed(texts, embedder=embedder)


class Embeddings:
    """Unit embeddings of every record with a non-empty text; started in a thread, waited on by readers."""

    def __init__(self, df: pl.DataFrame, embedder: str = "static", seed: int = 0):
        self.embedder = embedder
        self.seed = seed
        has = df.filter(pl.col("_text").str.len_chars() > 0)
        self.rows = has["_row"].to_numpy()
        self.ids = has["id"].to_list()
        self.texts = has["_text"].to_list()
        self.pos = {int(r): i for i, r in enumerate(self.rows)}
        self.matrix: np.ndarray | None = None
        self.error: str | None = None
        self._clusters: dict[str, Any] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._compute, name="view-embed", daemon=True).start()

    def _compute(self) -> None:
        try:
            if self.texts:
                # a child process: embedding holds the GIL for seconds to minutes, and the server's
                # threads must keep answering pages meanwhile
                import multiprocessing

                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    x = pool.apply(_embed, (self.texts, self.embedder))
            else:
                x = np.zeros((0, 1), np.float32)
            n = np.linalg.norm(x, axis=1, keepdims=True)
            self.matrix = (x / np.where(n > 0, n, 1)).astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - shown on the page instead of killing the server
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("the viewer's embeddings failed: %s", self.error)
        finally:
            self._done.set()

    def ready(self, timeout: float | None = None) -> np.ndarray:
        self._done.wait(timeout)
        if self.error:
            raise RuntimeError(f"embeddings unavailable ({self.error})")
        if self.matrix is None:
            raise TimeoutError(f"computing the embeddings of {len(self.texts)} texts; retrying")
        return self.matrix

    def neighbours(self, row: int, k: int = 10) -> list[tuple[int, float]]:
        """(row, cosine similarity) of the k records most similar to `row`, most similar first."""
        x = self.ready(timeout=WAIT)
        i = self.pos.get(int(row))
        if i is None or len(x) < 2:
            return []
        sims = x @ x[i]
        sims[i] = -np.inf
        k = min(k, len(x) - 1)
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(self.rows[j]), float(sims[j])) for j in top]

    def clusters(self, k: int | None = None) -> dict[str, Any]:
        """k-means on the embeddings: a label per embedded row and each cluster's most central rows."""
        with self._lock:
            if self._clusters is None:
                self._clusters = self._kmeans(k)
            return self._clusters

    def _kmeans(self, k: int | None) -> dict[str, Any]:
        from scoring.metrics.semantic import kmeans_labels

        x = self.ready(timeout=WAIT)
        n = len(x)
        if n < 2:
            return {"k": 0, "labels": np.zeros(n, dtype=int), "clusters": []}
        k = k or int(min(12, max(2, round(math.sqrt(n / 2)))))
        rng = np.random.default_rng(self.seed)
        fit = np.sort(rng.choice(n, size=FIT_SAMPLE, replace=False)) if n > FIT_SAMPLE else np.arange(n)
        lab = kmeans_labels(x[fit], k, seed=self.seed)
        cent = np.stack([x[fit][lab == j].mean(0) if (lab == j).any() else x[fit[0]] for j in range(k)])
        labels = (x @ cent.T).argmax(1)
        out = []
        for j in np.argsort(-np.bincount(labels, minlength=k)):
            members = np.flatnonzero(labels == j)
            if not len(members):
                continue
            c = cent[j] / (np.linalg.norm(cent[j]) or 1)
            sims = x[members] @ c
            central = members[np.argsort(-sims)[:3]]
            out.append({"cluster": int(j), "size": int(len(members)),
                        "cohesion": float(sims.mean()), "examples": [int(self.rows[i]) for i in central]})
        return {"k": k, "labels": labels, "clusters": out}


def run_scores(emb: Embeddings, df: pl.DataFrame, n_docs: int, token_budget: int | None,
               seed: int = 0) -> dict[str, Any]:
    """The run's diversity on `n_docs` seeded ok records (lexical metrics at `token_budget` tokens)."""
    from scoring.metrics import get, score_texts

    x = emb.ready(timeout=WAIT)
    idx = ok_sample(emb, df, n_docs, seed)
    texts = [emb.texts[i] for i in idx]
    if len(texts) < 2:
        return {"n_docs": len(texts), "metrics": {}}
    res = score_texts(texts, list(COMPARE_METRICS), seed=seed, token_budget=token_budget, embedder=emb.embedder,
                      embeddings=x[idx])
    return {"n_docs": len(texts), "token_budget": token_budget,
            "metrics": {k: {"value": v.value, "spread": v.spread, "higher_is_diverse": get(k).higher_is_diverse}
                        for k, v in res.items()}}


def ok_sample(emb: Embeddings, df: pl.DataFrame, n_docs: int, seed: int = 0) -> np.ndarray:
    """Positions (in `emb`) of up to `n_docs` seeded records with status ok."""
    ok = df.filter(pl.col("status") == "ok")["_row"].to_numpy() if "status" in df.columns else emb.rows
    idx = np.flatnonzero(np.isin(emb.rows, ok))
    if len(idx) > n_docs:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n_docs, replace=False))
    return idx


def ok_token_count(emb: Embeddings, df: pl.DataFrame, n_docs: int, seed: int = 0) -> int:
    """Whitespace tokens in the seeded ok sample (the common lexical budget is the smaller run's)."""
    return sum(len(emb.texts[i].split()) for i in ok_sample(emb, df, n_docs, seed))
