"""The run folder: what a run planned, what it generated, and enough to resume it.

    RUN/
      manifest.json              spec, hashes, versions, counts, timings (rewritten atomically)
      plan.parquet               every planned record with its shard
      generations/part-RRR-SSSSS.parquet   one per shard, written atomically (tmp + rename):
                                 the file's existence is the shard's completion marker
      cache.sqlite               request-level replay cache keyed by payload hash, and the usage
                                 ledger (model calls, cache hits, tokens, busy time per session)
      README.md                  dataset card
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import polars as pl

from generator.core.errors import RunFolderError
from generator.core.files import atomic_path, write_json_atomic, write_parquet_atomic
from generator.core.run_layout import (GENERATIONS, MANIFEST, PLAN, generation_files, read_generation_files,
                                      read_manifest, read_plan)
from generator.engine.record import MESSAGE, plan_schema

__all__ = ["MESSAGE", "PLAN_SCHEMA", "RESULT_SCHEMA", "GENERATION_SCHEMA", "RunFolder", "RequestCache", "frame_of",
           "UsageMeter", "new_session"]

PLAN_SCHEMA: dict[str, Any] = plan_schema()  # one column per `Record` field, in order
RESULT_SCHEMA: dict[str, Any] = {
    "completion": pl.Utf8, "text": pl.Utf8, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
    "finish_reason": pl.Utf8, "status": pl.Utf8, "attempts": pl.Int32, "error": pl.Utf8,
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


def _ensure_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Switch a cache file to WAL once. The switch needs an exclusive lock and may fail at once
    (without the busy timeout) while another process opens the same new file: retry briefly.
    WAL persists in the file, so later openers see it already set."""
    for attempt in range(60):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise RunFolderError(f"{path}: the request cache stayed locked for a minute; is another run writing it?")


def new_session() -> str:
    """An id for one `synthgen run` invocation: usage is kept per session and summed over them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"-{os.getpid()}-{os.urandom(2).hex()}"


USAGE_COLUMNS = ("requests", "cache_hits", "errors", "prompt_tokens", "completion_tokens")


class UsageMeter:
    """Model calls, cache hits and tokens per (model, stage), and each model's busy time, counted
    as they happen and written with the answers they belong to (see `RequestCache.put_many`): an
    answer in the cache is always counted, so a killed session's usage is exact up to its last
    answer. Busy time is the span from a model's first request of an execute call to its last
    answer, summed over calls (and over engines, when several run at once)."""

    def __init__(self) -> None:
        self.created = time.time()
        self._lock = threading.Lock()
        self._delta: dict[tuple[str, str], dict[str, int]] = {}
        self._span: dict[str, list[float]] = {}  # model -> [first request, last answer, time already flushed up to]

    def _row(self, model: str, stage: str) -> dict[str, int]:
        return self._delta.setdefault((model, stage), dict.fromkeys(USAGE_COLUMNS, 0))

    def submitted(self, model: str) -> None:
        with self._lock:
            if model not in self._span:
                now = time.time()
                self._span[model] = [now, now, now]

    def hit(self, model: str, stage: str) -> None:
        with self._lock:
            self._row(model, stage)["cache_hits"] += 1

    def answered(self, model: str, stage: str, prompt_tokens: int | None, completion_tokens: int | None,
                 error: bool = False) -> None:
        with self._lock:
            row = self._row(model, stage)
            row["requests"] += 1
            row["errors"] += int(error)
            row["prompt_tokens"] += int(prompt_tokens or 0)
            row["completion_tokens"] += int(completion_tokens or 0)
            span = self._span.setdefault(model, [time.time()] * 3)
            span[1] = time.time()

    def take(self) -> tuple[list[tuple], list[tuple]]:
        """The counts and busy seconds since the last take (and forget them)."""
        with self._lock:
            rows = [(m, s, *(d[c] for c in USAGE_COLUMNS)) for (m, s), d in self._delta.items()]
            self._delta.clear()
            busy = []
            for model, span in self._span.items():
                if span[1] > span[2]:
                    busy.append((model, span[1] - span[2], span[0], span[1]))
                    span[2] = span[1]
            return rows, busy


class RequestCache:
    """Answers already paid for, keyed by the request payload hash; safe across processes.

    With a `session`, it also keeps the run's usage ledger (tables `usage` and `busy`, one row per
    session, model and stage, and `sessions`), written in the same transaction as the answers."""

    def __init__(self, path: Path, session: str | None = None):
        self.path = path
        self.session = session
        self.meter = UsageMeter()
        self._local = threading.local()
        with self._conn() as db:
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS usage (session TEXT, model TEXT, stage TEXT, "
                       + ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in USAGE_COLUMNS)
                       + ", PRIMARY KEY (session, model, stage))")
            db.execute("CREATE TABLE IF NOT EXISTS busy (session TEXT, model TEXT, seconds REAL NOT NULL, "
                       "first_at REAL, last_at REAL, PRIMARY KEY (session, model))")
            db.execute("CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, started REAL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            _ensure_wal(conn, self.path)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict | None:
        row = self._conn().execute("SELECT value FROM results WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        """The cached answers among `keys` (one query per 500 keys)."""
        found: dict[str, dict] = {}
        db = self._conn()
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            marks = ",".join("?" * len(part))
            for key, value in db.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", part):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None:
        """Store answers, and the usage counted since the last write, in one transaction."""
        rows = [(k, json.dumps(v)) for k, v in items]
        usage, busy = self.meter.take() if self.session else ([], [])
        if not (rows or usage or busy):
            return
        db = self._conn()
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)
        if usage or busy:
            db.execute("INSERT OR IGNORE INTO sessions (session, started) VALUES (?, ?)",
                       (self.session, self.meter.created))
        if usage:
            cols = ", ".join(USAGE_COLUMNS)
            add = ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COLUMNS)
            db.executemany(f"INSERT INTO usage (session, model, stage, {cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                           f"ON CONFLICT (session, model, stage) DO UPDATE SET {add}",
                           [(self.session, *r) for r in usage])
        if busy:
            db.executemany("INSERT INTO busy (session, model, seconds, first_at, last_at) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (session, model) DO UPDATE SET seconds = seconds + excluded.seconds, "
                           "first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)",
                           [(self.session, *b) for b in busy])
        db.execute("COMMIT")

    def flush(self) -> None:
        """Write usage counted since the last answer (cache hits, a last answer's busy time)."""
        self.put_many([])

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self.session:
                self.flush()
            conn.close()
            self._local.conn = None


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.generations = self.path / GENERATIONS

    # -- files
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def plan_path(self) -> Path:
        return self.path / PLAN

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def create(self) -> None:
        try:
            self.generations.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create run folder {self.path}: {exc.strerror}") from None

    def read_manifest(self) -> dict:
        return read_manifest(self.path)

    def write_manifest(self, manifest: dict) -> None:
        write_json_atomic(self.manifest_path, manifest)

    def read_plan(self) -> pl.DataFrame | None:
        """The plan; columns added to `Record` since it was written are null (their default)."""
        plan = read_plan(self.path)
        if plan is None:
            return None
        missing = [pl.lit(None, dtype=t).alias(c) for c, t in PLAN_SCHEMA.items() if c not in plan.columns]
        return plan.with_columns(missing) if missing else plan

    def write_plan(self, frame: pl.DataFrame) -> None:
        write_parquet_atomic(frame, self.plan_path)

    # -- the plan a chunk at a time (plans larger than memory)
    def write_plan_stream(self, frames: Iterable[pl.DataFrame]) -> int:
        """Write the plan from chunks of rows (plan columns + `shard`), atomically; returns its rows."""
        import pyarrow.parquet as pq

        columns = [*PLAN_SCHEMA, "shard"]
        rows = 0
        with atomic_path(self.plan_path) as tmp:
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
        return rows

    def plan_batches(self, columns: list[str] | None = None, rows: int = 4096) -> Iterator[pl.DataFrame]:
        """The plan in slices of `rows`, oldest first; columns added to `Record` since it was written
        are null. Only one slice is held at a time."""
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.plan_path)
        have = set(pf.schema_arrow.names)
        want = [c for c in (columns or [*PLAN_SCHEMA, "shard"])]
        for batch in pf.iter_batches(batch_size=rows, columns=[c for c in want if c in have]):
            frame = pl.from_arrow(batch)
            missing = [pl.lit(None, dtype=PLAN_SCHEMA.get(c, pl.Utf8)).alias(c) for c in want if c not in have]
            yield frame.with_columns(missing).select(want) if missing else frame

    def plan_column(self, name: str) -> pl.Series:
        return pl.read_parquet(self.plan_path, columns=[name])[name]

    def has_plan(self) -> bool:
        return self.plan_path.exists()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run: a second run on it fails at once, naming the holder."""
        from filelock import FileLock, Timeout

        self.create()
        owner = self.path / ".lock.owner"
        lock = FileLock(str(self.path / ".lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                who = json.loads(owner.read_text())
                held = f"pid {who.get('pid')} on host {who.get('host')}"
            except (OSError, ValueError):
                held = "another process"
            raise RunFolderError(f"{self.path} is in use by another run ({held}); wait for it to finish, "
                                 f"or write this run elsewhere with --out NEW_DIR") from None
        try:
            owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
            yield
        finally:
            owner.unlink(missing_ok=True)
            lock.release()

    def cache(self, session: str | None = None) -> RequestCache:
        """The request cache; with `session`, usage is counted under that session."""
        self.create()
        return RequestCache(self.path / "cache.sqlite", session=session)

    # -- shards
    def shard_path(self, name: str) -> Path:
        return self.generations / name

    def completed_shards(self) -> set[str]:
        if not self.generations.exists():
            return set()
        return {p.name for p in generation_files(self.path)}

    def write_shard(self, name: str, rows: list[dict], schema: dict | None = None) -> Path:
        """`schema`: a pipeline's wider row schema (default: a single-stage run's)."""
        frame = frame_of(rows, schema or GENERATION_SCHEMA)
        path = self.shard_path(name)
        write_parquet_atomic(frame, path)
        return path

    def read_generations(self) -> pl.DataFrame:
        frame = read_generation_files(self.path)
        return pl.DataFrame(schema=GENERATION_SCHEMA) if frame is None else frame
