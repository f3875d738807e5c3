"""Each process's local SQLite working copy of a run's request cache: where it lives (one per
process, run folder and session, dropped at exit unless kept for a salvage), and the salvage of
the copies that processes which died on this machine left with answers they never published.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

from generator.core.run_layout import ANSWER_META, ANSWERS
from generator.core.storage import join, write_atomic
from generator.engine.usage_meter import USAGE_COLUMNS

log = logging.getLogger(__name__)

_WORKING: dict[tuple[str, str], Path] = {}  # (run, session) -> this process's working copy
_KEPT: set[Path] = set()  # working copies left for a salvage: their answers could not be published


def working_copy(run: Any, session: str | None) -> Path:
    """This process's local SQLite for a run folder and session: kept while the process lives, so
    rounds (several executes in one session) replay only the files published since."""
    key = (str(run), session or "")
    if key not in _WORKING:
        import atexit

        root = _local_root()
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{_digest(run)}-{session or 'nosession'}-{os.getpid()}-{os.urandom(3).hex()}.sqlite"
        _WORKING[key] = path

        def drop(p: Path = path) -> None:
            if p in _KEPT:
                return
            for suffix in ("", "-wal", "-shm"):
                Path(f"{p}{suffix}").unlink(missing_ok=True)

        atexit.register(drop)
    return _WORKING[key]


def keep_for_salvage(path: Path) -> None:
    """Leave the working copy at `path` on disk at exit: its answers could not be published, so the
    next process to open the run on this machine salvages them."""
    _KEPT.add(path)


def _local_root() -> Path:
    import tempfile

    return Path(os.environ.get("SYNTHGEN_LOCAL_CACHE") or tempfile.gettempdir()) / "synthgen-answers"


def _digest(run: Any) -> str:
    import hashlib

    return hashlib.sha256(str(run).encode()).hexdigest()[:12]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _leftovers(run: Any) -> Iterator[tuple[Path, str]]:
    """Working copies of `run` left on this machine by processes that died before publishing
    everything (a SIGKILL, an OOM kill, a lost Ray actor), with the session each belonged to."""
    root, digest = _local_root(), _digest(run)
    if not root.is_dir():
        return
    for path in root.glob(f"{digest}-*.sqlite"):
        head, _, _rand = path.name[len(digest) + 1:-len(".sqlite")].rpartition("-")  # SESSION-PID-RAND
        session, _, pid = head.rpartition("-")
        if session and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            yield path, session


def salvage_leftovers(run: Any, fence: Callable[[], None] | None,
                      imported: Callable[[str, list[tuple[str, str]]], None]) -> int:
    """Publish the answers of the working copies `_leftovers` finds (see `RequestCache.salvage`);
    `imported(name, rows)` records each published file and its answers in the caller's copy.
    Returns answers salvaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for path, session in _leftovers(run):
        claimed = path.with_name(f".{path.name}.salvage-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except OSError:  # another process claimed it first
            continue
        for suffix in ("-wal", "-shm"):  # the WAL holds the dead process's last commits
            if Path(f"{path}{suffix}").exists():
                os.rename(f"{path}{suffix}", f"{claimed}{suffix}")
        try:
            conn = sqlite3.connect(claimed, timeout=60)
            try:
                rows = conn.execute("SELECT u.key, r.value, u.model, u.stage FROM unpublished u "
                                    "JOIN results r ON r.key = u.key").fetchall()
                started = float((conn.execute("SELECT v FROM meta WHERE k = 'started'").fetchone() or [0])[0])
            except (sqlite3.DatabaseError, ValueError):
                rows, started = [], 0.0
            finally:
                conn.close()
            if rows:
                values = [json.loads(v) for _, v, _, _ in rows]
                counts: dict[tuple[str, str], list[int]] = {}
                for (_, _, model, stage), v in zip(rows, values):
                    c = counts.setdefault((model, stage), [0] * len(USAGE_COLUMNS))
                    c[0] += 1
                    c[3] += int(v.get("prompt_tokens") or 0)
                    c[4] += int(v.get("completion_tokens") or 0)
                    c[5] += int(v.get("reasoning_tokens") or 0)
                meta = {"session": session, "started": started or None, "salvaged": True,
                        "usage": [[m, st, *c] for (m, st), c in counts.items()], "busy": []}
                table = pa.table({"key": pa.array([r[0] for r in rows], pa.string()),
                                  "value": pa.array([r[1] for r in rows], pa.string()),
                                  "id": pa.array([v.get("id") for v in values], pa.string()),
                                  "prompt_tokens": pa.array([v.get("prompt_tokens") for v in values], pa.int64()),
                                  "completion_tokens": pa.array([v.get("completion_tokens") for v in values],
                                                                pa.int64())})
                table = table.replace_schema_metadata({ANSWER_META: json.dumps(meta).encode()})
                name = f"{session}-salvage{os.urandom(3).hex()}-000000.parquet"
                write_atomic(join(run, ANSWERS, name),
                             lambda tmp: pq.write_table(table, tmp, compression="zstd"), before=fence)
                imported(name, [(r[0], r[1]) for r in rows])
                total += len(rows)
                log.info("salvaged %d answers a stopped process (session %s) had not published", len(rows),
                         session)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{claimed}{suffix}").unlink(missing_ok=True)
    return total
