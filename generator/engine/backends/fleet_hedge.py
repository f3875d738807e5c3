"""The hedged tail of a fleet run: which requests in flight to send a second time, to which
endpoint, and the counts of hedges sent and answered first.

Requests are committed to an endpoint's queue when sent, so at the end of a run (nothing left to
send) one server can still hold a request or two more than the others: on a server that decodes
in batches, those cost it a whole extra batch while the others sit idle. So while nothing waits to
be sent, every `HEDGE_TICK_S` the backend looks for an endpoint with room in its window and
re-sends to it (a hedge) the request written last to the endpoint holding the most requests nobody
else is working on, when that endpoint holds at least `HEDGE_GAP` more than the one with room has
in flight; or, to an idle endpoint, the oldest request that has waited over `HEDGE_SLOW` times the
median answer time (a stuck or slow server). A candidate is hedged only once every look over
`HEDGE_SETTLE_S` has chosen it: counts taken while a burst of answers is still landing (a batch
finishing on many servers at once) overstate a server's queue. Each request is hedged at most
once; the first good answer is its Result and the other attempt is cancelled (its connection
closed; vLLM then drops the request). A failed attempt whose twin is still in flight is dropped;
when both fail, the request is retried as any other. Usage counts the answer that won; each
endpoint counts the hedges sent to it and how many answered first. A seeded request to identical
servers gets the same answer either way; otherwise (no seed, or servers that differ) a hedge may
return another server's answer.

The sending, cancelling and retrying are the dispatch loop's (`openai_http`); this module decides.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Collection

from generator.engine.backends.fleet import Endpoint

HEDGE_TICK_S = 0.25  # how often the tail is looked at for requests to hedge (module docstring)
HEDGE_SETTLE_S = 1.5  # a request is hedged once every look over this long has chosen it
HEDGE_GAP = 2        # hedge when a queue holds this many more requests than the endpoint with room
HEDGE_SLOW = 3.0     # ...or, to an idle endpoint, a request waiting this many times the median answer time
HEDGE_MIN_ANSWERS = 8  # answers needed before a median answer time means anything


def slow_wait(latencies: Collection[float]) -> float | None:
    """How long a request may wait before an idle endpoint hedges it; None until enough answers
    give a median."""
    if len(latencies) < HEDGE_MIN_ANSWERS:
        return None
    times = sorted(latencies)
    return HEDGE_SLOW * times[len(times) // 2]


def plan_hedges(endpoints: list[Endpoint], sole: dict[Endpoint, list], *, written: Callable[[Any], float],
                sent: Callable[[Any], float], slow: float | None, seen: dict, now: float,
                send: Callable[[Endpoint, Any], None]) -> dict:
    """One look at the tail: plan the hedges, and `send(endpoint, attempt)` those every look since
    `HEDGE_SETTLE_S` ago planned (`seen`: candidate -> when first planned). `sole`: per endpoint,
    its attempts that are the only one of their request (taken from as they are planned);
    `written`/`sent`: when an attempt went out on the wire / was sent. Returns this look's plan."""
    load = {e: e.in_flight for e in endpoints}
    plan: dict = {}
    while True:
        room = [e for e in endpoints if e.up and load[e] < max(int(e.window), 1)]
        if not room:
            break
        y = min(room, key=lambda x: load[x])
        busy = [e for e in endpoints if e is not y and sole[e]]
        if not busy:
            break
        x = max(busy, key=lambda e: len(sole[e]))
        if len(sole[x]) >= load[y] + HEDGE_GAP:  # the last in x's queue would start sooner on y
            pick = max(sole[x], key=written)
        elif load[y] == 0 and slow is not None:  # y is idle: the longest wait, if far past typical
            x, pick = min(((e, t) for e in busy for t in sole[e]), key=lambda et: sent(et[1]))
            if now - sent(pick) <= slow:
                break
        else:
            break
        sole[x].remove(pick)
        load[y] += 1
        plan[pick] = seen.get(pick, now)
        # `send` raises y's in_flight, so a later pick in this look sees y's room as it now is
        if now - plan[pick] >= HEDGE_SETTLE_S and y.can_take(now):
            send(y, pick)
    return plan


async def look_every_tick(look: Callable[[dict], dict], fail: Callable[[BaseException], None]) -> None:
    """Call `look(seen)` every `HEDGE_TICK_S` until cancelled, carrying each look's plan to the next."""
    seen: dict = {}
    while True:
        await asyncio.sleep(HEDGE_TICK_S)
        try:
            seen = look(seen)
        except Exception as exc:  # a bug here must stop the stream, not die silently in a task
            fail(exc)
            return


def count_sent(stats: dict, e: Endpoint) -> None:
    """A hedge went to `e`: counted for the run and for the endpoint."""
    stats["hedges"] += 1
    e.stats["hedges"] += 1


def count_won(stats: dict, e: Endpoint) -> None:
    """A hedge sent to `e` answered before its original."""
    stats["hedges_won"] += 1
    e.stats["hedges_won"] += 1
