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

SHARE = 0.9  # a load giving 90% of the best rate counts as the knee: the rest is mostly waiting
HEADROOM = 1.15  # the window's target above the knee: a small queue keeps the batch full
SLACK = 1.3  # shrink only when the window is this far past its target (noise stays put)
MIN_SAMPLES = 3  # per band, before the band is believed
ALPHA = 0.3  # weight of a new sample in its band's running mean


class Knee:
    def __init__(self) -> None:
        self.bands: dict[int, list[float]] = {}  # band -> [mean N, mean rate, samples]

    def add(self, n: float, tokens: int, latency: float) -> None:
        if n < 0.5 or latency <= 0 or tokens <= 0:
            return
        rate = n * tokens / latency
        band = self.bands.setdefault(round(4 * math.log2(max(n, 1.0))), [n, rate, 0])
        a = ALPHA if band[2] >= MIN_SAMPLES else 1.0 / (band[2] + 1)  # a plain mean until believed
        band[0] += a * (n - band[0])
        band[1] += a * (rate - band[1])
        band[2] += 1

    def knee(self) -> tuple[float, float] | None:
        """(the knee's N, the best rate), or None until two bands are believed."""
        seen = [b for b in self.bands.values() if b[2] >= MIN_SAMPLES]
        if len(seen) < 2:
            return None
        best = max(b[1] for b in seen)
        return min(b[0] for b in seen if b[1] >= SHARE * best), best

    def target(self, window: float) -> int | None:
        """The window to shrink to when `window` is well past the knee, else None."""
        k = self.knee()
        if k is None:
            return None
        goal = math.ceil(k[0] * HEADROOM) + 1
        return goal if window > SLACK * goal else None
