"""Choosing whole documents whose tokens come as close as possible to a target, without repeats."""
from __future__ import annotations

import bisect
import hashlib

import numpy as np


def seeded_rng(seed: int, *key: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256("\x1f".join(key).encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, h]))


def best_fit(lengths: np.ndarray, candidates: np.ndarray, deficit: int) -> tuple[np.ndarray, int]:
    """Fill `deficit` tokens with the largest remaining documents that still fit; returns (picked, left)."""
    if deficit <= 0 or len(candidates) == 0:
        return np.zeros(0, dtype=np.int64), deficit
    cl = lengths[candidates]
    fits = cl <= deficit
    cand, cl = candidates[fits], cl[fits]
    if len(cand) == 0:
        return np.zeros(0, dtype=np.int64), deficit
    order = np.argsort(cl, kind="stable")
    cand_l, cl_l = cand[order].tolist(), cl[order].tolist()
    picked = []
    while deficit > 0 and cl_l:
        i = bisect.bisect_right(cl_l, deficit) - 1
        if i < 0:
            break
        picked.append(cand_l[i])
        deficit -= cl_l[i]
        del cl_l[i], cand_l[i]
    return np.asarray(picked, dtype=np.int64), deficit


def swap_refine(lengths: np.ndarray, chosen: np.ndarray, rest: np.ndarray, deficit: int, rounds: int = 8
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Close a remaining gap by swapping a chosen document for a longer unchosen one.

    Each round makes the single swap that gains the most tokens without overshooting."""
    chosen, rest = np.array(chosen, dtype=np.int64), np.array(rest, dtype=np.int64)
    for _ in range(rounds):
        if deficit <= 0 or len(chosen) == 0 or len(rest) == 0:
            break
        rl = lengths[rest]
        order = np.argsort(rl, kind="stable")
        rs = rl[order]
        cl = lengths[chosen]
        pos = np.searchsorted(rs, cl + deficit, side="right") - 1
        gain = np.where(pos >= 0, rs[np.maximum(pos, 0)] - cl, -1)
        j = int(np.argmax(gain))
        g = int(gain[j])
        if g <= 0:
            break
        ri = int(order[pos[j]])
        chosen[j], rest[ri] = rest[ri], chosen[j]
        deficit -= g
    return chosen, rest, deficit


def select_documents(lengths: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of documents (no repeats) whose lengths sum to at most `target`, as close as possible.

    Shuffle with `rng`, take documents in order until the next one would overshoot, then fill the
    rest with the best-fitting remaining documents. Documents are never split."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    perm = rng.permutation(n)
    if target <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    cs = np.cumsum(lengths[perm])
    if target >= cs[-1]:
        return np.sort(perm)
    k = int(np.searchsorted(cs, target, side="right"))
    deficit = target - (int(cs[k - 1]) if k else 0)
    extra, deficit = best_fit(lengths, perm[k:], deficit)
    chosen = np.concatenate([perm[:k], extra])
    if deficit > 0:
        mask = np.ones(n, dtype=bool)
        mask[chosen] = False
        chosen, _, _ = swap_refine(lengths, chosen, np.flatnonzero(mask), deficit)
    return chosen
