"""The request/answer contract every stage of every run shares: how an answer is classified
(status, training text, error), which answers earn another attempt, and the shard a record
belongs to.

A stage's try n sends seed `seed + n - 1`, so a retry is a new request with its own cache entry,
and a resumed run replays every try it already paid for.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from generator.core.backend import Request, Result, Sampling
from generator.library.renderers import render
from generator.library.schema_bounds import fits

RETRYABLE = {"empty", "invalid_json", "error"}
STAGE = "generate"  # a single-stage spec's one stage (its node name, and its name in the usage ledger)


@dataclass
class Shard:
    name: str
    round: int
    rows: list[dict[str, Any]]  # plan rows (see run_folder.PLAN_SCHEMA)


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


@dataclass
class Answer:
    """One classified answer: `status` in ok, truncated, empty, invalid_json, error, no_answer (a
    thinking model's reasoning never ended: cut by max_tokens, or the model stopped inside it)."""

    status: str
    text: str                 # the training text: the completion, or a structured answer rendered
    error: str | None = None
    data: Any = None          # the parsed JSON of a structured answer

    @property
    def usable(self) -> bool:
        return self.status in ("ok", "truncated")


def classify(res: Result, structured: bool, renderer: str | None, seed: int) -> Answer:
    """Status, training text and error of one answer. A structured answer is parsed and, when its
    template names a renderer, rendered to plain text with `seed` (the plan's, for the entry stage)."""
    if res.finish_reason == "error" or res.error:
        return Answer("error", "", res.error or "backend error")
    completion = res.text or ""
    if res.meta.get("reasoning_unfinished") and not completion.strip():
        how = "cut by max_tokens" if res.finish_reason == "length" else "never ended"
        return Answer("no_answer", "", f"the reasoning was {how} before the answer ({res.reasoning_tokens} "
                      f"reasoning tokens); raise max_tokens or set max_reasoning_tokens")
    if not completion.strip():
        return Answer("empty", "")
    if not structured:
        return Answer("truncated" if res.finish_reason == "length" else "ok", completion.strip())
    try:
        data = json.loads(completion)
    except json.JSONDecodeError as exc:
        # a structured answer cut by max_tokens is truncated, not malformed
        status = "truncated" if res.finish_reason == "length" else "invalid_json"
        return Answer(status, "", f"JSON: {exc.msg} at char {exc.pos}")
    if not renderer:
        return Answer("ok", json.dumps(data, ensure_ascii=False), data=data)
    try:
        return Answer("ok", render(renderer, data, seed), data=data)
    except (ValueError, KeyError, TypeError) as exc:
        return Answer("invalid_json", "", f"renderer {renderer}: {exc}", data=data)


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
    """A single-stage record's request for try `attempt` (what the one-node pipeline sends)."""
    return Request(id=f"{row['id']}#{attempt}", messages=tuple(row["messages"]),
                   sampling=Sampling(temperature=row["temperature"], top_p=row["top_p"],
                                     max_tokens=int(row["max_tokens"]), seed=int(row["seed"]) + attempt - 1,
                                     repetition_penalty=row.get("repetition_penalty")),
                   json_schema=schemas.get(row["template"]))
