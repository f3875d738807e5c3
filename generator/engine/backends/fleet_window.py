"""Where an endpoint's throughput stops growing with its window: the knee, from its answers alone.

Every answer is a sample of the server at one load. By Little's law the server delivered about
N x T / L completion tokens a second while it held it, where N is how many requests this client had
in flight on average over the request's life, T its completion tokens and L its latency. Samples
are kept per band of N (quarter octaves, a running mean each, so old readings fade). The knee is
the smallest N whose rate is within `SHARE` of the best rate seen: beyond it, more requests in
flight only wait longer (a GPU queueing above its batch limit; a CPU server whose step time grows
with the batch). A window well past the knee is shrunk to just above it, so the server's own queue
stays small but not empty; that is how a server that never answers 429 is kept from hoarding
requests another endpoint could serve (see docs/scale-out.md)."""
from __future__ import annotations

import math

SHARE = 0.95  # a load giving 95% of the best rate counts as the knee: the rest is mostly waiting
HEADROOM = 1.15  # the window's target above the knee: a small queue keeps the batch full
SLACK = 1.3  # bands this far apart are compared; a window this far past its target is cut
QUEUED = 0.25  # latency has risen when it implies this share of the window waits (Vegas' estimate)
MIN_SAMPLES = 3  # per band, before the band is believed
ALPHA = 0.3  # weight of a new sample in its band's running mean


class Knee:
    def __init__(self) -> None:
        self.bands: dict[int, list[float]] = {}  # band -> [mean N, mean rate, samples]
        self.base = float("inf")  # the least latency per token seen: the server with no queue
        self.last: list[float] | None = None  # the band of the latest sample

    def add(self, n: float, tokens: int, latency: float) -> None:
        if n < 0.5 or latency <= 0 or tokens <= 0:
            return
        rate = n * tokens / latency
        self.base = min(self.base, latency / tokens)
        band = self.bands.setdefault(round(4 * math.log2(max(n, 1.0))), [n, rate, 0])
        a = ALPHA if band[2] >= MIN_SAMPLES else 1.0 / (band[2] + 1)  # a plain mean until believed
        band[0] += a * (n - band[0])
        band[1] += a * (rate - band[1])
        band[2] += 1
        self.last = band

    def decide(self, window: float, probe: bool) -> tuple[float, str, bool] | None:
        """After an answer: a new window, why, and whether it is only a probe; or None to leave it. Only when the latest load's
        latency per token is well above the least seen (requests wait, or each step got slower):
        - a lower load was seen that gave nearly the same rate: no gain, cut to just past the knee;
        - none was seen (the window opened straight past it) and `probe`: halve the window for a
          round trip, to see the rate there (the caller keeps its slow-start threshold, so a
          server whose rate did fall there, a CPU server, gets its window back)."""
        cur = self.last
        if cur is None or cur[2] < MIN_SAMPLES:
            return None
        n, rate = cur[0], cur[1]
        waiting = n * (1 - self.base * rate / n)  # Vegas: N x (1 - least latency / this latency)
        if waiting <= max(2.0, QUEUED * n):
            return None
        believed = [b for b in self.bands.values() if b[2] >= MIN_SAMPLES]
        lower = [b for b in believed if b[0] * SLACK <= n]
        if not lower:
            return (max(1.0, float(math.floor(n / 2))), f"latency per token {n / rate / self.base:.1f}x the "
                    f"least seen: probe half the load", True) if probe and window > 2 else None
        if max(b[1] for b in lower) < SHARE * rate:
            return None  # the higher load paid for its latency in throughput (a CPU server's batch)
        best = max(b[1] for b in believed)
        goal = math.ceil(min(b[0] for b in believed if b[1] >= SHARE * best) * HEADROOM) + 1
        if window <= goal:
            return None
        why = f"latency per token rose {n / rate / self.base:.1f}x with no gain in throughput: to just past the knee"
        return float(goal), why, False
