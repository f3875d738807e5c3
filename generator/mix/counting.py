"""Counting documents' tokens on every core: in this process, or in a pool of worker processes.

Worker processes start with `spawn`: a script that calls build_mix must guard its top level
with `if __name__ == "__main__":`; where the workers cannot start, counting goes on here.

Small inputs are counted here (the word-cache counter of `generator.core.wordcount` when the
tokenizer allows it, else the tokenizer's multi-threaded batch encoder). Large files go to `workers` processes that
each run a single-threaded tokenizer and the word cache, so reading and parsing in this process
overlaps with counting, and the Python-level work runs on every core too. Both give the same
numbers: the count is exact either way.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

import numpy as np

from generator.core.wordcount import PretokenCounter, count_documents, init_worker, work
from generator.mix.tokens import TokenizerInfo

POOL_MIN_BYTES = 48 << 20  # files smaller than this are counted in this process
TASK_DOCS = 4_000  # documents per worker task


class _Done:
    def __init__(self, value: np.ndarray):
        self.value = value

    def result(self) -> np.ndarray:
        return self.value


class _Joined:
    def __init__(self, owner: "TokenCounter", parts: list[tuple[Future, list[str | None]]]):
        self.owner, self.parts = owner, parts

    def result(self) -> np.ndarray:
        vals = []
        for fut, texts in self.parts:
            try:
                vals.append(fut.result())
            except BrokenProcessPool:  # workers could not start (e.g. an unguarded script): count here
                self.owner.workers = 1
                vals.append(count_documents(texts, self.owner.tok.tokenizer, self.owner.fast))
        return np.concatenate(vals).astype(np.int64) if vals else np.zeros(0, dtype=np.int64)


class TokenCounter:
    """Counts documents (+1 EOS each): `submit(texts, big)` returns an object with `.result()`.

    workers: processes for big inputs (default: the cores available; 0 or 1 = count here).
    word_cache: use generator.core.wordcount's exact word cache where the tokenizer allows it."""

    def __init__(self, tok: TokenizerInfo, workers: int | None = None, word_cache: bool = True):
        self.tok = tok
        self.workers = _cores() if workers is None else workers
        self.word_cache = word_cache
        self.fast = PretokenCounter.build(tok.tokenizer, tok.path) if word_cache else None
        self._pool: ProcessPoolExecutor | None = None

    @property
    def method(self) -> str:
        how = "word cache + batch encoder" if self.fast is not None else "batch encoder"
        return f"{how}, {self.workers} worker processes for files over {POOL_MIN_BYTES >> 20} MB" \
            if self.workers > 1 else f"{how}, in one process"

    def submit(self, texts: Sequence[str | None], big: bool = False) -> Any:
        if not big or self.workers <= 1:
            return _Done(count_documents(texts, self.tok.tokenizer, self.fast))
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_worker,
                                             initargs=(str(self.tok.path), self.word_cache))
        parts = [list(texts[i:i + TASK_DOCS]) for i in range(0, len(texts), TASK_DOCS)]
        return _Joined(self, [(self._pool.submit(work, p), p) for p in parts])

    def close(self) -> None:
        if self._pool is not None:
            try:
                self._pool.shutdown(wait=True, cancel_futures=True)
            except BrokenProcessPool:
                pass
            self._pool = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
