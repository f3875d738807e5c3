"""Seed data: the user's own rows as topic cells (`topics: [{seeds: PATH, ...}]`).

A file (Parquet, JSONL, CSV), a folder of them, or a `datasets` `save_to_disk` folder. Rows are
drawn deterministically from the spec seed: without replacement by a fixed per-row priority
(so raising `sample:` only adds rows), with replacement by one seeded draw per cell, and with
`stratify:` the same number from each value of a column. Each drawn row is one cell; its columns
are template variables (also as `seed.<column>`), and its id stays in the lineage
(`topic_id` is `seed:<row id>`).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.core.errors import SpecError
from generator.library.catalog import TopicCell

SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
# plan variables a seed column may not shadow (reach such a column as `seed.<name>`)
SHADOWED = {"topic", "subtopic", "keywords", "level", "topic_path", "topics", "persona", "personas", "seed"}


@dataclass(frozen=True)
class SeedCell(TopicCell):
    seed_id: str = ""
    row: tuple = field(default=(), compare=False)  # ((column, value), ...)

    def as_vars(self) -> dict[str, Any]:
        values = dict(self.row)
        out = {k: v for k, v in values.items() if k not in SHADOWED}
        out.update(super().as_vars())
        out["seed"] = values
        return out


def _hash_unit(*parts: Any) -> float:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: every split, in its listed order
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return [f for s in splits for f in sorted((path / s).glob("data-*.arrow"))]
    arrow = sorted(path.glob("data-*.arrow"))
    if arrow:
        return arrow
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(row id, row) for every row, files in name order. The id is `<file>:<row number>`."""
    import polars as pl
    import pyarrow as pa

    files = source_files(path)
    if not files:
        raise FileNotFoundError(f"no .parquet/.jsonl/.csv files (or datasets folder) in {path}")
    rows: list[tuple[str, dict]] = []
    for f in files:
        if f.suffix == ".arrow":
            with pa.memory_map(str(f)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(src).read_all()
            frame = pl.from_arrow(table)
        elif f.suffix == ".parquet":
            frame = pl.read_parquet(f)
        elif f.suffix == ".csv":
            frame = pl.read_csv(f, infer_schema_length=10000)
        else:
            frame = pl.read_ndjson(f, infer_schema_length=10000)
        rel = f.name if path.is_file() else str(f.relative_to(path))
        rows.extend((f"{rel}:{i}", r) for i, r in enumerate(frame.to_dicts()))
    return rows


def _quota(k: int, sizes: dict[str, int]) -> dict[str, int]:
    """k rows spread evenly over strata, none above its size (the rest goes to larger strata)."""
    quota = {s: 0 for s in sizes}
    left = min(k, sum(sizes.values()))
    while left:
        open_ = [s for s in sorted(sizes) if quota[s] < sizes[s]]
        share = max(left // len(open_), 1)
        for s in open_:
            if not left:
                break
            add = min(share, sizes[s] - quota[s], left)
            quota[s] += add
            left -= add
    return quota


def sample_rows(rows: list[tuple[str, dict]], k: int | None, replace: bool, stratify: str | None,
                seed: int, salt: Any) -> list[tuple[str, dict]]:
    """The drawn rows, in draw order for replacement, else in file order."""
    strata: dict[str, list[int]] = {}
    for i, (_, r) in enumerate(rows):
        strata.setdefault(str(r.get(stratify)) if stratify else "*", []).append(i)
    if replace:
        n = k if k is not None else len(rows)
        keys = sorted(strata)
        out = []
        for j in range(n):
            rng = random.Random(f"{seed}|{salt}|draw|{j}")
            members = strata[keys[j % len(keys)]]
            out.append(rows[members[rng.randrange(len(members))]])
        return out
    if k is None or k >= len(rows):
        return list(rows)
    quota = _quota(k, {s: len(m) for s, m in strata.items()})
    chosen: list[int] = []
    for s, members in strata.items():
        ranked = sorted(members, key=lambda i: _hash_unit(seed, salt, rows[i][0]))
        chosen.extend(ranked[:quota[s]])
    return [rows[i] for i in sorted(chosen)]


def seed_cells(src: Any, path: Path, seed: int, salt: Any) -> list[SeedCell]:
    """Cells for one `seeds:` topics source (a `generator.config.seed_data.SeedTopics`)."""
    rows = read_rows(path)
    if src.stratify and src.stratify not in rows[0][1]:
        raise SpecError(f"seed data {path} has no column '{src.stratify}' to stratify by "
                        f"(columns: {', '.join(rows[0][1])})")
    for opt in ([src.id_column] if src.id_column else []) + list(src.columns or []):
        if opt not in rows[0][1]:
            raise SpecError(f"seed data {path} has no column '{opt}' (columns: {', '.join(rows[0][1])})")
    if src.id_column:
        rows = [(str(r[src.id_column]), r) for _, r in rows]
    drawn = sample_rows(rows, src.sample, src.replace, src.stratify, seed, salt)
    cells: list[SeedCell] = []
    seen: dict[str, int] = {}
    for rid, r in drawn:
        k = seen.get(rid, 0)
        seen[rid] = k + 1
        cols = src.columns or list(r)
        values = tuple((c, r.get(c)) for c in cols)
        topic = str(r.get(src.stratify)) if src.stratify else path.name
        cells.append(SeedCell(id=f"seed:{rid}" + (f"~{k}" if k else ""), topic=topic, subtopic=rid, keywords=(),
                              level=None, weight=src.weight, source="seeds", seed_id=rid, row=values))
    return cells
