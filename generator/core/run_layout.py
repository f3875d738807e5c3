"""The run folder's file layout, shared by the engine that writes it and every reader (scoring, mix,
view, export): one place names the shards and the published answers and reads them back. A run
folder is a local path or an fsspec URL (`generator.core.storage`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl

from generator.core import storage
from generator.core.errors import RunFolderError


MANIFEST = "manifest.json"
PLAN = "plan.parquet"
CACHE = "cache.sqlite"  # the request cache and usage ledger of runs written before answers were published
ANSWERS = "answers"  # answers/<session>-<writer>-<seq>.parquet: answers and usage, published per flush
GENERATIONS = "generations"
SCORES = "scores.json"  # the spec's metrics on the ok rows
ROUNDS = "rounds"  # feedback rounds: round-NNN.json, stop.json
RUN_LOG = "run.log"  # every session's warnings and milestones, timestamped, appended across resumes
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


def run_path(run_dir: Any) -> Any:
    """A run folder argument as a location: a Path for a local folder, the URL string for a remote one."""
    return run_dir if storage.is_url(run_dir) else Path(run_dir)


def generation_files(run_dir: Any) -> list[Any]:
    """The run's written shard files, in (round, index) order; [] before the first one. (On an
    object store a shard is one PUT: listed means whole.)"""
    return storage.glob(storage.join(run_dir, GENERATIONS), SHARD_GLOB)


def require_generation_files(run_dir: Any, what: str = "") -> list[Any]:
    """`generation_files`, or a one-line error when the folder is missing or holds no shard yet."""
    run = run_path(run_dir)
    if not storage.is_dir(run):
        raise RunFolderError(f"{run}: run folder not found{what}; give the folder `synthgen run` wrote into")
    files = generation_files(run)
    if not files:
        raise RunFolderError(f"{storage.join(run, GENERATIONS)}: no {SHARD_GLOB} files{what}; is {run} a synthgen "
                             f"run folder? Generate into it first with `synthgen run SPEC --out {run}`")
    return files


def require_run_folder(run_dir: Any) -> Any:
    """The run folder as a location, or a one-line error when nothing is there or it has no
    manifest (every run writes its manifest first)."""
    run = run_path(run_dir)
    if not storage.is_dir(run):
        raise RunFolderError(f"{run}: run folder not found; give the folder `synthgen run` wrote into")
    if not is_run_folder(run):
        raise RunFolderError(f"{run}: not a run folder (no {MANIFEST}); give the folder `synthgen run` wrote into")
    return run


def read_parquet(loc: Any, columns: list[str] | None = None) -> pl.DataFrame:
    """One Parquet file of a run folder, local or remote."""
    if not storage.is_url(loc):
        return pl.read_parquet(loc, columns=columns)
    with storage.open_read(loc) as fh:
        return pl.read_parquet(fh, columns=columns)


def scan_generation_files(run_dir: Any) -> pl.LazyFrame | None:
    """Every shard as one lazy frame (local shards are scanned, read column by column; remote ones
    are read), or None before the first shard."""
    files = generation_files(run_dir)
    if not files:
        return None
    if storage.is_url(run_dir):
        return pl.concat([read_parquet(f).lazy() for f in files], how="diagonal_relaxed")
    return pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")


def read_generation_files(run_dir: Any) -> pl.DataFrame | None:
    """Every generated row of a run folder (shards written by different versions may differ in
    columns: missing ones are null), or None when no shard is written yet."""
    files = generation_files(run_dir)
    if not files:
        return None
    return pl.concat([read_parquet(f) for f in files], how="diagonal_relaxed")


def has_rounds(run_dir: Any) -> bool:
    return storage.is_dir(storage.join(run_dir, ROUNDS))


def round_file(run_dir: Any, r: int, kind: str = "") -> Any:
    """rounds/round-NNN.json (a finished round) or round-NNN.KIND.json (e.g. its allocation)."""
    return storage.join(run_dir, ROUNDS, f"round-{r:03d}{'.' + kind if kind else ''}.json")


def read_rounds(run_dir: Any) -> list[dict]:
    """The finished rounds' records, in order (stops at the first missing round)."""
    out = []
    while True:
        try:
            data = storage.read_bytes(round_file(run_dir, len(out) + 1))
        except (FileNotFoundError, IsADirectoryError):
            return out
        out.append(json.loads(data))


def read_stop(run_dir: Any) -> dict | None:
    """rounds/stop.json: why the loop stopped before its last round, or None."""
    try:
        return json.loads(storage.read_bytes(storage.join(run_dir, ROUNDS, "stop.json")))
    except (FileNotFoundError, IsADirectoryError):
        return None


def is_run_folder(run_dir: Any) -> bool:
    loc = storage.join(run_dir, MANIFEST)
    return storage.exists(loc) if storage.is_url(loc) else loc.is_file()


def read_manifest(run_dir: Any) -> dict:
    """The run's manifest, or {} before the first write; a damaged one is a one-line error."""
    path = storage.join(run_dir, MANIFEST)
    try:
        data = json.loads(storage.read_bytes(path).decode("utf-8"))
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


def read_plan(run_dir: Any, columns: list[str] | None = None) -> pl.DataFrame | None:
    """The plan (only `columns`, those of them it has, when given: a large plan's prompts are big)."""
    path = storage.join(run_dir, PLAN)
    if not storage.exists(path):
        return None
    if columns is None:
        return read_parquet(path)
    import pyarrow.parquet as pq

    with storage.open_read(path) as fh:
        have = set(pq.ParquetFile(fh).schema_arrow.names)
    return read_parquet(path, columns=[c for c in columns if c in have])


# -- published answers: what each request cache wrote into the run folder (see RequestCache)
ANSWER_META = b"synthgen.usage"  # the file's usage rows, in its Parquet metadata
_META: dict[str, dict] = {}  # published file -> its usage (files are immutable once listed)


def answer_files(run_dir: Any, session: str | None = None) -> list[Any]:
    """The published answer files (of one session when given), oldest sequence first per writer."""
    files = storage.glob(storage.join(run_dir, ANSWERS), f"{session + '-' if session else ''}*.parquet")
    return [f for f in files if not storage.name_of(f).startswith(".")]


def _damaged(loc: Any, exc: BaseException) -> RunFolderError:
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return RunFolderError(f"{loc}: not a readable answers file ({first}); delete it (its answers are paid for "
                          f"again on the next resume, and its usage is no longer counted)")


def read_answer_file(loc: Any, columns: list[str]) -> pl.DataFrame:
    """`columns` of one published answer file; a damaged one is a one-line error naming it."""
    try:
        return read_parquet(loc, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        raise _damaged(loc, exc) from None


def answer_usage(loc: Any) -> dict:
    """The usage a published answer file carries: {"session", "started", "usage": [[model, stage,
    requests, cache_hits, errors, prompt_tokens, completion_tokens]], "busy": [[model, seconds,
    first_at, last_at]]}."""
    key = str(loc)
    if key not in _META:
        import pyarrow.parquet as pq

        try:
            with storage.open_read(loc) as fh:
                meta = pq.read_schema(fh).metadata or {}
            _META[key] = json.loads(meta.get(ANSWER_META, b"{}"))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise _damaged(loc, exc) from None
    return _META[key]


def published_usage(run_dir: Any, session: str | None = None) -> tuple[list[tuple], list[tuple], dict[str, float]]:
    """Usage rows (session, model, stage, counts...), busy rows (session, model, seconds, first_at,
    last_at) and each session's start, over every published answer file."""
    usage, busy, started = [], [], {}
    for f in answer_files(run_dir, session):
        try:
            meta = answer_usage(f)
        except FileNotFoundError:  # removed since it was listed
            continue
        sid = meta.get("session")
        if sid is None:
            continue
        at = meta.get("started")
        if at is not None:  # a salvaged file may not know when its session started
            started[sid] = min(started.get(sid) or at, at)  # 0.0: only salvaged files so far
        elif sid not in started:
            started[sid] = 0.0
        usage += [(sid, *row) for row in meta.get("usage", [])]
        busy += [(sid, *row) for row in meta.get("busy", [])]
    return usage, busy, started


def read_answers(run_dir: Any, columns: list[str]) -> pl.DataFrame | None:
    """`columns` of every published answer (key, value, id, prompt_tokens, completion_tokens), or None
    when nothing is published."""
    files = answer_files(run_dir)
    if not files:
        return None
    frames = []
    for f in files:
        try:
            frames.append(read_answer_file(f, columns))
        except FileNotFoundError:  # removed since it was listed
            continue
    return pl.concat(frames, how="vertical_relaxed") if frames else None
