"""Embedding-based diversity metrics. Inputs are L2-normalized embeddings (cosine kernel).

- Vendi score (Friedman & Dieng 2023): exp(-sum l log l), l the eigenvalues of K/n, K = X X^T.
  When d < n the non-zero eigenvalues are those of X^T X / n (d x d, the dual form).
- mean pairwise cosine distance over i != j, from the norm of the summed rows: O(n d).
- k-means cluster entropy: H(p)/log k, p the cluster shares of a seeded k-means.
- DCScore (Zhu et al. 2025): trace of row-softmax(X X^T / tau), computed in row chunks.
- cluster_proxy: the cluster-agent protocol (N draws of K samples, D = mean C_i^2/K) with clusters
  from average-linkage on cosine distance instead of an LLM.
"""
from __future__ import annotations

import math

import numpy as np

from scoring.metrics.base import EMBEDDING, MetricResult, register


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def _entropy_exp(w: np.ndarray, q: float = 1.0) -> float:
    w = w[w > 0]
    if q == 1:
        return float(np.exp(-(w * np.log(w)).sum()))
    if math.isinf(q):
        return float(1.0 / w.max())
    return float((w ** q).sum() ** (1.0 / (1.0 - q)))


def vendi_score(x: np.ndarray, q: float = 1.0, normalize: bool = True) -> float:
    """Vendi score of embeddings `x` under the cosine kernel; dual form when d < n."""
    x = _unit(x) if normalize else np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n == 0:
        return 0.0
    if d < n:
        w = np.linalg.eigvalsh(x.T @ x / n)
    else:
        w = np.linalg.eigvalsh(x @ x.T / n)
    return _entropy_exp(np.clip(w, 0, None), q)


def vendi_score_K(K: np.ndarray, q: float = 1.0) -> float:
    n = K.shape[0]
    return _entropy_exp(np.clip(np.linalg.eigvalsh(K / n), 0, None), q)


@register("vendi", kind=EMBEDDING, higher_is_diverse=True)
def vendi_metric(texts, *, embeddings, seed=0, q: float = 1.0, **_) -> MetricResult:
    """Vendi score (effective number of distinct documents, cosine kernel)."""
    return MetricResult("vendi", vendi_score(embeddings, q), details={"q": q})


def mean_cosine_distance(x: np.ndarray) -> float:
    """Mean of 1 - cos(x_i, x_j) over ordered pairs i != j."""
    x = _unit(x)
    n = len(x)
    if n < 2:
        return 0.0
    s = x.sum(0)
    sum_off = float(s @ s) - float((x * x).sum())
    return 1.0 - sum_off / (n * (n - 1))


@register("mean_cosine_distance", kind=EMBEDDING, higher_is_diverse=True)
def mean_cosine_distance_metric(texts, *, embeddings, seed=0, **_) -> MetricResult:
    """Mean pairwise cosine distance, diagonal excluded."""
    return MetricResult("mean_cosine_distance", mean_cosine_distance(embeddings))


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0, iters: int = 50, n_init: int = 3) -> np.ndarray:
    """Seeded k-means (k-means++ init, Lloyd iterations), best of `n_init` by inertia. numpy only."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(1)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        c = [x[rng.integers(n)]]
        d2 = np.maximum(sq - 2 * x @ c[0] + c[0] @ c[0], 0)
        for _ in range(1, k):
            tot = d2.sum()
            i = rng.choice(n, p=d2 / tot) if tot > 0 else rng.integers(n)
            c.append(x[i])
            d2 = np.minimum(d2, np.maximum(sq - 2 * x @ x[i] + x[i] @ x[i], 0))
        cent = np.array(c)
        labels = np.full(n, -1)
        for _ in range(iters):
            dist = sq[:, None] - 2 * x @ cent.T + (cent * cent).sum(1)[None]
            new = dist.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                m = labels == j
                if m.any():
                    cent[j] = x[m].mean(0)
        inertia = float(np.maximum(dist[np.arange(n), labels], 0).sum())
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def cluster_entropy(labels: np.ndarray, k: int) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(k)) if k > 1 else 0.0


@register("kmeans_entropy", kind=EMBEDDING, higher_is_diverse=True)
def kmeans_entropy_metric(texts, *, embeddings, seed=0, k: int = 10, **_) -> MetricResult:
    """Normalized entropy H(p)/log k of seeded k-means cluster shares."""
    x = _unit(embeddings)
    if len(x) < 2:
        return MetricResult("kmeans_entropy", 0.0, details={"k": k})
    kk = min(k, len(x))
    labels = kmeans_labels(x, kk, seed)
    return MetricResult("kmeans_entropy", cluster_entropy(labels, kk),
                        details={"k": kk, "sizes": np.bincount(labels, minlength=kk).tolist()})


def dcscore(x: np.ndarray, tau: float = 1.0, chunk: int = 1024) -> float:
    """DCScore = trace(row-softmax(X X^T / tau)) with X row-normalized, in row chunks."""
    x = _unit(x).astype(np.float32)
    total = 0.0
    for s in range(0, len(x), chunk):
        logits = (x[s:s + chunk] @ x.T) / tau
        m = logits.max(1, keepdims=True)
        z = np.exp(logits - m).sum(1)
        diag = logits[np.arange(logits.shape[0]), np.arange(s, s + logits.shape[0])]
        total += float((np.exp(diag - m[:, 0]) / z).sum())
    return total


@register("dcscore", kind=EMBEDDING, higher_is_diverse=True)
def dcscore_metric(texts, *, embeddings, seed=0, tau: float = 1.0, **_) -> MetricResult:
    """DCScore: sum of each document's softmax probability of classifying itself (tau=1)."""
    return MetricResult("dcscore", dcscore(embeddings, tau), details={"tau": tau, "n": len(embeddings)})


# Cosine-distance cut per embedder: between the median same-intent and the median different-intent
# distance of CLINC150 pairs (static 0.35 / 0.61, minilm 0.49 / 0.93, hash 0.82 / 1.0).
PROXY_THRESHOLDS = {"static": 0.45, "minilm": 0.7, "hash": 0.9}


def proxy_clusters(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Average-linkage clusters with cosine distance below `threshold` (labels 1..C)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    if len(x) < 2:
        return np.ones(len(x), dtype=int)
    d = np.clip(pdist(_unit(x), "cosine"), 0, 2)
    return fcluster(linkage(d, "average"), t=threshold, criterion="distance")


@register("cluster_proxy", kind=EMBEDDING, higher_is_diverse=True)
def cluster_proxy_metric(texts, *, embeddings, seed=0, n_runs: int = 200, k: int = 10,
                         threshold: float | None = None, embedder: str = "static", **_) -> MetricResult:
    """Cluster-agent protocol without a judge: N draws of K texts, embedding clusters, D = mean C^2/K."""
    if threshold is None:
        threshold = PROXY_THRESHOLDS.get(embedder, 0.5)
    x = _unit(embeddings)
    n = len(x)
    if n < k:
        return MetricResult("cluster_proxy", float("nan"), details={"error": f"needs >= {k} texts"})
    rng = np.random.default_rng(seed)
    ds, cs = [], []
    for _ in range(n_runs):
        idx = rng.choice(n, size=k, replace=False)
        c = len(np.unique(proxy_clusters(x[idx], threshold)))
        cs.append(c)
        ds.append(c / (k / c))
    ds_a = np.array(ds, dtype=float)
    return MetricResult("cluster_proxy", float(ds_a.mean()),
                        float(ds_a.std(ddof=1) / math.sqrt(len(ds_a))) if len(ds_a) > 1 else None,
                        details={"k": k, "n_runs": n_runs, "threshold": threshold, "embedder": embedder,
                                 "mean_clusters": float(np.mean(cs))})
