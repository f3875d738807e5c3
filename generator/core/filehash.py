"""Content hashes of input files (model weights, seed data, library files) for provenance,
computed once and cached by (path, size, mtime) in `$SYNTHGEN_CACHE/file_hashes.sqlite`.

Bounded: one `Hasher` reads at most `budget` bytes in full (`SYNTHGEN_HASH_BUDGET_GB`, default
4); a file past the budget gets a sampled fingerprint (its size and 16 MiB read at 16 evenly
spaced places), marked `sampled-sha256`, so a run never waits minutes on a large model. A file in
a Hugging Face cache is a link to a blob named by its SHA-256: that name is its hash, read free.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from pathlib import Path

from generator.core.paths import cache_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SAMPLES = 16
_BLOB = re.compile(r"[0-9a-f]{64}")


def default_budget() -> int:
    try:
        gb = float(os.environ.get("SYNTHGEN_HASH_BUDGET_GB") or 4)
    except ValueError:
        log.warning("SYNTHGEN_HASH_BUDGET_GB=%r is not a number; using 4", os.environ.get("SYNTHGEN_HASH_BUDGET_GB"))
        gb = 4.0
    return int(gb * (1 << 30))


def _full(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _sampled(path: Path, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for k in range(SAMPLES):
            f.seek(max(0, (size - CHUNK) * k // (SAMPLES - 1)))
            h.update(f.read(CHUNK))
    return h.hexdigest()


class Hasher:
    """Hashes files, each at most once per (path, size, mtime) across processes."""

    def __init__(self, budget: int | None = None, db: Path | None = None):
        self.left = default_budget() if budget is None else budget
        self.db = db or cache_dir() / "file_hashes.sqlite"
        self._conn: sqlite3.Connection | None = None

    def _cache(self) -> sqlite3.Connection | None:
        if self._conn is None:
            try:
                self.db.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.db, timeout=10)
                self._conn.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT, size INTEGER, mtime_ns INTEGER, "
                                   "kind TEXT, digest TEXT, PRIMARY KEY (path, size, mtime_ns, kind))")
            except (OSError, sqlite3.Error) as exc:  # a read-only cache: hashes are computed, not kept
                log.warning("file hash cache %s unusable (%s); hashing without it", self.db, exc)
                return None
        return self._conn

    def hash(self, path: Path) -> dict:
        """{"sha256": hex} or {"sampled-sha256": hex}, with the size in bytes."""
        real = path.resolve()
        st = real.stat()
        if _BLOB.fullmatch(real.name) and real.parent.name == "blobs":  # a Hugging Face cache blob
            return {"sha256": real.name, "bytes": st.st_size}
        kind = "sha256" if st.st_size <= self.left else "sampled-sha256"
        conn = self._cache()
        key = (str(real), st.st_size, st.st_mtime_ns)
        if conn is not None:
            for want in ("sha256", kind):  # a full hash serves a later sampled request too
                row = conn.execute("SELECT digest FROM hashes WHERE path=? AND size=? AND mtime_ns=? AND kind=?",
                                   (*key, want)).fetchone()
                if row:
                    return {want: row[0], "bytes": st.st_size}
        if kind == "sha256":
            digest = _full(real)
            self.left -= st.st_size
        else:
            digest = _sampled(real, st.st_size)
        if conn is not None:
            try:
                with conn:
                    conn.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", (*key, kind, digest))
            except sqlite3.Error as exc:  # only the cache is lost: the hash itself is right
                log.warning("file hash cache %s: cannot store (%s)", self.db, exc)
        return {kind: digest, "bytes": st.st_size}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
