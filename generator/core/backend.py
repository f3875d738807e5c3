"""The one small interface every backend implements.

Backends know nothing of specs, topics or scoring: they turn chat requests into completions.

Two ways in, both required:
- `generate(requests)`: a fixed batch (the cluster-agent, `topics expand`, simple callers).
- `stream(feed)`: a continuously fed engine (every run goes this way). The caller keeps putting requests into a
  `RequestFeed` while earlier ones are in flight (the next pipeline stage, a retry, a
  regeneration), and the backend submits each one as soon as it can, so the engine never
  drains between batches. The stream ends once the feed is closed, empty, and nothing is in flight.

Contract for single-threaded callers: after handling a result (and putting its follow-ups), a
caller that has no outstanding work left must `close()` the feed before asking for the next
result; while it has outstanding work, that work is in the feed or in flight, so the stream
always has something to wait for.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
import collections
import threading
from typing import Any, Callable, Iterable, Iterator, Protocol

from generator.core.reasoning import Markers


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    repetition_penalty: float | None = None  # None: the engine's default (1.0)


@dataclass(frozen=True)
class Request:
    id: str
    messages: tuple[dict[str, str], ...] | list[dict[str, str]]
    sampling: Sampling = field(default_factory=Sampling)
    json_schema: dict | None = None  # enforced by structured decoding where the backend can
    # OpenAI function definitions for native tool calling: rendered by the model's chat template
    # (offline vLLM) or sent as `tools` (a server); None for every request without tools
    tools: tuple[dict, ...] | None = None
    # a thinking model's markers: the answer is split into reasoning and text (generator.core.reasoning)
    reasoning: Markers | None = None
    # a thinking budget: past it the end marker is forced and the answer follows (offline vLLM)
    max_reasoning_tokens: int | None = None

    def payload_hash(self, model: str) -> str:
        """Key of the request-level replay cache: everything that decides the answer."""
        s = self.sampling
        sampling = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed}
        if s.repetition_penalty is not None:  # unset options leave the keys of earlier runs unchanged
            sampling["repetition_penalty"] = s.repetition_penalty
        payload = {"model": model, "messages": list(self.messages), "sampling": sampling, "schema": self.json_schema}
        if self.tools is not None:  # like repetition_penalty: requests without tools keep their keys
            payload["tools"] = list(self.tools)
        if self.reasoning is not None:  # likewise: requests to a model without markers keep their keys
            payload["reasoning"] = self.reasoning.key()
        if self.max_reasoning_tokens is not None:
            payload["max_reasoning_tokens"] = self.max_reasoning_tokens
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Result:
    id: str
    text: str
    finish_reason: str  # "stop" | "length" | "error" | backend-specific
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. tool_calls, reasoning_forced
    reasoning: str | None = None  # the thinking before the answer (`text`), where the model wrote one
    reasoning_tokens: int = 0     # of `completion_tokens`, those spent reasoning


ProgressFn = Callable[[Result], None]


class RequestFeed:
    """A thread-safe queue of requests for one backend, fed while the backend runs."""

    def __init__(self, requests: Iterable[Request] = (), close: bool = False):
        self._items: collections.deque[Request] = collections.deque(requests)
        self._cond = threading.Condition()
        self._closed = close

    def put(self, request: Request) -> None:
        self.put_many((request,))

    def put_many(self, requests: Iterable[Request]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("put() on a closed RequestFeed")
            self._items.extend(requests)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def exhausted(self) -> bool:
        """Closed and empty: nothing more will ever come out."""
        with self._cond:
            return self._closed and not self._items

    def take(self, max_n: int | None = None, timeout: float | None = 0.0) -> list[Request]:
        """Up to `max_n` requests (all there are when None). `timeout=0` never waits; `None` waits
        until a request arrives or the feed is closed; a number waits at most that long."""
        with self._cond:
            if not self._items and not self._closed and timeout != 0.0:
                self._cond.wait_for(lambda: self._items or self._closed, timeout=timeout)
            n = len(self._items) if max_n is None else min(max_n, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._items)


class Backend(Protocol):
    """A model behind one interface. `generate` yields one Result per request, in any order."""

    model: str

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        ...

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        """Results of the requests put into `feed`, as they finish (see the module docstring)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Versions and settings for the manifest (never secrets)."""
        ...

    def close(self) -> None:
        ...


def chat_template(backend: Any) -> str | None:
    """The source of the model's chat template where the backend can read it (an offline engine's
    tokenizer), else None (a server's template is not visible; a backend may lack the method)."""
    get = getattr(backend, "chat_template", None)
    return get() if callable(get) else None


class Borrowed:
    """A backend lent to an executor that must not close it (tests, benchmarks, notebooks
    that keep one engine alive across runs)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.model = inner.model

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        return self.inner.generate(requests, on_result)

    def stream(self, feed: RequestFeed, on_result: ProgressFn | None = None) -> Iterator[Result]:
        return self.inner.stream(feed, on_result)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def chat_template(self) -> str | None:
        return chat_template(self.inner)

    def close(self) -> None:
        pass
