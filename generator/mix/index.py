"""Indexing one source file: read it chunk by chunk, count each row's tokens (or take them from the
token cache), and keep per chunk only what selection needs, never the text."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from generator.mix.chat import ChatRenderer
from generator.mix import counting
from generator.mix.counting import TokenCounter
from generator.mix.digest import file_sha256
from generator.mix.reader import Chunk, scan_file
from generator.mix.tokcache import cache_file, read_cache, write_cache
from generator.mix.tokens import TokenizerInfo

MAX_IN_FLIGHT = 2  # chunks whose texts wait for the counting workers (bounds memory)


@dataclass
class IndexContext:
    tok: TokenizerInfo
    chat: ChatRenderer
    counter: TokenCounter
    cache_dir: Path
    stats: dict
    layout: str
    say: Callable[[str], None] = lambda _msg: None
    stage_dir: Path | None = None  # where shards of remote run folders are downloaded for this build


@dataclass
class ChunkRows:
    """What extracting one chunk gives: `info` is kept for selection, `texts()` is what is counted."""
    info: Any
    texts: Callable[[], list[str | None]]


@dataclass
class FileScan:
    sha256: str
    rows: int
    chunks: list[Chunk]
    infos: list[Any]
    columns: list[str]
    n_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # per row, all rows


def column(df: pl.DataFrame, name: str) -> list:
    """A column as Python values; all None when this chunk has no such field."""
    return df.get_column(name).to_list() if name in df.columns else [None] * df.height


def index_file(file: Path, columns: list[str] | None, extract: Callable[[pl.DataFrame, Chunk], ChunkRows],
               key: dict, ctx: IndexContext, cache_empty: bool = False) -> FileScan:
    """Scan `file` once; count every row unless the token cache has the file's counts.

    A file without rows is left out of the cache and its statistics unless `cache_empty`."""
    t0 = time.perf_counter()
    sha = file_sha256(file)
    path = cache_file(sha, key, ctx.tok, ctx.cache_dir)
    cached = read_cache(path)
    scan = _scan(file, sha, columns, extract, ctx, count=cached is None)
    if scan.rows == 0 and not cache_empty:
        return scan
    if cached is not None and len(cached) != scan.rows:  # a stale cache entry: count again
        cached = None
        scan = _scan(file, sha, columns, extract, ctx, count=True)
    if cached is not None:
        scan.n_tokens = cached
    tokens = int(scan.n_tokens[scan.n_tokens > 0].sum())
    if cached is not None:
        ctx.stats["cache_hits"] += 1
        how = "tokens (counts from the cache)"
    else:
        ctx.stats["cache_misses"] += 1
        ctx.stats["tokens_counted"] += tokens
        write_cache(path, file, sha, key, ctx.tok, scan.n_tokens)
        how = "tokens counted"
    dt = time.perf_counter() - t0
    ctx.say(f"  {file.name}: {scan.rows:,} rows, {tokens:,} {how} in {dt:.1f} s "
            f"({tokens / max(dt, 1e-9) / 1e6:.2f}M/s)")
    return scan


def _scan(file: Path, sha: str, columns: list[str] | None, extract: Callable, ctx: IndexContext,
          count: bool) -> FileScan:
    big = count and file.stat().st_size >= counting.POOL_MIN_BYTES
    chunks: list[Chunk] = []
    infos: list[Any] = []
    cols: dict[str, None] = {}
    waiting: list[Any] = []
    done: list[np.ndarray] = []
    for chunk, df, names in scan_file(file, columns):
        cols.update(dict.fromkeys(names))
        rows = extract(df, chunk)
        chunks.append(chunk)
        infos.append(rows.info)
        if count:
            if len(waiting) >= MAX_IN_FLIGHT:
                done.append(waiting.pop(0).result())
            waiting.append(ctx.counter.submit(rows.texts(), big))
        del df, rows
    done += [w.result() for w in waiting]
    n = sum(c.rows for c in chunks)
    counts = np.concatenate(done).astype(np.int64) if done else np.zeros(0, dtype=np.int64)
    return FileScan(sha256=sha, rows=n, chunks=chunks, infos=infos, columns=list(cols), n_tokens=counts)
