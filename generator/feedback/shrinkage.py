"""Empirical-Bayes estimates of yield per generation, shared by the cell and template allocators.

Each group's (cell's or template's) usable rate and novelty are shrunk toward the pooled values by k
pseudo-generations, with k estimated from how much the groups differ beyond sampling noise
(method of moments) unless fixed by the spec.
"""
from __future__ import annotations

import numpy as np


def _strength(est: list[float], counts: list[float], var: float, fixed: float | None) -> float:
    """Shrinkage in pseudo-generations: `fixed`, else noise variance / between-group variance (>= 0.5)."""
    if fixed is not None:
        return fixed
    if len(est) < 2:
        return 1e6
    tau2 = float(np.var(est, ddof=1)) - float(np.mean([var / c for c in counts]))
    return 1e6 if tau2 <= 0 else float(min(max(var / tau2, 0.5), 1e6))


def shrunk_yield(stats: dict[str, tuple[float, float, float, float]], prior_weight: float | None = None
                 ) -> tuple[dict[str, float], str]:
    """Expected yield per generation spent, P(usable) x novelty of a usable text, for groups (cells or
    templates) given as {key: (discounted generations, usable generations, yield sum, yield sum of
    squares)}. Each factor is shrunk toward its pooled value (see `Allocator.expected_yield`)."""
    seen = [v for v in stats.values() if v[0] > 0]
    n = sum(v[0] for v in seen)
    good = sum(v[1] for v in seen)
    q0 = good / n if n else 0.0
    v0 = sum(v[2] for v in seen) / good if good else 0.0
    sq = sum(v[3] for v in seen)
    sv2 = max(sq / good - v0 * v0, 1e-6) if good else 1e-6
    kq = _strength([v[1] / v[0] for v in seen], [v[0] for v in seen], max(q0 * (1 - q0), 1e-6), prior_weight)
    used = [v for v in seen if v[1] > 0]
    kv = _strength([v[2] / v[1] for v in used], [v[1] for v in used], sv2, prior_weight)
    out = {}
    for key, (wn, wgood, wsum, _) in stats.items():
        q = (wgood + kq * q0) / (wn + kq)
        nov = (wsum + kv * v0) / (wgood + kv)
        out[key] = q * nov
    info = f"pooled usable rate {q0:.2f} and novelty {v0:.3f}, shrinkage {kq:.3g} / {kv:.3g} pseudo-gens"
    return out, info


def floored_shares(raw: dict[str, float], spec: dict[str, float], floor: float) -> dict[str, float]:
    """`raw` normalised to shares, with no share below `floor` x its share of `spec` (the rest is
    re-split among the others in proportion to `raw`)."""
    tot_spec = sum(spec.values())
    low = {k: floor * spec[k] / tot_spec for k in raw}
    fixed: dict[str, float] = {}
    while True:
        free = [k for k in raw if k not in fixed]
        mass = 1.0 - sum(fixed.values())
        tot = sum(raw[k] for k in free)
        shares = {k: (mass * raw[k] / tot if tot > 0 else mass / len(free)) for k in free}
        under = [k for k in free if shares[k] < low[k] - 1e-12]
        if not under or len(under) == len(free):
            return {**fixed, **shares}
        for k in under:
            fixed[k] = low[k]


def token_factors(stats: dict[str, tuple[float, float]], prior: float = 1.0) -> tuple[dict[str, float], str]:
    """Value per token as a factor on value per generation: the pooled tokens per record over each
    group's, for groups given as {key: (records with a recorded cost, their tokens)} (discounted or
    not, as the caller counts). A group's tokens per record are shrunk toward the pooled value by
    `prior` pseudo-records, so one long answer does not sink a cell. Every factor is 1 (value per
    generation) when no cost is recorded, as in round files written before costs were."""
    seen = [v for v in stats.values() if v[0] > 0]
    n = sum(v[0] for v in seen)
    t = sum(v[1] for v in seen)
    if n <= 0 or t <= 0:
        return {k: 1.0 for k in stats}, "no token costs recorded, so value per generation"
    t0 = t / n
    out = {k: t0 / ((tok + prior * t0) / (wn + prior)) for k, (wn, tok) in stats.items()}
    return out, f"pooled {t0:.0f} tokens per record"
