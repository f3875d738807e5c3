"""Seeded draws that stay put as counts grow: `hash64` (the one hash every seed and per-record RNG
in the plan and the engine derives from), and the weighted `sample:` draws of topic cells and
personas (Efraimidis-Spirakis keys), so a larger sample keeps every item a smaller one drew.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from generator.library.catalog import TopicCell
from generator.config.spec import Spec, TreeTopics


def hash64(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _unit(*parts: Any) -> float:
    return (hash64(*parts) + 0.5) / 2**64


def priority_sample(items: list, k: int, weights: list[float], *salt: Any) -> list:
    """Weighted sample without replacement, stable as k grows (Efraimidis-Spirakis keys)."""
    keyed = sorted(range(len(items)), key=lambda i: -(_unit(*salt, i) ** (1.0 / weights[i])))
    chosen = sorted(keyed[:k])
    return [items[i] for i in chosen]


def drawn_cells(spec: Spec, sources: list[list[TopicCell]]) -> list[TopicCell]:
    """Each source's cells, a tree source's drawn by its `sample:` (weighted and stable as the
    sample grows), in source order."""
    cells: list[TopicCell] = []
    for i, (src, found) in enumerate(zip(spec.topics, sources)):
        if isinstance(src, TreeTopics) and src.sample is not None and src.sample < len(found):
            found = priority_sample(found, src.sample, [c.weight for c in found], spec.seed, "topics", i)
        cells.extend(found)
    return cells


def drawn_personas(spec: Spec, pool: list[dict] | None) -> list[dict] | None:
    if pool is None or spec.personas is None or spec.personas.sample is None or spec.personas.sample >= len(pool):
        return pool
    return priority_sample(pool, spec.personas.sample, [1.0] * len(pool), spec.seed, "personas")
