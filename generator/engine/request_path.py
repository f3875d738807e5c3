"""The request path for callers that hold a plain backend (`topics expand`, `personas expand`, the
cluster-agent judge): a Backend wrapper that answers from the run's request cache, resends a failed
answer with the next seed, and counts every call in the cache's usage ledger, as a run's stages do
(`pipeline.scheduler`, `requests.retryable`).

It implements the Backend protocol, so a caller below the engine (the library, scoring) receives it
as any backend and never imports the engine. `generator.runs.request_session` gives it a run-like
folder, so the answers are published there and `synthgen usage` counts them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

from generator.core.backend import Backend, ProgressFn, Request, RequestFeed, Result, chat_template
from generator.engine.request_cache import RequestCache
from generator.engine.requests import classify, retryable


class RequestPath:
    """`inner` behind a request cache, with retries and the usage ledger.

    Try n of a request sends seed `seed + n - 1` (a retry is a new request, with its own cache
    entry), so a rerun replays every try already paid for. An empty, malformed or failed answer is
    tried again, `retries` times at most (like `run.retries`); the caller gets the last try's answer
    under its own request id. Failed answers (`finish_reason: error`) are counted, never cached."""

    def __init__(self, inner: Backend, cache: RequestCache, stage: str, retries: int = 2):
        self.inner, self.cache, self.stage, self.retries = inner, cache, stage, retries
        self.model = inner.model
        self.model_calls = 0  # requests that reached the model
        self.cache_hits = 0

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        pending = list(requests)
        for attempt in range(1, self.retries + 2):
            again: list[Request] = []
            for req, res in self._answers(pending, attempt):
                if attempt <= self.retries and self._retry(req, res):
                    again.append(req)
                    continue
                res = dataclasses.replace(res, id=req.id)
                if on_result is not None:
                    on_result(res)
                yield res
            pending = again
            if not pending:
                return

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        """The feed's requests a batch at a time, each batch through `generate`."""
        while True:
            batch = feed.take(timeout=None)
            if batch:
                yield from self.generate(batch, on_result)
            elif feed.exhausted():
                return

    @staticmethod
    def _retry(req: Request, res: Result) -> bool:
        answer = classify(res, req.json_schema is not None, None, 0)
        return retryable(answer.status, req.json_schema, req.sampling.max_tokens)

    def _answers(self, requests: list[Request], attempt: int) -> Iterator[tuple[Request, Result]]:
        """(request, answer) of try `attempt` of each request: from the cache, else from the model."""
        tries: dict[str, tuple[Request, Request, str]] = {}  # id sent -> (the caller's request, sent, key)
        for req in requests:
            sent = req
            if attempt > 1:
                seed = (req.sampling.seed or 0) + attempt - 1
                sent = dataclasses.replace(req, id=f"{req.id}#{attempt}",
                                           sampling=dataclasses.replace(req.sampling, seed=seed))
            tries[sent.id] = (req, sent, sent.payload_hash(self.model))
        hits = self.cache.get_many(list({key for _, _, key in tries.values()}))
        sends = []
        for req, sent, key in tries.values():
            hit = hits.get(key)
            if hit is None:
                sends.append(sent)
                continue
            self.cache_hits += 1
            self.cache.meter.hit(self.model, self.stage)
            yield req, Result(**hit)
        if not sends:
            return
        self.cache.meter.submitted(self.model)
        for res in self.inner.generate(sends):
            if res.id not in tries:
                continue  # not one of ours: a backend answers only what it was sent
            req, _, key = tries[res.id]
            failed = res.finish_reason == "error"  # counted, but not an answer worth replaying
            self.model_calls += 1
            with self.cache.lock:  # counted and stored together: a timed publish never splits them
                self.cache.meter.answered(self.model, self.stage, res.prompt_tokens, res.completion_tokens,
                                          error=failed)
                self.cache.put_many([] if failed else [(key, res.__dict__, self.model, self.stage)])
            yield req, res

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def chat_template(self) -> str | None:
        return chat_template(self.inner)

    def close(self) -> None:
        self.inner.close()
