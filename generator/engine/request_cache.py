"""The request cache of a run: every model answer, keyed by the request that produced it, with the
usage it cost. Each process keeps a local SQLite working copy (fast puts and lookups, no database
shared between machines) and publishes its answers into the run folder as append-only
`answers/SESSION-WRITER-SEQ.parquet` files (`run_folder` documents the layout); a process that died
before publishing everything is salvaged by the next one to open the run on that machine
(`working_copies`: where each working copy lives, and the salvage). The usage written with the
answers is counted by `usage_meter.UsageMeter`.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from generator.core.errors import LockLostError, RunFolderError
from generator.core.run_layout import ANSWER_META, ANSWERS, CACHE, answer_files, read_answer_file
from generator.core.storage import is_url, join, name_of, write_atomic
from generator.engine.usage_meter import USAGE_COLUMNS, UsageMeter, new_session
from generator.engine.working_copies import keep_for_salvage, salvage_leftovers, working_copy

log = logging.getLogger(__name__)

__all__ = ["RequestCache", "UsageMeter", "USAGE_COLUMNS", "new_session"]


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


PUBLISH_ANSWERS = 1000  # answers per published file at most (SYNTHGEN_PUBLISH_ANSWERS)
PUBLISH_SECONDS = 5.0  # and at least this often while answers arrive (SYNTHGEN_PUBLISH_SECONDS)


def _publish_every() -> tuple[int, float]:
    return (int(os.environ.get("SYNTHGEN_PUBLISH_ANSWERS") or PUBLISH_ANSWERS),
            float(os.environ.get("SYNTHGEN_PUBLISH_SECONDS") or PUBLISH_SECONDS))


class RequestCache:
    """Answers already paid for, keyed by the request payload hash.

    Lookups go to a SQLite file on this machine's disk (`path`; by default a working copy in the
    temp dir, one per process, run folder and session): nothing on the shared run folder is ever
    opened as a database. With a `run` folder (a path or a URL), the answers are also published
    into it, append-only: `answers/<session>-<writer>-<seq>.parquet`, one file per flush, each
    written atomically. A flush happens every `PUBLISH_ANSWERS` answers, every `PUBLISH_SECONDS`
    while answers arrive (a background timer), before each shard is written (see `ShardWriter`),
    and at close; a process killed mid-run loses only the answers it had not published yet. On
    open, the answers every writer published (and an old-style `cache.sqlite`) are replayed into
    the local copy, so a resume or a replacement worker does not pay for them again.

    With a `session`, each published file also carries, in its Parquet metadata, the usage counted
    since the previous flush (model calls, hits, tokens, busy time): an answer in the run folder is
    always counted, because its usage is written in the same file. Callers that count an answer
    and then `put_many` it hold `lock` around both, so a timed flush never splits them.

    `fence()` runs immediately before each file is published and raises when the run lost its
    lock on the folder (`RunFolder.check_lock`): nothing is published then, and the answers not
    published stay in the working copy on this machine, which is kept for the next run here to
    salvage."""

    def __init__(self, path: Path | None = None, session: str | None = None, run: Any = None,
                 fence: Callable[[], None] | None = None):
        self.run, self.session = run, session
        self.fence = fence
        self.path = Path(path) if path is not None else working_copy(run, session)
        self.meter = UsageMeter()
        self.lock = threading.RLock()
        self._local = threading.local()
        self._every, self._seconds = _publish_every()
        self._writer = os.urandom(3).hex()
        self._seq = 0
        self._pending: list[tuple] = []  # (key, value, id, prompt_tokens, completion_tokens) not yet published
        self._held: tuple[list, list] = ([], [])  # usage taken for a publish that failed: sent with the next
        self._last = time.time()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        db = self._conn()
        db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS imported (name TEXT PRIMARY KEY)")
        # answers stored here and not yet published, with what a salvage needs to count them
        db.execute("CREATE TABLE IF NOT EXISTS unpublished (key TEXT PRIMARY KEY, model TEXT, stage TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('started', ?)", (str(self.meter.created),))
        if run is not None:
            self.replay()
            if session is not None:
                self.salvage()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            _ensure_wal(conn, self.path)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    # -- replay: what every writer published, into the local copy
    def replay(self) -> int:
        """Import the answer files (and an old-style `cache.sqlite`) not imported yet; returns the
        files imported."""
        db = self._conn()
        done = {n for (n,) in db.execute("SELECT name FROM imported")}
        n = 0
        legacy = None if is_url(self.run) else Path(self.run) / CACHE
        if legacy is not None and legacy.exists() and CACHE not in done:
            self._import(CACHE, _legacy_answers(legacy))
            n += 1
        for f in answer_files(self.run):
            name = name_of(f)
            if name in done:
                continue
            try:
                frame = read_answer_file(f, ["key", "value"])
            except FileNotFoundError:
                continue
            self._import(name, frame.iter_rows())
            n += 1
        return n

    def _import(self, name: str, rows: Iterable[tuple[str, str]]) -> None:
        db = self._conn()
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO results (key, value) VALUES (?, ?)", rows)
        db.execute("INSERT OR IGNORE INTO imported (name) VALUES (?)", (name,))
        db.execute("COMMIT")

    def salvage(self) -> int:
        """Publish the answers that processes which died on this machine had stored but not yet
        published (their working copies outlive them), counted under their own sessions: a killed
        run or Ray actor then costs only its requests in flight. Each leftover is claimed by a
        rename, so of several processes opening at once one salvages it. Returns answers salvaged."""
        return salvage_leftovers(self.run, self.fence, self._import)

    # -- the cache
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

    def put_many(self, items: Iterable[tuple]) -> None:
        """Store answers, each `(key, value)` or `(key, value, model, stage)`, here; publish them
        (with the usage counted since the last publish) when a flush is due. With model and stage,
        an answer this process dies before publishing is salvaged, counted, by the next process
        that opens the run's cache on this machine (`salvage`)."""
        items = list(items)
        rows = [(it[0], json.dumps(it[1])) for it in items]
        with self.lock:
            self._raise_failed()
            if rows:
                db = self._conn()
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)
                if self.run is not None:
                    db.executemany("INSERT OR REPLACE INTO unpublished (key, model, stage) VALUES (?, ?, ?)",
                                   [(it[0], it[2], it[3]) for it in items if len(it) == 4])
                db.execute("COMMIT")
            if self.run is None:
                return
            self._pending += [(it[0], s, it[1].get("id"), it[1].get("prompt_tokens"), it[1].get("completion_tokens"))
                              for it, (_, s) in zip(items, rows)]
            if len(self._pending) >= self._every or time.time() - self._last >= self._seconds:
                self._publish()
            elif self._timer is None:
                self._timer = threading.Thread(target=self._tick, name="answers-publisher", daemon=True)
                self._timer.start()

    def flush(self) -> None:
        """Publish every answer not published yet, and the usage counted since the last publish."""
        if self.run is None:
            return
        with self.lock:
            self._raise_failed()
            self._publish()

    def _raise_failed(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def _tick(self) -> None:
        """Publish at least every `_seconds` (a worker waiting on a slow model still publishes)."""
        while not self._stop.wait(self._seconds / 2):
            with self.lock:
                if time.time() - self._last < self._seconds:
                    continue
                try:
                    self._publish()
                except BaseException as exc:  # raised on the caller's next put or flush
                    self._error = exc
                    return

    def _publish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        usage, busy = self.meter.take() if self.session else ([], [])
        usage, busy = self._held[0] + usage, self._held[1] + busy
        self._last = time.time()
        if not (self._pending or usage or busy):
            return
        answers, name = self._pending, f"{self.session or 'nosession'}-{self._writer}-{self._seq:06d}.parquet"
        meta = {"session": self.session, "started": self.meter.created, "usage": usage, "busy": busy}
        cols = list(zip(*answers)) if answers else [[]] * 5
        table = pa.table({"key": pa.array(cols[0], pa.string()), "value": pa.array(cols[1], pa.string()),
                          "id": pa.array(cols[2], pa.string()), "prompt_tokens": pa.array(cols[3], pa.int64()),
                          "completion_tokens": pa.array(cols[4], pa.int64())})
        table = table.replace_schema_metadata({ANSWER_META: json.dumps(meta).encode()})
        try:
            write_atomic(join(self.run, ANSWERS, name), lambda tmp: pq.write_table(table, tmp, compression="zstd"),
                         before=self.fence)
        except BaseException:
            self._held = (usage, busy)  # answers stay pending: the next flush retries them all
            raise
        self._held = ([], [])
        log.debug("published %d answers as %s", len(answers), name)
        db = self._conn()
        db.execute("BEGIN")
        db.executemany("DELETE FROM unpublished WHERE key = ?", [(a[0],) for a in answers])
        db.execute("INSERT OR IGNORE INTO imported (name) VALUES (?)", (name,))
        db.execute("COMMIT")
        self._pending = []
        self._seq += 1

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        try:
            self.flush()
        except LockLostError:
            keep_for_salvage(self.path)  # what it could not publish is salvaged by the next run on this machine
            raise
        finally:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None


def _legacy_answers(path: Path) -> Iterator[tuple[str, str]]:
    """The answers of an old-style `cache.sqlite` (read-only; an unreadable one holds none)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error:
        return
    try:
        yield from conn.execute("SELECT key, value FROM results")
    except sqlite3.DatabaseError:
        return
    finally:
        conn.close()