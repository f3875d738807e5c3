"""Lexical diversity metrics, written from their definitions (whitespace tokens throughout).

References: distinct-n (Li et al. 2016, here distinct n-grams / all n-grams over the corpus);
compression ratio and self-repetition (Shaib et al. 2024, arXiv 2403.00553); self-BLEU
(Zhu et al. 2018) with BLEU-4 and Chen & Cherry's smoothing method 1 (epsilon 0.1).
"""
from __future__ import annotations

import gzip
import math
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from scoring.metrics.base import MetricResult, register


def ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)))


def _corpus_tokens(texts: Sequence[str]) -> list[list[str]]:
    return [t.split() for t in texts]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams, counted within documents over the whole corpus."""
    seen: set = set()
    total = 0
    for toks in _corpus_tokens(texts):
        grams = list(ngrams(toks, n))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


@register("distinct_n", higher_is_diverse=True)
def distinct_metric(texts, *, seed=0, max_n: int = 4) -> MetricResult:
    """Mean of distinct-1..4 (each in details)."""
    vals = {f"distinct_{n}": distinct_n(texts, n) for n in range(1, max_n + 1)}
    return MetricResult("distinct_n", float(np.mean(list(vals.values()))), details=vals)


def ngram_entropy(texts: Sequence[str], n: int) -> float:
    """Shannon entropy (bits) of the corpus n-gram distribution."""
    c: Counter = Counter()
    for toks in _corpus_tokens(texts):
        c.update(ngrams(toks, n))
    total = sum(c.values())
    if not total:
        return 0.0
    p = np.fromiter(c.values(), dtype=np.float64) / total
    return float(-(p * np.log2(p)).sum())


@register("ngram_entropy", higher_is_diverse=True)
def ngram_entropy_metric(texts, *, seed=0, max_n: int = 4) -> MetricResult:
    """Mean over n=1..4 of the n-gram entropy in bits (each in details)."""
    vals = {f"entropy_{n}": ngram_entropy(texts, n) for n in range(1, max_n + 1)}
    return MetricResult("ngram_entropy", float(np.mean(list(vals.values()))), details=vals)


def compression_ratio(texts: Sequence[str]) -> float:
    """bytes(' '.join(texts)) / bytes(gzip(...)), gzip level 9. Higher = more repetitive."""
    data = " ".join(texts).encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(gzip.compress(data, compresslevel=9, mtime=0))


@register("compression_ratio", higher_is_diverse=False)
def compression_ratio_metric(texts, *, seed=0) -> MetricResult:
    """gzip compression ratio of the space-joined texts (higher = more repetitive)."""
    data = " ".join(texts).encode("utf-8")
    return MetricResult("compression_ratio", compression_ratio(texts), details={"bytes": len(data)})


def self_repetition(texts: Sequence[str], n: int = 4) -> float:
    """Mean over docs of log(1 + sum over the doc's unique n-grams of their count in other docs).

    "Count in other docs" is the number of other documents containing the n-gram (each document
    contributes its set of n-grams), as in Shaib et al.'s reference implementation. O(tokens).
    """
    sets = [set(ngrams(toks, n)) for toks in _corpus_tokens(texts)]
    if not sets:
        return 0.0
    df: Counter = Counter()
    for s in sets:
        df.update(s)
    return float(np.mean([math.log1p(sum(df[g] for g in s) - len(s)) for s in sets]))


@register("self_repetition", higher_is_diverse=False)
def self_repetition_metric(texts, *, seed=0, n: int = 4) -> MetricResult:
    """Self-repetition of word 4-grams across documents (higher = more repetitive)."""
    return MetricResult("self_repetition", self_repetition(texts, n), details={"n": n})


def _max_ref_counts(counters: list[Counter]) -> dict:
    """n-gram -> ((best count, doc), second best count): max count over refs excluding any one doc."""
    best: dict = {}
    for d, c in enumerate(counters):
        for g, k in c.items():
            b = best.get(g)
            if b is None:
                best[g] = [k, d, 0]
            elif k > b[0]:
                b[2] = b[0]
                b[0], b[1] = k, d
            elif k > b[2]:
                b[2] = k
    return best


def self_bleu_scores(docs: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """BLEU-4 of each doc against all the others as references (uniform weights, smoothing method 1).

    Follows the usual sentence-BLEU definition: clipped n-gram precisions against the max count over
    references, brevity penalty against the closest reference length, a zero unigram match scores 0,
    and a zero higher-order match uses epsilon 0.1 / (number of hypothesis n-grams).
    """
    per_n = [[Counter(ngrams(d, n)) for d in docs] for n in range(1, max_n + 1)]
    best = [_max_ref_counts(c) for c in per_n]
    lens = np.array([len(d) for d in docs])
    scores = []
    for i, d in enumerate(docs):
        hyp_len = len(d)
        others = np.delete(lens, i)
        if hyp_len == 0 or len(others) == 0:
            scores.append(0.0)
            continue
        num_den = []
        for n in range(max_n):
            num = 0
            for g, k in per_n[n][i].items():
                b = best[n][g]
                ref = b[0] if b[1] != i else b[2]
                num += min(k, ref)
            den = max(1, hyp_len - n)
            num_den.append((num, den))
        if num_den[0][0] == 0:
            scores.append(0.0)
            continue
        closest = int(others[np.lexsort((others, np.abs(others - hyp_len)))[0]])
        bp = 1.0 if hyp_len > closest else math.exp(1 - closest / hyp_len)
        logp = 0.0
        for num, den in num_den:
            p = num / den if num else 0.1 / den
            logp += math.log(p) / max_n
        scores.append(bp * math.exp(logp))
    return scores


@register("self_bleu", higher_is_diverse=False)
def self_bleu_metric(texts, *, seed=0, sample: int = 100) -> MetricResult:
    """Mean self-BLEU-4 over a seeded sample of `sample` docs (higher = more homogeneous)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(texts), size=min(sample, len(texts)), replace=False) if texts else []
    docs = [texts[i].split() for i in idx]
    s = self_bleu_scores(docs)
    if not s:
        return MetricResult("self_bleu", 0.0)
    spread = float(np.std(s, ddof=1) / math.sqrt(len(s))) if len(s) > 1 else None
    return MetricResult("self_bleu", float(np.mean(s)), spread, details={"sample": len(s)})


@register("mean_length", higher_is_diverse=None)
def mean_length_metric(texts, *, seed=0) -> MetricResult:
    """Mean whitespace tokens per document (not a diversity direction; reported for context)."""
    lens = np.array([len(t.split()) for t in texts], dtype=float)
    if not len(lens):
        return MetricResult("mean_length", 0.0)
    return MetricResult("mean_length", float(lens.mean()),
                        float(lens.std(ddof=1) / math.sqrt(len(lens))) if len(lens) > 1 else None,
                        details={"total_tokens": int(lens.sum())})

