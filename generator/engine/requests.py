"""Turning planned records into finished rows: requests, cache replay, retries, status flags.

Shared by every executor, so a shard written by a Ray actor is byte-compatible with one
written locally. A record's attempt n uses seed `seed + n - 1`, so a retry is a new request
with its own cache entry, and a resumed run replays every attempt it already paid for.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from generator.core.redact import scrub_text
from generator.core.backend import Backend, Request, RequestFeed, Result, Sampling, stream_in_windows
from generator.engine.run_folder import RequestCache
from generator.library.schema_bounds import fits

RETRYABLE = {"empty", "invalid_json", "error"}
STAGE = "generate"  # a single-stage spec's one stage, as usage names it


@dataclass
class Shard:
    name: str
    round: int
    rows: list[dict[str, Any]]  # plan rows (see store.PLAN_SCHEMA)


@dataclass
class ShardStats:
    name: str
    records: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, rows: list[dict], started: float) -> "ShardStats":
        """Tally a landed shard's rows (statuses, tokens) and the time since `started`."""
        for r in rows:
            self.statuses[r["status"]] = self.statuses.get(r["status"], 0) + 1
            self.prompt_tokens += r["prompt_tokens"] or 0
            self.completion_tokens += r["completion_tokens"] or 0
        self.seconds = time.time() - started
        return self


def retryable(status: str, schema: dict | None, max_tokens: int) -> bool:
    """Whether an answer with `status` earns another attempt (with the next seed).

    Empty, malformed and failed answers do. So does a structured answer cut off by `max_tokens` when
    its schema's longest answer fits that budget: the grammar closes every ordinary answer in time,
    so a cut one is a degenerate run that the next seed rarely repeats. A cut free-text answer, or
    one whose schema needs more room than the budget, would only be cut again."""
    if status in RETRYABLE:
        return True
    return status == "truncated" and fits(schema, max_tokens)


def make_request(row: dict, attempt: int, schemas: dict[str, dict | None]) -> Request:
    seed = int(row["seed"]) + attempt - 1
    return Request(id=f"{row['id']}#{attempt}", messages=tuple(row["messages"]),
                   sampling=Sampling(temperature=row["temperature"], top_p=row["top_p"],
                                     max_tokens=int(row["max_tokens"]), seed=seed,
                                     repetition_penalty=row.get("repetition_penalty")),
                   json_schema=schemas.get(row["template"]))


def classify(row: dict, res: Result, renderers: dict[str, str | None]) -> tuple[str, str, str | None]:
    """(status, training text, error) for one answer."""
    if res.finish_reason == "error" or res.error:
        return "error", "", res.error or "backend error"
    completion = res.text or ""
    if not completion.strip():
        return "empty", "", None
    if not row.get("structured"):
        status = "truncated" if res.finish_reason == "length" else "ok"
        return status, completion.strip(), None
    try:
        data = json.loads(completion)
    except json.JSONDecodeError as exc:
        # a structured answer cut by max_tokens is truncated, not malformed
        status = "truncated" if res.finish_reason == "length" else "invalid_json"
        return status, "", f"JSON: {exc.msg} at char {exc.pos}"
    renderer = renderers.get(row["template"])
    if not renderer:
        return "ok", json.dumps(data, ensure_ascii=False), None
    from generator.library.renderers import render

    try:
        return "ok", render(renderer, data, int(row["seed"])), None
    except (ValueError, KeyError, TypeError) as exc:
        return "invalid_json", "", f"renderer {renderer}: {exc}"


def generate_rows(backend: Backend, rows: list[dict], cache: RequestCache | None, retries: int,
                  schemas: dict[str, dict | None], renderers: dict[str, str | None],
                  on_final: Callable[[dict], None], on_call: Callable[[int], None] | None = None) -> int:
    """Run every row to a final status; `on_final(row)` gets each finished generation row.

    Every request goes into one feed of a continuously fed backend: a retry is put the moment the
    answer that needs it lands, and each answer is written to the request cache as it lands, so a
    crash loses only the requests in flight. Returns the number of requests sent to the backend
    (cache hits are free)."""
    feed = RequestFeed()
    waiting: dict[str, tuple[dict, Request, int]] = {}  # request id -> (row, request, attempt)

    def settle(row: dict, attempt: int, res: Result) -> bool:
        """True when the row is final (and handed to on_final); False when it needs a retry."""
        status, text, error = classify(row, res, renderers)
        if attempt <= retries and retryable(status, schemas.get(row["template"]), int(row["max_tokens"])):
            return False
        on_final({**row, "completion": res.text, "text": text, "prompt_tokens": res.prompt_tokens,
                  "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
                  "status": status, "attempts": attempt, "error": scrub_text(error) if error else error})
        return True

    def submit(row: dict, attempt: int) -> None:
        """Replay the attempts already paid for; put the first one that is not into the feed."""
        while True:
            req = make_request(row, attempt, schemas)
            hit = cache.get(req.payload_hash(row["model"])) if cache is not None else None
            if hit is None:
                waiting[req.id] = (row, req, attempt)
                if cache is not None:
                    cache.meter.submitted(row["model"])
                feed.put(req)
                return
            cache.meter.hit(row["model"], STAGE)
            if settle(row, attempt, Result(**hit)):
                return
            attempt += 1

    for row in rows:
        submit(row, 1)
    if not waiting:
        return 0
    native = getattr(backend, "stream", None)
    results = native(feed) if native else stream_in_windows(backend, feed, window=len(waiting))
    calls = 0
    try:
        for res in results:
            calls += 1
            row, req, attempt = waiting.pop(res.id)
            if cache is not None:  # errors are counted, not worth replaying
                failed = res.finish_reason == "error"
                cache.meter.answered(row["model"], STAGE, res.prompt_tokens, res.completion_tokens, error=failed)
                cache.put_many([] if failed else [(req.payload_hash(row["model"]), res.__dict__)])
            if not settle(row, attempt, res):
                submit(row, attempt + 1)
            if on_call:
                on_call(1)
            if not waiting:
                feed.close()  # the contract: nothing outstanding, so the stream may end
    finally:
        close = getattr(results, "close", None)
        if close:
            close()  # a stream abandoned by an exception aborts what it still has in flight
    if waiting:
        raise RuntimeError(f"backend stream ended with {len(waiting)} requests unanswered")
    return calls


class ShardAssembler:
    """Collects finished rows and hands back each shard the moment all its records are in."""

    def __init__(self, shards: Iterable[Shard], write: Callable[[Shard, list[dict]], None]):
        self.write = write
        self.shards = {s.name: s for s in shards}
        self.owner: dict[str, str] = {}
        self.done: dict[str, dict[str, dict]] = {}
        for s in self.shards.values():
            self.done[s.name] = {}
            for r in s.rows:
                self.owner[r["id"]] = s.name
        self.started = time.time()

    def add(self, row: dict) -> str | None:
        name = self.owner[row["id"]]
        bucket = self.done[name]
        bucket[row["id"]] = row
        shard = self.shards[name]
        if len(bucket) == len(shard.rows):
            ordered = [bucket[r["id"]] for r in shard.rows]  # plan order, so files are deterministic
            self.write(shard, ordered)
            del self.done[name]
            return name
        return None
