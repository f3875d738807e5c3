"""What a run's model calls cost, counted as they happen: calls, cache hits and tokens per (model,
stage) and each model's busy time (`UsageMeter`), under the id of the `synthgen run` invocation that
spent them (`new_session`). The request cache writes each count with the answers it belongs to.
"""
from __future__ import annotations

import os
import threading
import time

__all__ = ["USAGE_COLUMNS", "UsageMeter", "new_session"]


def new_session() -> str:
    """An id for one `synthgen run` invocation: usage is kept per session and summed over them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"-{os.getpid()}-{os.urandom(2).hex()}"


# reasoning_tokens: of completion_tokens, those a thinking model spent reasoning (last, so the
# ledger rows of earlier runs, without it, read as 0)
USAGE_COLUMNS = ("requests", "cache_hits", "errors", "prompt_tokens", "completion_tokens", "reasoning_tokens")


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
                 error: bool = False, reasoning_tokens: int = 0) -> None:
        with self._lock:
            row = self._row(model, stage)
            row["requests"] += 1
            row["errors"] += int(error)
            row["prompt_tokens"] += int(prompt_tokens or 0)
            row["completion_tokens"] += int(completion_tokens or 0)
            row["reasoning_tokens"] += int(reasoning_tokens or 0)
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
