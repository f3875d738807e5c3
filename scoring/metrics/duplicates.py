"""Exact and near-duplicate detection (MinHash-LSH over word 5-gram shingles) and duplicate rates.

- exact duplicates: texts equal after lowercasing and collapsing whitespace;
- near duplicates: datasketch MinHash (128 permutations) of the set of word 5-grams (a text shorter
  than 5 words is one shingle), MinHashLSH candidates at `threshold`, each candidate pair confirmed by
  the estimated Jaccard >= threshold, then union-find;
- rate = 1 - clusters / docs.
"""
from __future__ import annotations

import hashlib
import re
import struct
from typing import Sequence

import numpy as np

from scoring.metrics.base import MetricResult, register

_WS = re.compile(r"\s+")
NUM_PERM = 128


def normalize(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index stays the root: the earliest text represents its cluster
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def _shingles(text: str, n: int = 5) -> list[bytes]:
    toks = normalize(text).split()
    if len(toks) < n:
        return [" ".join(toks).encode("utf-8")]
    return list({" ".join(toks[i:i + n]).encode("utf-8") for i in range(len(toks) - n + 1)})


def _hash32(b: bytes) -> int:
    return struct.unpack("<I", hashlib.sha1(b).digest()[:4])[0]


def minhashes(texts: Sequence[str], num_perm: int = NUM_PERM, seed: int = 1, shingle: int = 5):
    from datasketch import MinHash

    return MinHash.bulk([_shingles(t, shingle) for t in texts], num_perm=num_perm, seed=seed,
                        hashfunc=_hash32)


def exact_duplicates(texts: Sequence[str]) -> list[int | None]:
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, t in enumerate(texts):
        k = normalize(t)
        j = first.setdefault(k, i)
        out.append(None if j == i else j)
    return out


def _near_union(texts: Sequence[str], threshold: float, uf: UnionFind, num_perm: int = NUM_PERM) -> None:
    from datasketch import MinHashLSH

    if len(texts) < 2:
        return
    hs = minhashes(texts, num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, h in enumerate(hs):
        for j in lsh.query(h):
            j = int(j)
            if uf.find(i) != uf.find(j) and h.jaccard(hs[j]) >= threshold:
                uf.union(i, j)
        lsh.insert(i, h)


def find_duplicates(texts: Sequence[str], threshold: float = 0.8, near: bool = True) -> list[int | None]:
    """For each text, the index of the earlier text it duplicates (exact or near), or None.

    A duplicate points at the earliest text of its cluster (union-find root), so chains of near
    duplicates all point to the same kept text.
    """
    n = len(texts)
    uf = UnionFind(n)
    for i, j in enumerate(exact_duplicates(texts)):
        if j is not None:
            uf.union(i, j)
    if near:
        _near_union(texts, threshold, uf)
    out: list[int | None] = []
    for i in range(n):
        r = uf.find(i)
        out.append(None if r == i else r)
    return out


def semantic_duplicates(embeddings: np.ndarray, threshold: float = 0.95, chunk: int = 2048) -> list[int | None]:
    """Earlier index with cosine similarity >= threshold (embeddings L2-normalized), union-find roots."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    uf = UnionFind(n)
    for s in range(0, n, chunk):
        sims = x[s:s + chunk] @ x[: s + chunk].T
        for r in range(sims.shape[0]):
            i = s + r
            js = np.nonzero(sims[r, :i] >= threshold)[0]
            for j in js:
                uf.union(i, int(j))
    return [None if uf.find(i) == i else uf.find(i) for i in range(n)]


def _rate(dups: list[int | None]) -> float:
    return sum(d is not None for d in dups) / len(dups) if dups else 0.0


@register("exact_dup_rate", higher_is_diverse=False)
def exact_dup_rate(texts, *, seed=0) -> MetricResult:
    """Share of texts equal (after case/whitespace normalization) to an earlier one."""
    d = exact_duplicates(texts)
    return MetricResult("exact_dup_rate", _rate(d), details={"duplicates": sum(x is not None for x in d)})


@register("near_dup_rate", higher_is_diverse=False)
def near_dup_rate(texts, *, seed=0, threshold: float = 0.8) -> MetricResult:
    """1 - clusters/docs with MinHash-LSH (word 5-grams, Jaccard >= 0.8) + exact duplicates."""
    d = find_duplicates(texts, threshold)
    return MetricResult("near_dup_rate", _rate(d),
                        details={"threshold": threshold, "clusters": sum(x is None for x in d)})
