"""A deterministic stand-in model for fast tests of control flow (never the only test of a feature).

`script` maps a request id (or `*`) to a list of answers used attempt after attempt; without a
script it writes a short text derived from the prompt, or a minimal JSON object for schemas.
An answer ending in `<truncated>` is cut by max_tokens. For a request with reasoning markers, an
answer that starts with a thinking block (`<think>...</think>answer`) is split like a thinking
model's: reasoning that never ends has no answer, and reasoning longer than the request's
`max_reasoning_tokens` (in words) is cut there, its end forced, and the answer follows (the
scripted one after the end marker, else the default answer).
"""
from __future__ import annotations

import collections
import hashlib
import json
from typing import Any, Callable, Iterable, Iterator

from generator.core.backend import ProgressFn, Request, RequestFeed, Result
from generator.core.reasoning import split
from generator.library.schema_examples import minimal_instance


class FakeBackend:
    def __init__(self, model: str = "fake", script: dict[str, list[str]] | None = None,
                 responder: Callable[[Request], str] | None = None, fail: set[str] | None = None,
                 lifo: bool = False, template: str | None = None):
        self.model = model
        self.template = template  # the chat template source it reports (tool_calling: auto reads it)
        self.lifo = lifo  # stream: finish the newest queued request first
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.responder = responder
        self.fail = fail or set()
        self.calls: list[Request] = []

    def _answer(self, r: Request) -> tuple[str, str]:
        for key in (r.id, "*"):
            if self.script.get(key):
                text = self.script[key].pop(0)
                return text, ("length" if text.endswith("<truncated>") else "stop")
        if self.responder:
            text = self.responder(r)
            return text, ("length" if text.endswith("<truncated>") else "stop")
        return self._default(r), "stop"

    @staticmethod
    def _default(r: Request) -> str:
        if r.json_schema is not None:
            return json.dumps(minimal_instance(r.json_schema, r.id))
        digest = hashlib.sha1(f"{r.messages[-1]['content']}|{r.sampling.seed}".encode()).hexdigest()
        return f"Answer {digest[:12]} to: {r.messages[-1]['content'][:60]}"

    def _think(self, r: Request, res: Result) -> Result:
        """`res` of a request with reasoning markers, split as a thinking model's (module docstring)."""
        part = split(res.text, r.reasoning)
        if part.reasoning is None:
            return res
        words = part.reasoning.split()
        budget = r.max_reasoning_tokens
        if budget is not None and len(words) > budget:
            answer = part.text if part.ended else self._default(r)
            res.reasoning, res.reasoning_tokens = " ".join(words[:budget]), budget
            res.text, res.meta = answer, {"reasoning_forced": True}
            res.finish_reason = res.finish_reason if part.ended else "stop"
        else:
            res.reasoning, res.reasoning_tokens, res.text = part.reasoning, len(words), part.text
            if not part.ended:
                res.meta = {"reasoning_unfinished": True}
        res.completion_tokens = res.reasoning_tokens + len(res.text.split())
        return res

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        for r in requests:
            yield self._one(r, on_result)

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        """Finishes queued requests one at a time, oldest first like a real engine's equal-length
        requests, or newest first with `lifo=True` (so a test can show a caller does not rely on
        arrival order). Each one goes through `generate`, so a subclass that wraps `generate` (to
        inject a crash or a delay) wraps the stream too."""
        in_flight: collections.deque[Request] = collections.deque()
        while True:
            in_flight.extend(feed.take(timeout=0.0 if in_flight else None))
            if not in_flight:
                if feed.exhausted():
                    return
                continue
            yield from self.generate([in_flight.pop() if self.lifo else in_flight.popleft()], on_result)

    def _one(self, r: Request, on_result: ProgressFn | None) -> Result:
        self.calls.append(r)
        if r.id in self.fail:
            res = Result(id=r.id, text="", finish_reason="error", error="injected failure")
        else:
            text, reason = self._answer(r)
            text = text.removesuffix("<truncated>")
            res = Result(id=r.id, text=text, finish_reason=reason,
                         prompt_tokens=sum(len(m["content"].split()) for m in r.messages),
                         completion_tokens=len(text.split()))
            if r.reasoning is not None:
                res = self._think(r, res)
        if on_result:
            on_result(res)
        return res

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "name": self.model}

    def chat_template(self) -> str | None:
        return self.template

    def close(self) -> None:
        pass
