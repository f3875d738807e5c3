"""The scheduler's request path: requests out, answers in.

Submitted requests are looked up in the request cache in one query (a hit is answered at once,
without reaching a model); the rest are asked of the budget gate and put into their models'
feeds, one put per model. Requests the gate cannot send yet wait (held) and go out, in order,
when answers free room; once the gate has closed they are kept back for good (parked: their
records stay unfinished). Each model's stream thread posts its answers back as events; on the
scheduler thread each answer is charged to the gate, counted on the cache's usage meter and
stored in the cache, together.

The scheduler owns every record; this module reaches it only through the callbacks it is given
(post an event, an answer landed), like `checks.CheckRunner` and `dialogue_driver.DialogueDriver`.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Callable

from generator.core.backend import Backend, Request, RequestFeed, Result
from generator.engine.pipeline.state import Pending
from generator.engine.pipeline.thinking import Thinking
from generator.engine.request_cache import RequestCache


class RequestFlow:
    def __init__(self, backends: dict[str, Backend], cache: RequestCache | None, gate: Any, thinking: Thinking, *,
                 post: Callable[[tuple], None], landed: Callable[[Pending, Result], None],
                 on_flight: Callable[[int], None] | None = None):
        self.backends = backends
        self.cache = cache
        self.gate = gate  # engine.budget.Gate: asked before each request is sent (None: no budget)
        self.thinking = thinking
        self._post = post        # a ("result" | "error" | "end", model, payload) event for the scheduler thread
        self._landed = landed    # an answer (from the cache or a model) for the scheduler to settle
        self._on_flight = on_flight  # how many requests are with the models now (progress), when it changes
        self.model_calls = 0
        self.cache_hits = 0
        self.parked = 0  # requests the gate kept back (their records stay unfinished)
        self.feeds = {m: RequestFeed() for m in backends}
        self.pending: dict[str, Pending] = {}  # sent to a model, by request id
        self._held: list[Pending] = []  # requests waiting for the gate (answers in flight may free room)
        self._ready: collections.deque[tuple[Pending, Result]] = collections.deque()
        self._lookups: list[Pending] = []  # submitted, not yet looked up in the cache (one query for all)

    def submit(self, pend: Pending) -> None:
        pend.rec.busy += 1
        pend.request = self.thinking.dress(pend.request, pend.model, pend.stage)
        pend.key = pend.request.payload_hash(pend.model)
        self._lookups.append(pend)

    def drain(self) -> None:
        """Send what was submitted (cache hits answer at once) until nothing is left to settle."""
        while self._lookups or self._ready:
            if self._lookups:
                self._flush_lookups()
            while self._ready:
                pend, res = self._ready.popleft()
                self._landed(pend, res)

    def _flush_lookups(self) -> None:
        """Answer the submitted requests the cache holds, and put the rest into their models' feeds,
        one query and one put per model for all of them."""
        batch, self._lookups = self._lookups, []
        hits = self.cache.get_many([p.key for p in batch]) if self.cache is not None else {}
        sends: dict[str, list[Request]] = {}
        now = time.time()
        for pend in batch:
            hit = hits.get(pend.key)
            if hit is not None:
                self.cache_hits += 1
                self.cache.meter.hit(pend.model, pend.stage)
                self._ready.append((pend, Result(**hit)))
                continue
            if self.gate is not None and not self._gated(pend):
                continue
            self._sent(pend, now, sends)
        for model, requests in sends.items():
            self.feeds[model].put_many(requests)
        if sends:
            self.report_flight()

    def _sent(self, pend: Pending, now: float, sends: dict[str, list[Request]]) -> None:
        if self.cache is not None:
            self.cache.meter.submitted(pend.model)
        pend.sent = now
        self.pending[pend.request.id] = pend
        sends.setdefault(pend.model, []).append(pend.request)

    def report_flight(self) -> None:
        """Tell progress how many requests are with the models now (sent, not yet answered)."""
        if self._on_flight is not None:
            self._on_flight(len(self.pending))

    def _gated(self, pend: Pending) -> bool:
        """Whether the budget gate lets `pend` go now; else it waits (held) or, once the gate has
        closed, is kept back for good (parked: its record stays open and unfinished)."""
        req = pend.request
        pend.reserve = self.gate.allow(pend.model, sum(len(str(m.get("content") or "")) for m in req.messages),
                                       req.sampling.max_tokens)
        if pend.reserve is not None:
            return True
        if self.gate.closed is None:
            self._held.append(pend)
        else:
            pend.rec.parked += 1
            self.parked += 1
        return False

    def release_held(self) -> None:
        """Answers landed (or the gate closed): send the held requests that now fit, in order."""
        if not self._held:
            return
        held, self._held = self._held, []
        sends: dict[str, list[Request]] = {}
        now = time.time()
        for i, pend in enumerate(held):
            if self.gate.closed is not None:
                pend.rec.parked += 1
                self.parked += 1
            elif self._gated(pend):
                self._sent(pend, now, sends)
            elif self.gate.closed is None:
                self._held.extend(held[i + 1:])  # the first that waits: the rest keep their order
                break
            # else: _gated closed the gate and parked it
        for model, requests in sends.items():
            self.feeds[model].put_many(requests)
        if sends:
            self.report_flight()

    def pump(self, model: str) -> None:
        """A model's stream thread: its answers (or its failure, or its end) as events."""
        try:
            for res in self.backends[model].stream(self.feeds[model]):
                self._post(("result", model, res))
        except BaseException as exc:  # surfaced on the scheduler thread
            self._post(("error", model, exc))
            return
        self._post(("end", model, None))

    def close_feeds(self) -> None:
        for feed in self.feeds.values():
            feed.close()

    def store(self, results: list[Result]) -> None:
        """Answers that landed: charged to the gate, counted and kept in the cache."""
        self.model_calls += len(results)
        if self.gate is not None:
            for res in results:
                pend = self.pending.get(res.id)
                if pend is not None:
                    self.gate.charge(pend.model, pend.reserve, res.prompt_tokens, res.completion_tokens)
        if self.cache is None:
            return
        items = []
        with self.cache.lock:  # counted and stored together: a timed publish never splits them
            for res in results:
                pend = self.pending.get(res.id)
                if pend is None:
                    continue
                failed = res.finish_reason == "error"  # counted, but not an answer worth replaying
                self.cache.meter.answered(pend.model, pend.stage, res.prompt_tokens, res.completion_tokens,
                                          error=failed, reasoning_tokens=res.reasoning_tokens)
                if not failed:
                    items.append((pend.key, res.__dict__, pend.model, pend.stage))
            self.cache.put_many(items)
