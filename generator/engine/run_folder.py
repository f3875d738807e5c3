"""The run folder: what a run planned, what it generated, and enough to resume it. It is a local
folder or an fsspec URL (`s3://bucket/prefix`); no file in it is ever opened as a database, so
every node of a cluster may write into it at once.

    RUN/
      manifest.json              spec, hashes, versions, counts, timings (rewritten atomically)
      plan.parquet               every planned record with its shard
      generations/part-RRR-SSSSS.parquet   one per shard, written atomically (tmp + rename; on an
                                 object store one PUT, which lands whole or not at all): the
                                 file's existence is the shard's completion marker
      answers/SESSION-WRITER-SEQ.parquet   append-only: the answers one request cache published
                                 in one flush (key, value, id, tokens), with the usage counted
                                 since its previous flush in the file's metadata (model calls,
                                 cache hits, tokens, busy time per session); replayed on resume
      cache.sqlite               only in runs written before answers were published: still
                                 replayed and counted
      .lock                      the run lock (a lock object on an object store); every write
                                 above checks it is still this run's first (`run_lock`)
      README.md                  dataset card
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import polars as pl

from generator.core import storage
from generator.core.errors import RunFolderError
from generator.core.run_layout import (GENERATIONS, MANIFEST, PLAN, generation_files, read_generation_files,
                                      read_manifest, read_parquet, read_plan, run_path)
from generator.core.storage import is_url, join, name_of, write_atomic
from generator.engine import run_lock
from generator.engine.record import MESSAGE, plan_schema
from generator.engine.request_cache import RequestCache


__all__ = ["MESSAGE", "PLAN_SCHEMA", "RESULT_SCHEMA", "GENERATION_SCHEMA", "RunFolder", "frame_of"]

PLAN_SCHEMA: dict[str, Any] = plan_schema()  # one column per `Record` field, in order
RESULT_SCHEMA: dict[str, Any] = {
    "completion": pl.Utf8, "text": pl.Utf8, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
    "finish_reason": pl.Utf8, "status": pl.Utf8, "attempts": pl.Int32, "error": pl.Utf8,
    # a thinking model's reasoning before `text` (the output stage's), and its share of completion_tokens
    "reasoning": pl.Utf8, "reasoning_tokens": pl.Int32,
}
GENERATION_SCHEMA = {**PLAN_SCHEMA, **RESULT_SCHEMA}
_ARROW: dict[int, Any] = {}  # id(schema) -> its Arrow schema


def frame_of(rows: list[dict], schema: dict[str, Any]) -> pl.DataFrame:
    """Row dicts as a frame of `schema` (missing keys are null), built through Arrow: several
    times faster than `pl.DataFrame(rows, schema=...)`, with the same result."""
    import pyarrow as pa

    arrow = _ARROW.get(id(schema))
    if arrow is None or arrow[0] is not schema:
        arrow = _ARROW[id(schema)] = (schema, pl.DataFrame(schema=schema).to_arrow().schema)
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow[1]))


class RunFolder:
    """A run folder: a local path (`path` is a Path) or an fsspec URL (`path` is the URL string)."""

    def __init__(self, path: Any):
        self.path = run_path(path)
        self.remote = is_url(self.path)
        self.generations = join(self.path, GENERATIONS)

    # -- files
    @property
    def manifest_path(self) -> Any:
        return join(self.path, MANIFEST)

    @property
    def plan_path(self) -> Any:
        return join(self.path, PLAN)

    def exists(self) -> bool:
        return storage.exists(self.manifest_path)

    def create(self) -> None:
        if self.remote:  # object stores have no folders: only the bucket must exist
            storage.check_writable(self.path)
            return
        try:
            self.generations.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create run folder {self.path}: {exc.strerror}") from None

    def read_manifest(self) -> dict:
        return read_manifest(self.path)

    def write_manifest(self, manifest: dict) -> None:
        me = run_lock.holder(self.path)  # names this run to one that loses the lock to it
        if me is not None:
            manifest = {**manifest, run_lock.MANIFEST_KEY: {k: me[k] for k in ("pid", "host", "since")}}
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        write_atomic(self.manifest_path, lambda tmp: tmp.write_text(text), before=self.check_lock)

    def write_text(self, name: str, text: str) -> None:
        """A small file of the folder (dataset card, scores), written atomically."""
        write_atomic(join(self.path, name), lambda tmp: tmp.write_text(text), before=self.check_lock)

    def read_plan(self) -> pl.DataFrame | None:
        """The plan; columns added to `Record` since it was written are null (their default)."""
        plan = read_plan(self.path)
        if plan is None:
            return None
        missing = [pl.lit(None, dtype=t).alias(c) for c, t in PLAN_SCHEMA.items() if c not in plan.columns]
        return plan.with_columns(missing) if missing else plan

    def write_plan(self, frame: pl.DataFrame) -> None:
        write_atomic(self.plan_path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True),
                     before=self.check_lock)

    # -- the plan a chunk at a time (plans larger than memory)
    def write_plan_stream(self, frames: Iterable[pl.DataFrame]) -> int:
        """Write the plan from chunks of rows (plan columns + `shard`), atomically; returns its rows."""
        import pyarrow.parquet as pq

        columns = [*PLAN_SCHEMA, "shard"]
        rows = 0

        def fill(tmp: Path) -> None:
            nonlocal rows
            writer = None
            try:
                for frame in frames:
                    table = frame.select(columns).to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                    writer.write_table(table)
                    rows += frame.height
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:  # an empty plan still has its columns
                pl.DataFrame(schema={**PLAN_SCHEMA, "shard": pl.Utf8}).write_parquet(tmp)

        write_atomic(self.plan_path, fill, before=self.check_lock)
        return rows

    def plan_batches(self, columns: list[str] | None = None, rows: int = 4096) -> Iterator[pl.DataFrame]:
        """The plan in slices of `rows`, oldest first; columns added to `Record` since it was written
        are null. Only one slice is held at a time."""
        import pyarrow.parquet as pq

        with storage.open_read(self.plan_path) as fh:
            pf = pq.ParquetFile(fh)
            have = set(pf.schema_arrow.names)
            want = [c for c in (columns or [*PLAN_SCHEMA, "shard"])]
            for batch in pf.iter_batches(batch_size=rows, columns=[c for c in want if c in have]):
                frame = pl.from_arrow(batch)
                missing = [pl.lit(None, dtype=PLAN_SCHEMA.get(c, pl.Utf8)).alias(c) for c in want if c not in have]
                yield frame.with_columns(missing).select(want) if missing else frame

    def plan_column(self, name: str) -> pl.Series:
        return read_parquet(self.plan_path, columns=[name])[name]

    def has_plan(self) -> bool:
        return storage.exists(self.plan_path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run: a second run on it fails at once, naming the holder. Every
        write of the run checks the lock is still its own first (`check_lock`, see `run_lock`)."""
        with run_lock.hold(self.path, self.create):
            yield

    def check_lock(self) -> None:
        """Raise `LockLostError` when another run took over the lock this process holds (or, on a
        Ray actor, follows) on this folder; a no-op for a folder no lock is held on here. One read
        of the lock object on an object store, a flag locally."""
        run_lock.check(self.path)

    def on_lock_lost(self, fn: Callable[[BaseException], None]) -> Callable[[], None]:
        """Call `fn(error)` as soon as the heartbeat sees the lock taken over; returns the unsubscribe."""
        fence = run_lock.fence_of(self.path)
        return fence.on_lost(fn) if fence is not None else (lambda: None)

    def cache(self, session: str | None = None) -> RequestCache:
        """The request cache (a local working copy that publishes into this folder); with
        `session`, usage is counted under that session."""
        self.create()
        return RequestCache(session=session, run=self.path, fence=self.check_lock)

    # -- shards
    def shard_path(self, name: str) -> Any:
        return join(self.generations, name)

    def completed_shards(self) -> set[str]:
        return {name_of(p) for p in generation_files(self.path)}

    def write_shard(self, name: str, rows: list[dict], schema: dict | None = None) -> Any:
        """`schema`: a pipeline's wider row schema (default: a single-stage run's)."""
        frame = frame_of(rows, schema or GENERATION_SCHEMA)
        path = self.shard_path(name)
        write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True),
                     before=self.check_lock)
        return path

    def rewrite_shard(self, name: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        """Replace a written shard by `change(its frame)` (atomically; the same columns)."""
        from generator.core.run_layout import read_parquet

        path = self.shard_path(name)
        frame = change(read_parquet(path))
        write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True),
                     before=self.check_lock)

    def read_generations(self) -> pl.DataFrame:
        frame = read_generation_files(self.path)
        return pl.DataFrame(schema=GENERATION_SCHEMA) if frame is None else frame

