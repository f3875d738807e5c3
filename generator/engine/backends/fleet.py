"""One OpenAI-compatible endpoint of a fleet: its adaptive window and its health.

The window is how many requests the endpoint may have in flight. It starts small and grows
(doubling per round trip until the first sign of overload, then by one per round trip) while
answers come back to a full window, and shrinks by `BETA` on a 429, 503, 504 or timeout, at most once per round
trip (answers to requests sent before the last shrink do not shrink it again): floor 1, ceiling
the model's `concurrency`. An endpoint that refuses connections, or fails `DOWN_AFTER` times in a
row, is down: its in-flight requests go elsewhere and one request probes it again after a
back-off (half-open)."""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

BETA = 0.7  # multiplicative decrease: gentle enough that the window averages near the capacity
INITIAL_WINDOW = 8
DOWN_AFTER = 3  # consecutive failures (timeouts, resets) that take an endpoint down
SHRINK_STATUSES = {408, 429, 503, 504}


class Endpoint:
    def __init__(self, url: str, public_url: str, ceiling: int):
        self.url = url.rstrip("/")
        self.chat_url = self.url + "/chat/completions"
        self.public_url = public_url
        self.ceiling = max(int(ceiling), 1)
        self.window = float(min(self.ceiling, INITIAL_WINDOW))
        self.ssthresh = float(self.ceiling)
        self.epoch = 0  # bumped by each shrink
        self.in_flight = 0
        self.tasks: set = set()  # attempts in flight (cancelled when the endpoint is drained)
        self.up = True
        self.failures = 0  # consecutive
        self.strikes = 0  # times marked down or failed a probe, since the last answer
        self.down_until = 0.0
        self.last_error = ""
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.max_window = self.window
        self.stats = {"requests": 0, "answered": 0, "errors": 0, "status_429": 0, "status_5xx": 0,
                      "timeouts": 0, "connection_errors": 0, "redispatched": 0, "times_down": 0,
                      "hedges": 0, "hedges_won": 0, "prompt_tokens": 0, "completion_tokens": 0}

    # -- dispatch
    def can_take(self, now: float) -> bool:
        if self.up:
            return self.in_flight < max(int(self.window), 1)
        return now >= self.down_until and self.in_flight == 0  # half-open: a single probe

    def load(self) -> float:
        return self.in_flight / max(self.window, 1.0)

    def sent(self) -> None:  # an attempt: the request's first, a retry, or a hedge
        self.in_flight += 1
        self.stats["requests"] += 1
        self.first_at = self.first_at or time.monotonic()

    # -- outcomes
    def answered(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.stats["answered"] += 1
        self.stats["prompt_tokens"] += prompt_tokens
        self.stats["completion_tokens"] += completion_tokens
        self.last_at = time.monotonic()
        self.failures = self.strikes = 0
        if not self.up:  # the probe came back: start again from a small window
            log.info("endpoint %s is answering again", self.public_url)
            self.up = True
            self.window, self.ssthresh = float(min(self.ceiling, INITIAL_WINDOW)), float(self.ceiling)
        elif self.in_flight + 1 < int(self.window):
            pass  # the window was not what held requests back: no evidence it can grow
        elif self.window < self.ssthresh:
            self.window = min(self.window + 1.0, float(self.ceiling))
        else:
            self.window = min(self.window + 1.0 / self.window, float(self.ceiling))
        self.max_window = max(self.max_window, self.window)

    def shrink(self, epoch: int) -> None:
        if epoch != self.epoch:
            return  # sent before the last shrink: that overload is already answered for
        self.epoch += 1
        self.window = max(1.0, self.window * BETA)
        self.ssthresh = self.window

    def failed(self, error: str, now: float, down_now: bool, delay: float) -> bool:
        """A failed attempt (timeout, reset, refused). True when it takes the endpoint down."""
        self.stats["errors"] += 1
        self.last_error = error
        self.failures += 1
        if not self.up:  # the probe failed: wait longer before the next
            self.strikes += 1
            self.down_until = now + delay
            return False
        if down_now or self.failures >= DOWN_AFTER:
            self.up = False
            self.strikes = 1
            self.stats["times_down"] += 1
            self.down_until = now + delay
            log.warning("endpoint %s is down after %d failed requests (last: %s); probing it again in %.0fs",
                        self.public_url, self.failures, error, delay)
            return True
        return False

    def describe(self) -> dict[str, Any]:
        busy = (self.last_at - self.first_at) if self.first_at and self.last_at else 0.0
        return {"url": self.public_url, **self.stats, "state": "up" if self.up else "down",
                "window": round(self.window, 1), "max_window": round(self.max_window, 1),
                "ceiling": self.ceiling, "busy_s": round(busy, 3),
                "completion_tokens_per_s": round(self.stats["completion_tokens"] / busy, 2) if busy > 0 else None}
