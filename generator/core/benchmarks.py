"""Benchmark sets for decontamination: their items read from data files, their n-gram index built
once and cached, and the counting of the hits that rows carry.

The cache is `$SYNTHGEN_CACHE/decontam/<key>.npz`, the key a hash of every benchmark file's content,
the fields and id field indexed, the n-gram size and the normaliser's version: the same benchmarks
give the same file on every run and every command (`synthgen run`, `validate`, `decontaminate`,
`mix`), and a changed file or setting builds a new one.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from generator.core.ngram_index import NORMALIZER_VERSION, Item, NgramIndex
from generator.core.paths import cache_dir
from generator.core.tabular import data_files, read_rows

log = logging.getLogger(__name__)


class BenchmarkError(ValueError):
    """A benchmark set that cannot be read as configured (the caller adds file:line)."""


@dataclass(frozen=True)
class BenchmarkSource:
    name: str
    path: Path
    fields: tuple[str, ...]
    id_field: str | None = None


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):  # e.g. answer choices: each indexed on its own
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    return [str(value)]


def read_items(src: BenchmarkSource) -> Iterator[Item]:
    """Every row of the set as an item: its id (the id field, or `<file>:<row>`) and the fields' texts."""
    try:
        rows = read_rows(src.path)
    except FileNotFoundError as exc:
        raise BenchmarkError(str(exc)) from None
    if rows:
        have = set(rows[0][1])
        missing = [f for f in (*src.fields, *([src.id_field] if src.id_field else [])) if f not in have]
        if missing:
            raise BenchmarkError(f"benchmark '{src.name}': {src.path} has no column {', '.join(missing)} "
                                 f"(columns: {', '.join(sorted(have))}); fix `fields:` or `id_field:`")
    for rid, row in rows:
        item_id = str(row[src.id_field]) if src.id_field else rid
        yield Item(src.name, item_id, tuple(t for f in src.fields for t in _texts(row.get(f))))


def index_key(sources: Iterable[BenchmarkSource], n: int) -> str:
    h = hashlib.sha256(json.dumps({"normalizer": NORMALIZER_VERSION, "n": n}).encode())
    for src in sources:
        files = data_files(src.path) if src.path.exists() else []
        if not files:
            raise BenchmarkError(f"benchmark '{src.name}': no .parquet/.jsonl/.json/.csv files (or datasets "
                                 f"folder) at {src.path}; fix `path:`")
        h.update(json.dumps([src.name, list(src.fields), src.id_field]).encode())
        for f in files:
            h.update(str(f.relative_to(src.path) if f != src.path else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:32]


def load_index(sources: list[BenchmarkSource], n: int, cache: Path | None = None) -> NgramIndex:
    """The index of `sources`, from the cache when it was built before (`index.cached`)."""
    folder = (cache or cache_dir()) / "decontam"
    path = folder / f"{index_key(sources, n)}.npz"
    if path.is_file():
        try:
            return NgramIndex.load(path)
        except (OSError, ValueError, KeyError) as exc:  # a damaged cache file: rebuilt below, and replaced
            log.warning("decontamination index %s unreadable (%s); rebuilding it", path, exc)
    index = NgramIndex.build((it for src in sources for it in read_items(src)), n)
    try:
        index.save(path)
    except OSError as exc:  # a read-only cache: the index still works, it is rebuilt next time
        log.warning("cannot cache the decontamination index at %s (%s)", path, exc)
    return index


def parse_hits(value: Any) -> list[dict]:
    """A row's `contamination` value (JSON text or a list) as a list of hit dicts."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = json.loads(value)
    return list(value)


def count_hits(values: Iterable[Any]) -> dict[str, Any]:
    """Hits per benchmark over rows' `contamination` values: rows with a hit, distinct items, examples."""
    rows: Counter = Counter()
    items: dict[str, set[str]] = {}
    contaminated = 0
    for v in values:
        hits = parse_hits(v)
        if not hits:
            continue
        contaminated += 1
        for b in {h["benchmark"] for h in hits}:
            rows[b] += 1
        for h in hits:
            items.setdefault(h["benchmark"], set()).add(str(h["item_id"]))
    return {"rows": contaminated,
            "benchmarks": {b: {"rows": rows[b], "items": len(items[b])} for b in sorted(rows)}}
