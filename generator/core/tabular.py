"""Tabular data files read as rows: Parquet, JSONL, JSON, CSV, a folder of them, or a `datasets`
save_to_disk folder (Arrow). Seed data and benchmark sets are read through here."""
from __future__ import annotations

import json
from pathlib import Path

SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def data_files(path: Path) -> list[Path]:
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

    files = data_files(path)
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
