"""All sources' documents in one pool, split into (source, topic) strata; one side's selection, with repetition."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa

from generator.mix.apportion import hamilton
from generator.config.mix_parsing import parse_ratio
from generator.mix.select import best_fit, seeded_rng, select_documents, swap_refine
from generator.mix.sources import SourceIndex

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@dataclass
class Stratum:
    source: int
    topic: int
    docs: np.ndarray  # global doc ids
    available: int
    target: int = 0


class Pool:
    """All kept documents of all sources, with global ids."""

    def __init__(self, sources: list[SourceIndex]):
        self.sources = sources
        self.offsets = np.cumsum([0] + [s.docs for s in sources])
        self.n_tokens = np.concatenate([s.n_tokens for s in sources]) if sources else np.zeros(0, np.int64)
        self.source_idx = np.concatenate([np.full(s.docs, i, dtype=np.int32)
                                          for i, s in enumerate(sources)]) if sources else np.zeros(0, np.int32)
        self.topic_codes = np.concatenate([s.topic_codes for s in sources]) if sources else np.zeros(0, np.int32)
        self.strata: list[Stratum] = []
        for si, s in enumerate(sources):
            base = self.offsets[si]
            order = np.argsort(s.topic_codes, kind="stable")
            bounds = np.searchsorted(s.topic_codes[order], np.arange(len(s.topics) + 1))
            for t in range(len(s.topics)):
                ids = order[bounds[t]:bounds[t + 1]] + base
                self.strata.append(Stratum(si, t, ids.astype(np.int64), int(self.n_tokens[ids].sum())))

    def kind_sources(self, kind: str) -> list[int]:
        return [i for i, s in enumerate(self.sources) if s.kind == kind]

    def available(self, kind: str) -> int:
        return sum(self.sources[i].available_tokens for i in self.kind_sources(kind))


def max_budget(pool: Pool, ratio: str) -> int:
    """The largest budget this ratio reaches without repeating a document."""
    r, s = parse_ratio(ratio)
    ar, as_ = pool.available("real"), pool.available("synthetic")
    caps = []
    if r > 0:
        caps.append(Fraction(ar) * (r + s) / r)
    if s > 0:
        caps.append(Fraction(as_) * (r + s) / s)
    b = int(min(caps))
    while b > 0:
        br, bs = hamilton(b, [r, s])
        if br <= ar and bs <= as_:
            return b
        b -= 1
    return 0


def select_kind(pool: Pool, kind: str, budget: int, seed: int, allow_repetition: bool
                 ) -> tuple[np.ndarray, list[dict]]:
    """Documents for one side (real or synthetic): sources by available tokens, then topics."""
    srcs = pool.kind_sources(kind)
    src_budgets = hamilton(budget, [pool.sources[i].available_tokens for i in srcs])
    strata: list[Stratum] = []
    for si, b in zip(srcs, src_budgets):
        mine = [st for st in pool.strata if st.source == si]
        for st, t in zip(mine, hamilton(b, [st.available for st in mine])):
            st.target = t
            strata.append(st)
    chosen: list[np.ndarray] = []  # whole epochs (only with allow_repetition)
    picked: list[np.ndarray] = []  # documents drawn without replacement
    leftovers: list[np.ndarray] = []
    carry = 0
    for st in strata:
        src = pool.sources[st.source]
        rng = seeded_rng(seed, "select", kind, src.name, src.topics[st.topic])
        lens = pool.n_tokens[st.docs]
        want = st.target + carry
        epochs = 0
        if allow_repetition and st.available > 0 and want > st.available:
            epochs = want // st.available
        rest = min(want - epochs * st.available, st.available)
        local = select_documents(lens, rest, rng)
        if epochs:
            chosen.append(np.tile(st.docs, epochs))
        picked.append(st.docs[local])
        got = epochs * st.available + int(lens[local].sum())
        carry = want - got
        mask = np.ones(len(st.docs), dtype=bool)
        mask[local] = False
        leftovers.append(st.docs[mask])
    if carry > 0 and leftovers:
        # the last strata could not absorb the carried gap: fill it from all of this side's documents
        rest_ids = np.concatenate(leftovers)
        extra, carry = best_fit(pool.n_tokens, rest_ids, carry)
        got = np.concatenate(picked + [extra])
        if carry > 0:
            mask = np.ones(len(pool.n_tokens), dtype=bool)
            mask[got] = False
            rest_ids = rest_ids[mask[rest_ids]]
            got, _, carry = swap_refine(pool.n_tokens, got, rest_ids, carry)
        picked = [got]
    sel = np.concatenate(chosen + picked) if chosen or picked else np.zeros(0, dtype=np.int64)
    targets = [{"source": pool.sources[st.source].name, "topic": pool.sources[st.source].topics[st.topic],
                "target": st.target} for st in strata]
    return sel.astype(np.int64), targets
