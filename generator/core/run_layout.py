"""The run folder's file layout, shared by the engine that writes it and every reader (scoring, mix,
view, export): one place names the shards and reads them back."""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl

from generator.core.errors import RunFolderError


MANIFEST = "manifest.json"
PLAN = "plan.parquet"
CACHE = "cache.sqlite"
GENERATIONS = "generations"
SCORES = "scores.json"  # the spec's metrics on the ok rows
ROUNDS = "rounds"  # feedback rounds: round-NNN.json, stop.json
SHARD_GLOB = "part-*.parquet"
_SHARD_RE = re.compile(r"^part-(\d{3,})-(\d{5,})\.parquet$")


def shard_name(round_: int, index: int) -> str:
    return f"part-{round_:03d}-{index:05d}.parquet"


def shard_index(name: str) -> tuple[int, int]:
    """(round, index) of a shard file name written by `shard_name`."""
    m = _SHARD_RE.match(Path(name).name)
    if not m:
        raise ValueError(f"not a shard file name: {name!r}")
    return int(m.group(1)), int(m.group(2))


def generation_files(run_dir: str | Path) -> list[Path]:
    """The run's written shard files, in (round, index) order; [] before the first one."""
    return sorted((Path(run_dir) / GENERATIONS).glob(SHARD_GLOB))


def require_generation_files(run_dir: str | Path, what: str = "") -> list[Path]:
    """`generation_files`, or a one-line error when the folder is missing or holds no shard yet."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderError(f"{run}: run folder not found{what}; give the folder `synthgen run` wrote into")
    files = generation_files(run)
    if not files:
        raise RunFolderError(f"{run / GENERATIONS}: no {SHARD_GLOB} files{what}; is {run} a synthgen run folder? "
                             f"Generate into it first with `synthgen run SPEC --out {run}`")
    return files


def read_generation_files(run_dir: str | Path) -> pl.DataFrame | None:
    """Every generated row of a run folder (shards written by different versions may differ in
    columns: missing ones are null), or None when no shard is written yet."""
    files = generation_files(run_dir)
    if not files:
        return None
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def has_rounds(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ROUNDS).is_dir()


def is_run_folder(run_dir: str | Path) -> bool:
    return (Path(run_dir) / MANIFEST).is_file()


def read_manifest(run_dir: str | Path) -> dict:
    """The run's manifest, or {} before the first write; a damaged one is a one-line error."""
    path = Path(run_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise RunFolderError(f"{path}: not a readable manifest ({where}); restore it from a copy, or rerun "
                             f"the spec into a new folder with --out NEW_DIR") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: a manifest is a JSON object, this holds a {type(data).__name__}; restore it "
                             f"from a copy, or rerun the spec into a new folder with --out NEW_DIR")
    return data


def read_plan(run_dir: str | Path, columns: list[str] | None = None) -> pl.DataFrame | None:
    """The plan (only `columns`, those of them it has, when given: a large plan's prompts are big)."""
    path = Path(run_dir) / PLAN
    if not path.exists():
        return None
    if columns is None:
        return pl.read_parquet(path)
    import pyarrow.parquet as pq

    have = set(pq.ParquetFile(path).schema_arrow.names)
    return pl.read_parquet(path, columns=[c for c in columns if c in have])
