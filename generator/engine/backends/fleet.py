"""One OpenAI-compatible endpoint of a fleet: its adaptive window and its health.

The window is how many requests the endpoint may have in flight, floor 1, ceiling the model's
`concurrency`. Where it starts, and how it finds the server's capacity within the first round trip:
- an explicit `concurrency:` in the model entry is the starting window (the user knows the server);
- a server that exports its queue on `/metrics` (`fleet_metrics.py`) is read every `POLL_S` while
  requests wait in the client to be sent: the window doubles per reading while nothing waits in the server's queue, and is cut
  to keep the queue small but not empty (`observe_queue`);
- otherwise the window starts at `INITIAL_WINDOW` and doubles every `POLL_S` until the first answer
  of any kind comes back (`ramp`): a server that queues what it cannot batch says nothing before
  its first answer, and a short run must not spend round trips ramping.
Then it grows by one per answer while answers come back to a full window (doubling per round
trip; by one per round trip after the first sign of overload), shrinks by `BETA` on a 408, 429,
503, 504 or timeout, and is cut back to just past the knee when its answers show that latency per
token rose with no gain in throughput (`fleet_window.Knee`); each shrink at most once per round
trip (answers to requests sent before the last shrink do not shrink it again). An endpoint that
refuses connections, or fails `DOWN_AFTER` times in a row, is down: its in-flight requests go
elsewhere and one request probes it again after a back-off (half-open). Every decision is logged
at debug level."""
from __future__ import annotations

import logging
import time
from typing import Any

from generator.engine.backends.fleet_window import Knee

log = logging.getLogger(__name__)

BETA = 0.7  # multiplicative decrease: gentle enough that the window averages near the capacity
INITIAL_WINDOW = 8
DOWN_AFTER = 3  # consecutive failures (timeouts, resets) that take an endpoint down
SHRINK_STATUSES = {408, 429, 503, 504}


class Endpoint:
    def __init__(self, url: str, public_url: str, ceiling: int, start: int | None = None):
        self.url = url.rstrip("/")
        self.chat_url = self.url + "/chat/completions"
        self.public_url = public_url
        self.ceiling = max(int(ceiling), 1)
        self.start = min(int(start), self.ceiling) if start else None  # an explicit `concurrency:`
        self.window = float(self.start or min(self.ceiling, INITIAL_WINDOW))
        self.ssthresh = float(self.ceiling)
        self.epoch = 0  # bumped by each shrink
        self.in_flight = 0
        self.area = 0.0  # integral of in_flight over time (Little's law: the load an answer saw)
        self.area_at = time.monotonic()
        self.blind = self.start is None  # nothing heard yet: `ramp` may open the window
        self.has_metrics: bool | None = None  # unknown until its /metrics is read once
        self.readings = 0  # queue readings taken from its /metrics (what the window learned from)
        self.peak = [0, 0]  # the most requests seen running, and waiting, in those readings
        self.knee = Knee()
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

    def _tick(self) -> float:
        now = time.monotonic()
        self.area += self.in_flight * (now - self.area_at)
        self.area_at = now
        return now

    def sent(self) -> tuple[float, float]:
        """An attempt goes out (the request's first, a retry, or a hedge); returns its mark, for
        `answered` to tell the load it saw."""
        now = self._tick()
        self.in_flight += 1
        self.stats["requests"] += 1
        self.first_at = self.first_at or now
        return now, self.area

    def left(self) -> None:
        """An attempt ended, however it ended."""
        self._tick()
        self.in_flight -= 1
        self.blind = False  # an answer, an error or a cancel: the blind ramp is over

    def _set(self, window: float, why: str) -> None:
        log.debug("window %s: %.1f -> %.1f (%s; %d in flight)", self.public_url, self.window, window, why,
                  self.in_flight)
        self.window = window
        self.max_window = max(self.max_window, window)

    def ramp(self) -> None:
        """No answer yet and no metrics: double the window while it is what holds requests back."""
        if self.blind and self.has_metrics is False and self.in_flight >= int(self.window) \
                and self.window < self.ssthresh:
            self._set(min(self.window * 2, self.ssthresh), "no answer yet: ramp")

    def observe_queue(self, running: int, waiting: int) -> None:
        """A reading of the server's own queue (requests running, waiting; every client's)."""
        self.readings += 1
        self.peak = [max(self.peak[0], running), max(self.peak[1], waiting)]
        high, low = max(2, running // 8), max(1, running // 16)
        if waiting > high:  # cut to what the server runs plus a small queue; idempotent per reading
            goal = max(1.0, float(self.in_flight - (min(waiting, self.in_flight) - low)))
            if goal < self.window:
                self._set(goal, f"server queue {waiting} waiting, {running} running")
                self.ssthresh = self.window
                self.epoch += 1
        elif waiting == 0 and self.in_flight >= int(self.window) - 1 and self.window < self.ssthresh:
            self._set(min(self.window * 2, self.ssthresh), f"server queue empty, {running} running")

    # -- outcomes
    def answered(self, prompt_tokens: int, completion_tokens: int, mark: tuple[float, float] | None = None,
                 epoch: int | None = None) -> None:
        """An answer to an attempt sent at `mark` (from `sent`) in `epoch`; call after `left`."""
        self.stats["answered"] += 1
        self.stats["prompt_tokens"] += prompt_tokens
        self.stats["completion_tokens"] += completion_tokens
        self.last_at = time.monotonic()
        self.failures = self.strikes = 0
        if mark is not None and self.up and self.last_at > mark[0]:
            span = self.last_at - mark[0]
            self.knee.add((self.area - mark[1]) / span, completion_tokens, span)
            # once per round trip (answers to requests sent before the last change do not count);
            # a server that shows its queue on /metrics is not probed: its queue is known
            move = self.knee.decide(self.window, probe=not self.has_metrics) if epoch == self.epoch else None
            if move is not None:
                self.epoch += 1
                self._set(move[0], move[1])
                if not move[2]:  # a probe keeps the threshold: slow start takes a CPU server back up
                    self.ssthresh = self.window
                return
        if not self.up:  # the probe came back: start again from a small window
            log.info("endpoint %s is answering again", self.public_url)
            self.up = True
            self.window, self.ssthresh = float(min(self.ceiling, INITIAL_WINDOW)), float(self.ceiling)
        elif not int(self.window) - 1 <= self.in_flight + 1 <= int(self.window):
            pass  # the window was not what held requests back (or a cut is draining): no evidence to grow
        elif self.window < self.ssthresh:
            self.window = min(self.window + 1.0, float(self.ceiling))
        else:
            self.window = min(self.window + 1.0 / self.window, float(self.ceiling))
        self.max_window = max(self.max_window, self.window)

    def shrink(self, epoch: int) -> None:
        if epoch != self.epoch:
            return  # sent before the last shrink: that overload is already answered for
        self.epoch += 1
        self._set(max(1.0, self.window * BETA), "overloaded: 408/429/503/504 or a timeout")
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
                "metrics": bool(self.has_metrics), "metrics_readings": self.readings,
                "server_peak": {"running": self.peak[0], "waiting": self.peak[1]},
                "ceiling": self.ceiling, "busy_s": round(busy, 3),
                "completion_tokens_per_s": round(self.stats["completion_tokens"] / busy, 2) if busy > 0 else None}
