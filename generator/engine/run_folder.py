"""The run folder: what a run planned, what it generated, and enough to resume it.

    RUN/
      manifest.json              spec, hashes, versions, counts, timings (rewritten atomically)
      plan.parquet               every planned record with its shard
      generations/part-RRR-SSSSS.parquet   one per shard, written atomically (tmp + rename):
                                 the file's existence is the shard's completion marker
      cache.sqlite               request-level replay cache keyed by payload hash
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
from generator.core.files import write_json_atomic, write_parquet_atomic
from generator.core.run_layout import (GENERATIONS, MANIFEST, PLAN, generation_files, read_generation_files,
                                      read_manifest, read_plan)
from generator.engine.record import MESSAGE, plan_schema

__all__ = ["MESSAGE", "PLAN_SCHEMA", "RESULT_SCHEMA", "GENERATION_SCHEMA", "RunFolder", "RequestCache"]

PLAN_SCHEMA: dict[str, Any] = plan_schema()  # one column per `Record` field, in order
RESULT_SCHEMA: dict[str, Any] = {
    "completion": pl.Utf8, "text": pl.Utf8, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
    "finish_reason": pl.Utf8, "status": pl.Utf8, "attempts": pl.Int32, "error": pl.Utf8,
}
GENERATION_SCHEMA = {**PLAN_SCHEMA, **RESULT_SCHEMA}


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


class RequestCache:
    """Answers already paid for, keyed by the request payload hash; safe across processes."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        with self._conn() as db:
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

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

    def put_many(self, items: Iterable[tuple[str, dict]]) -> None:
        rows = [(k, json.dumps(v)) for k, v in items]
        if rows:
            db = self._conn()
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)
            db.execute("COMMIT")

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
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
        return read_plan(self.path)

    def write_plan(self, frame: pl.DataFrame) -> None:
        write_parquet_atomic(frame, self.plan_path)

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

    def cache(self) -> RequestCache:
        self.create()
        return RequestCache(self.path / "cache.sqlite")

    # -- shards
    def shard_path(self, name: str) -> Path:
        return self.generations / name

    def completed_shards(self) -> set[str]:
        if not self.generations.exists():
            return set()
        return {p.name for p in generation_files(self.path)}

    def write_shard(self, name: str, rows: list[dict], schema: dict | None = None) -> Path:
        """`schema`: a pipeline's wider row schema (default: a single-stage run's)."""
        frame = pl.DataFrame(rows, schema=schema or GENERATION_SCHEMA)
        path = self.shard_path(name)
        write_parquet_atomic(frame, path)
        return path

    def read_generations(self) -> pl.DataFrame:
        frame = read_generation_files(self.path)
        return pl.DataFrame(schema=GENERATION_SCHEMA) if frame is None else frame
