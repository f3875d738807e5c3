"""A deterministic backend whose answers exercise every answer class (ok, cut, empty, malformed
JSON, backend error), so rows written by two versions of the engine can be compared exactly.

Each answer is a function of the request's last message and seed alone, never of arrival order."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Iterator

from generator.core.backend import Request, RequestFeed, Result
from generator.library.schema_examples import minimal_instance

SPECS = ["instruct", "ladder_multi_topic_style_persona", "ladder_topic", "ladder_topic_style",
         "ladder_topic_style_persona", "math", "textbook", "tiny", "math@r0", "textbook@r0"]
LIMIT = 24


class GoldenBackend:
    def __init__(self, model: str = "golden"):
        self.model = model
        self.calls = 0

    def _one(self, r: Request) -> Result:
        self.calls += 1
        key = f"{r.messages[-1]['content']}|{r.sampling.seed}"
        h = int(hashlib.sha1(key.encode()).hexdigest(), 16)
        kind = h % 10
        if kind == 0:
            return Result(id=r.id, text="", finish_reason="error", error="injected failure")
        if kind == 1:
            return Result(id=r.id, text="  ", finish_reason="stop", prompt_tokens=7, completion_tokens=1)
        if r.json_schema is not None:
            body = json.dumps(minimal_instance(r.json_schema, key))
            if kind == 2:
                return Result(id=r.id, text=body[: len(body) // 2], finish_reason="length",
                              prompt_tokens=11, completion_tokens=r.sampling.max_tokens)
            return Result(id=r.id, text=body, finish_reason="stop", prompt_tokens=11, completion_tokens=len(body) // 4)
        text = f"Answer {h % 10**8} to: {r.messages[-1]['content'][:40]}"
        return Result(id=r.id, text=text, finish_reason="length" if kind == 2 else "stop",
                      prompt_tokens=11, completion_tokens=len(text.split()))

    def generate(self, requests: Iterable[Request], on_result=None) -> Iterator[Result]:
        for r in requests:
            yield self._one(r)

    def stream(self, feed: RequestFeed, on_result=None) -> Iterator[Result]:
        while True:
            batch = feed.take(timeout=None)
            if not batch:
                if feed.exhausted():
                    return
                continue
            for r in reversed(batch):  # not in arrival order
                yield self._one(r)

    def describe(self) -> dict[str, Any]:
        return {"backend": "golden", "name": self.model}

    def close(self) -> None:
        pass
