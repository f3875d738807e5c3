"""The metric interface, the registry and `score_texts`.

A metric takes `texts` (and optional `groups`, one label per text) and returns a `MetricResult`.
Metrics are registered by name so a spec or the CLI can pick them (`get(name)`, `available()`).

Budgets (why and how groups are compared):
- lexical metrics (distinct-n, entropy, compression, self-repetition, self-BLEU, duplicates) depend
  on text length and on corpus size, so each group is cut to the same number of whitespace tokens:
  documents are taken in a seeded random order until the budget is reached, the last one truncated.
  The default budget is the smallest group's token count; `token_budget` fixes it (and also applies
  to the overall value).
- embedding metrics (Vendi, DCScore, pairwise distance, k-means entropy, cluster proxy) depend on the
  number of documents, so each group is sampled (seeded) to the same number of documents: the smallest
  group's size by default, or `doc_budget`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

LEXICAL = "lexical"
EMBEDDING = "embedding"
JUDGE = "judge"


@dataclass
class MetricResult:
    name: str
    value: float
    spread: float | None = None  # std error (or std) where the metric samples, else None
    per_group: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating,)):
        x = float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def sample_token_budget(texts: Sequence[str], budget: int, seed: int = 0) -> list[str]:
    """Documents in a seeded random order until `budget` whitespace tokens; the last one truncated."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    used = 0
    for i in rng.permutation(len(texts)):
        toks = texts[i].split()
        if used + len(toks) > budget:
            rest = budget - used
            if rest > 0:
                out.append(" ".join(toks[:rest]))
            break
        out.append(texts[i])
        used += len(toks)
    return out


def sample_docs(n: int, budget: int, seed: int = 0) -> np.ndarray:
    """Indices of `budget` documents out of `n` (seeded, sorted); all of them if budget >= n."""
    if budget >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=budget, replace=False))


class Metric:
    """A named diversity metric. Subclasses or `FunctionMetric` implement `compute` on one text set."""

    name: str = ""
    kind: str = LEXICAL  # lexical | embedding | judge
    higher_is_diverse: bool | None = True  # None: not a diversity direction (e.g. mean length)
    description: str = ""

    def compute(self, texts: list[str], *, seed: int = 0, embeddings: np.ndarray | None = None,
                **opts: Any) -> MetricResult:
        raise NotImplementedError

    def __call__(self, texts: Sequence[str], groups: Sequence[str] | None = None, *, seed: int = 0,
                 token_budget: int | None = None, doc_budget: int | None = None,
                 embeddings: np.ndarray | None = None, embedder: str = "static",
                 **opts: Any) -> MetricResult:
        texts = list(texts)
        if groups is not None and len(groups) != len(texts):
            raise ValueError(f"groups has {len(groups)} labels for {len(texts)} texts")
        if self.kind == EMBEDDING and embeddings is None:
            from scoring.embed import embed
            embeddings = embed(texts, embedder=embedder)
        opts = dict(opts)
        if self.kind == EMBEDDING:
            opts["embeddings"] = embeddings
            opts.setdefault("embedder", embedder)
        overall = self._one(texts, np.arange(len(texts)), seed, token_budget, doc_budget, opts)
        if groups is None:
            return overall
        labels = [str(g) for g in groups]
        idx_by: dict[str, list[int]] = {}
        for i, g in enumerate(labels):
            idx_by.setdefault(g, []).append(i)
        if self.kind == LEXICAL:
            totals = {g: sum(len(texts[i].split()) for i in ix) for g, ix in idx_by.items()}
            budget = token_budget or min(totals.values())
            overall.details["group_token_budget"] = budget
        else:
            budget = doc_budget or min(len(ix) for ix in idx_by.values())
            overall.details["group_doc_budget"] = budget
        per_group: dict[str, float] = {}
        group_details: dict[str, Any] = {}
        for g, ix in sorted(idx_by.items()):
            if self.kind == LEXICAL:
                r = self._one(texts, np.asarray(ix), seed, budget, None, opts)
            else:
                r = self._one(texts, np.asarray(ix), seed, None, budget, opts)
            per_group[g] = r.value
            if r.spread is not None:
                group_details.setdefault("spread", {})[g] = r.spread
        overall.per_group = per_group
        if group_details:
            overall.details["per_group_spread"] = group_details["spread"]
        return overall

    def _one(self, texts: list[str], idx: np.ndarray, seed: int, token_budget: int | None,
             doc_budget: int | None, opts: dict[str, Any]) -> MetricResult:
        sub = [texts[i] for i in idx]
        o = dict(opts)
        if self.kind == LEXICAL:
            if token_budget:
                sub = sample_token_budget(sub, token_budget, seed)
        elif doc_budget:
            keep = sample_docs(len(sub), doc_budget, seed)
            sub = [sub[i] for i in keep]
            idx = idx[keep]
        if o.get("embeddings") is not None:
            o["embeddings"] = np.asarray(o["embeddings"])[idx]
        r = self.compute(sub, seed=seed, **o)
        r.name = self.name
        r.details.setdefault("n_docs", len(sub))
        return r


class FunctionMetric(Metric):
    def __init__(self, name: str, fn: Callable[..., MetricResult], kind: str = LEXICAL,
                 higher_is_diverse: bool | None = True, description: str = ""):
        self.name = name
        self.fn = fn
        self.kind = kind
        self.higher_is_diverse = higher_is_diverse
        self.description = description

    def compute(self, texts, *, seed=0, embeddings=None, **opts):
        if self.kind == EMBEDDING:
            return self.fn(texts, embeddings=embeddings, seed=seed, **opts)
        opts.pop("embeddings", None)
        return self.fn(texts, seed=seed, **opts)


_REGISTRY: dict[str, Metric] = {}


def register(name: str, *, kind: str = LEXICAL, higher_is_diverse: bool | None = True,
             description: str = "") -> Callable:
    """Decorator: register `fn(texts, *, seed, [embeddings], **opts) -> MetricResult` under `name`."""
    def deco(fn: Callable[..., MetricResult]) -> Callable[..., MetricResult]:
        _REGISTRY[name] = FunctionMetric(name, fn, kind, higher_is_diverse, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def register_metric(metric: Metric) -> Metric:
    _REGISTRY[metric.name] = metric
    return metric


def get(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(available())}") from None


def available(kind: str | None = None) -> list[str]:
    return sorted(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


DEFAULT_METRICS = [
    "distinct_n", "ngram_entropy", "compression_ratio", "self_repetition", "self_bleu", "mean_length",
    "exact_dup_rate", "near_dup_rate", "vendi", "mean_cosine_distance", "kmeans_entropy", "dcscore",
    "cluster_proxy",
]


def score_texts(texts: Sequence[str], metrics: Sequence[str] | None = None,
                groups: Sequence[str] | None = None, seed: int = 0, token_budget: int | None = None,
                *, doc_budget: int | None = None, embedder: str = "static",
                embeddings: np.ndarray | None = None, options: dict[str, dict] | None = None,
                ) -> dict[str, MetricResult]:
    """Score `texts` with each named metric. Embeddings are computed once and shared.

    `options` maps a metric name to extra keyword arguments (e.g. {"kmeans_entropy": {"k": 20}}).
    """
    texts = list(texts)
    names = list(metrics) if metrics else list(DEFAULT_METRICS)
    ms = [get(n) for n in names]
    if embeddings is None and any(m.kind == EMBEDDING for m in ms):
        from scoring.embed import embed
        embeddings = embed(texts, embedder=embedder)
    out: dict[str, MetricResult] = {}
    for m in ms:
        opts = dict((options or {}).get(m.name, {}))
        r = m(texts, groups, seed=seed, token_budget=token_budget, doc_budget=doc_budget,
              embeddings=embeddings if m.kind == EMBEDDING else None, embedder=embedder, **opts)
        if m.kind == EMBEDDING:
            r.details.setdefault("embedder", embedder)
        out[m.name] = r
    return out
