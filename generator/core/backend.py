"""The one small interface every backend implements.

Backends know nothing of specs, topics or scoring: they turn chat requests into completions.
The run loop, the cluster-agent and `topics expand` are all clients of `Backend.generate`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None


@dataclass(frozen=True)
class Request:
    id: str
    messages: tuple[dict[str, str], ...] | list[dict[str, str]]
    sampling: Sampling = field(default_factory=Sampling)
    json_schema: dict | None = None  # enforced by structured decoding where the backend can

    def payload_hash(self, model: str) -> str:
        """Key of the request-level replay cache: everything that decides the answer."""
        payload = {"model": model, "messages": list(self.messages), "sampling": asdict(self.sampling),
                   "schema": self.json_schema}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Result:
    id: str
    text: str
    finish_reason: str  # "stop" | "length" | "error" | backend-specific
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[Result], None]


class Backend(Protocol):
    """A model behind one interface. `generate` yields one Result per request, in any order."""

    model: str

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        ...

    def describe(self) -> dict[str, Any]:
        """Versions and settings for the manifest (never secrets)."""
        ...

    def close(self) -> None:
        ...


class Borrowed:
    """A backend lent to an executor that must not close it (tests, benchmarks, notebooks
    that keep one engine alive across runs)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.model = inner.model

    def generate(self, requests: Iterable[Request], on_result: ProgressFn | None = None) -> Iterator[Result]:
        return self.inner.generate(requests, on_result)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        pass
