"""The budget gate: asked by the scheduler before each request is sent, charged as each answer lands.

A request is sent only when what has been spent, plus what the requests in flight may still spend,
plus what this one may spend, stays within every limit. What a request may spend is estimated per
model: before any answer, its prompt (about 4 characters a token) plus its whole `max_tokens`;
after, the mean of the answers so far. A request that does not fit waits while others are in
flight (their answers may cost less than reserved); one that does not fit with nothing in flight
closes the gate: nothing
more is sent (cache hits still answer, they are free), the records waiting on a request stay
unfinished (a resume with a larger budget finishes them from the cache), and the run ends cleanly
once the requests in flight have landed. So a run overshoots a limit by at most what the requests in
flight at that moment spend beyond their estimate. Anything else may close the gate too (a target
found hopeless): `close(reason)`.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # for a prompt's tokens before any answer says what they are


@dataclass
class Reserve:
    """What one sent request was counted as, until its answer says what it cost."""

    calls: int
    tokens: float
    cost: float


def price_cost(prompt_tokens: float, completion_tokens: float, price: dict | None) -> float:
    if not price:
        return 0.0
    return prompt_tokens / 1e6 * float(price["input_per_mtok"]) + completion_tokens / 1e6 * float(price["output_per_mtok"])


class Gate:
    """`limits`: calls, tokens, cost, seconds (any subset; `records` is the planner's and only shown
    here). `spent`: what earlier sessions into the run folder spent (calls, tokens, cost)."""

    def __init__(self, limits: dict[str, float], prices: dict[str, dict | None] | None = None,
                 spent: dict[str, float] | None = None):
        self.limits = dict(limits)
        self.prices = prices or {}
        self.spent = {"calls": 0, "tokens": 0, "cost": 0.0, **(spent or {})}
        self.before = dict(self.spent)  # what earlier sessions spent
        self.in_flight = {"calls": 0, "tokens": 0.0, "cost": 0.0}
        self.t0 = time.monotonic()
        self.closed: str | None = None  # the limit (or reason) that closed the gate
        self.message: str | None = None
        self._means: dict[str, list[float]] = {}  # model -> [answers, prompt tokens, completion tokens]
        self._lock = threading.Lock()

    def seconds(self) -> float:
        return time.monotonic() - self.t0

    def close(self, reason: str, message: str | None = None) -> None:
        with self._lock:
            if self.closed is None:
                self.closed, self.message = reason, message
                log.info("gate closed: %s%s", reason, f" ({message})" if message else "")

    def estimate(self, model: str, prompt_chars: int, max_tokens: int) -> Reserve:
        m = self._means.get(model)
        if m and m[0]:
            p, c = m[1] / m[0], m[2] / m[0]
        else:
            p, c = prompt_chars / CHARS_PER_TOKEN, float(max_tokens)
        return Reserve(1, p + c, price_cost(p, c, self.prices.get(model)))

    def allow(self, model: str, prompt_chars: int, max_tokens: int) -> Reserve | None:
        """The request's reserve when it may be sent; None when not: the gate closes when nothing is
        in flight (else the request waits: the answers in flight may cost less than reserved)."""
        if self.closed is not None:
            return None
        if "seconds" in self.limits and self.seconds() >= self.limits["seconds"]:
            self.close("seconds")
            return None
        with self._lock:
            r = self.estimate(model, prompt_chars, max_tokens)
            for key, need in (("calls", r.calls), ("tokens", r.tokens), ("cost", r.cost)):
                limit = self.limits.get(key)
                if limit is not None and self.spent[key] + self.in_flight[key] + need > limit:
                    if self.in_flight["calls"] <= 0:
                        self.closed = key
                        log.info("budget: the next request could exceed %s (spent %s, limit %s)",
                                 key, self.spent[key], limit)
                    return None
            self.in_flight["calls"] += r.calls
            self.in_flight["tokens"] += r.tokens
            self.in_flight["cost"] += r.cost
            return r

    def charge(self, model: str, reserve: Reserve | None, prompt_tokens: int | None,
               completion_tokens: int | None) -> None:
        """An answer landed: its real cost replaces its reserve."""
        p, c = int(prompt_tokens or 0), int(completion_tokens or 0)
        with self._lock:
            if reserve is not None:
                self.in_flight["calls"] -= reserve.calls
                self.in_flight["tokens"] -= reserve.tokens
                self.in_flight["cost"] -= reserve.cost
            m = self._means.setdefault(model, [0, 0.0, 0.0])
            m[0] += 1
            m[1] += p
            m[2] += c
            self.spent["calls"] += 1
            self.spent["tokens"] += p + c
            self.spent["cost"] += price_cost(p, c, self.prices.get(model))

    def per_call(self) -> dict[str, float]:
        """Mean tokens and cost of one call so far (over every model)."""
        n = sum(m[0] for m in self._means.values())
        if not n:
            return {"tokens": 0.0, "cost": 0.0}
        tokens = sum(m[1] + m[2] for m in self._means.values())
        cost = sum(price_cost(m[1], m[2], self.prices.get(k)) for k, m in self._means.items())
        return {"tokens": tokens / n, "cost": cost / n}

    def left(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, limit in self.limits.items():
            if key == "seconds":
                out[key] = round(max(limit - self.seconds(), 0.0), 3)
            elif key in self.spent:
                out[key] = round(limit - self.spent[key], 6)
        return out

    def summary(self) -> dict[str, Any]:
        """The manifest's `budget` section."""
        spent = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.spent.items()}
        return {"limits": self.limits, "spent": {**spent, "seconds": round(self.seconds(), 3)},
                "left": self.left(), "stopped_by": self.closed, "message": self.message}
