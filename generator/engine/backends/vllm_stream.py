"""The continuously fed loop over one offline vLLM engine (`LLM.enqueue_chat` + `LLMEngine.step`).

Requests are taken from the feed before every engine step without waiting, so a request put while
others run joins the running batch at the next step; the loop waits on the feed only when the
engine has nothing in flight. Requests still in flight when the consumer stops (an exception, a
closed generator) are aborted, so the engine is clean for the next caller.

Hedged retries. A structured answer cut by `max_tokens` earns a retry with the next seed (see
`engine.requests.retryable`), and the requests that run longest are the ones cut: their retries
would start once the batch has drained and run almost alone, trailing the run. So when the engine
runs at most a quarter of its peak batch and nothing waits in the feed, each structured request
past half its token budget gets its likely retry started beside it: the same request with the
next seed. When the caller sends that retry, it takes over the hedge (running or finished) instead
of starting afresh; when the original ends without being cut, the hedge is aborted. The answer a
retry gets is the same either way (same messages, seed and parameters), so hedging changes only
when it arrives, not what is written.

A retry can be cut too, and its own retry would then trail the run by a whole answer: so a hedge
(running or taken over) past half its budget in a draining engine is hedged in turn, with the seed
after its own. A taken-over hedge keeps the step it started at, and dropping a hedge drops the
hedges that stood behind it.

A request to a thinking model (with reasoning markers) runs in two phases, the answer joining the
running batch the step its thinking ends (`vllm_thinking`); such requests are never hedged.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from generator.core.backend import ProgressFn, Request, RequestFeed, Result

log = logging.getLogger(__name__)

HEDGE_BELOW = 0.25   # hedge once at most this share of the peak batch is in flight...
HEDGE_AFTER = 0.5    # ...for requests past this share of their max_tokens (one token a step)
HEDGE_GRACE_S = 5.0  # an unclaimed hedge whose original was cut is aborted after this long


@dataclass
class StreamStats:
    """What one stream did: engine steps, and for each request the step it joined and left at."""

    steps: int = 0
    idle_waits: int = 0           # times the loop waited on the feed with nothing in flight
    max_in_flight: int = 0
    submitted: dict[str, int] = field(default_factory=dict)   # request id -> steps run before it joined
    finished: dict[str, int] = field(default_factory=dict)    # request id -> step that finished it
    hedges: int = 0               # likely retries started early (see the module docstring)
    hedges_used: int = 0          # of them, taken over by the retry they stood for
    started: float = field(default_factory=time.time)
    ended: float | None = None


def _result(r: Request, out: Any) -> Result:
    c = out.outputs[0]
    return Result(id=r.id, text=c.text, finish_reason=c.finish_reason or "stop",
                  prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(c.token_ids))


def by_tools(batch: list[Request]) -> list[tuple[tuple[dict, ...] | None, list[Request]]]:
    """The batch split by the tools its requests offer (in first-seen order; most offer none)."""
    groups: dict[str, tuple[tuple[dict, ...] | None, list[Request]]] = {}
    for r in batch:
        key = json.dumps(r.tools, sort_keys=True) if r.tools is not None else ""
        groups.setdefault(key, (r.tools, []))[1].append(r)
    return list(groups.values())


def _retry_of(r: Request) -> Request:
    """The request the caller sends when `r`'s answer is cut: its next seed (`requests.make_request`)."""
    return replace(r, id=f"{r.id}~hedge", sampling=replace(r.sampling, seed=r.sampling.seed + 1))


def stream_engine(llm: Any, feed: RequestFeed, params: Callable[[Request], Any],
                  on_result: ProgressFn | None, stats: StreamStats,
                  max_in_flight: int | None = None, hedge: bool = True, thinker: Any = None) -> Iterator[Result]:
    """`max_in_flight` (run.window) caps the requests handed to the engine at once; a finished
    one is replaced at the next step, so the cap never drains the engine. `hedge`: start likely
    retries early in a draining engine (module docstring). `thinker`: a `vllm_thinking.Thinker`
    for requests with reasoning markers."""
    engine = llm.llm_engine
    # LLM's request ids are counter values; the engine makes them unique with a random suffix
    # ("7-1a2b3c4d"), and step() reports the counter value: key by that
    in_flight: dict[str, Request] = {}
    internal: dict[str, str] = {}
    ready: list[Result] = []                 # answers to hand out before the next step
    hedge_of: dict[str, tuple[str, str]] = {}  # original's engine id -> (its hedge's engine id, payload key)
    hedge_key: dict[str, str] = {}           # hedge's engine id -> payload key of the retry it stands for
    running_hedge: dict[str, str] = {}       # payload key -> hedge's engine id, still running
    done_hedge: dict[str, Result] = {}       # payload key -> a hedge's answer, not yet claimed
    orphaned: dict[str, float] = {}          # hedge engine id -> when its original ended cut
    behind: dict[str, tuple[str, str]] = {}  # payload key of a finished, cut, unclaimed hedge -> its own hedge (id, key)
    answering: dict[str, Any] = {}           # engine id of a thinking request's answer phase -> its Thought

    def key(r: Request) -> str:
        return r.payload_hash("")

    def add(batch: list[Request]) -> list[str]:
        # one enqueue_chat per set of tools: the template renders the call's `tools` into every
        # conversation of it
        return [e for tools, group in by_tools(batch) for e in add_group(group, tools)]

    def add_group(batch: list[Request], tools: tuple[dict, ...] | None) -> list[str]:
        # enqueue_chat renders with the model's chat template exactly as LLM.chat does (same
        # renderer, same tokenization flags), so a seeded request gets the same tokens either way
        try:
            ids = llm.enqueue_chat([list(r.messages) for r in batch], [params(r) for r in batch], use_tqdm=False,
                                   **({"tools": list(tools)} if tools is not None else {}))
        except Exception as exc:  # noqa: BLE001 - e.g. a prompt longer than the context
            # vLLM aborts what it had added of the batch: the others go in one by one, and only the
            # request it refuses fails (an error answer), not the stream with everything in flight
            if len(batch) > 1:
                return [e for r in batch for e in add_group([r], tools)]
            first = (str(exc).splitlines() or [""])[0][:300]
            ready.append(Result(id=batch[0].id, text="", finish_reason="error",
                                error=f"vLLM refused the request: {type(exc).__name__}: {first}"))
            return []
        out = []
        for vid, r in zip(ids, batch):
            ext = vid.split("-", 1)[0]
            in_flight[ext], internal[ext] = r, vid
            stats.submitted[r.id] = stats.steps
            out.append(ext)
        stats.max_in_flight = max(stats.max_in_flight, len(in_flight))
        return out

    def submit(batch: list[Request]) -> None:
        fresh = []
        for r in batch:
            k = key(r) if (running_hedge or done_hedge) else None
            if k in running_hedge:  # the retry a hedge stood for: it runs on as this request
                ext = running_hedge.pop(k)
                hedge_key.pop(ext, None)
                orphaned.pop(ext, None)
                # its age counts from the hedge's start, so its own hedge is not late
                stats.submitted[r.id] = stats.submitted.pop(in_flight[ext].id, stats.steps)
                in_flight[ext] = r
                stats.hedges_used += 1
            elif k in done_hedge:
                res = done_hedge.pop(k)
                res.id = r.id
                ready.append(res)
                stats.hedges_used += 1
                if k in behind:  # that answer was cut: the retry after it is next, its clock starts now
                    h, hk = behind.pop(k)
                    if running_hedge.get(hk) == h:
                        orphaned[h] = time.time()
            else:
                fresh.append(r)
        if fresh:
            add(fresh)

    def drop_hedge(ext: str, k: str | None = None) -> None:
        """Abort hedge `ext`, or forget its answer if it has finished (then `k`, its payload key,
        names it), and drop the hedges that stood behind it."""
        k = hedge_key.pop(ext, k)
        orphaned.pop(ext, None)
        if k is not None and running_hedge.get(k) == ext:
            del running_hedge[k]
            in_flight.pop(ext, None)
            engine.abort_request([internal.pop(ext)], internal=True)
        if k is not None:
            done_hedge.pop(k, None)
            if k in behind:
                drop_hedge(*behind.pop(k))
        h, hk = hedge_of.pop(ext, (None, None))
        if h is not None:
            drop_hedge(h, hk)

    def settle_behind(ext: str, res: Result) -> None:
        """`ext` ended with `res`: the hedge standing behind it is dropped unless `res` was cut."""
        h, k = hedge_of.pop(ext, (None, None))
        if h is None:
            return
        if res.finish_reason != "length":
            drop_hedge(h, k)
        elif ext in hedge_key:  # a cut hedge nobody claimed yet: its own hedge waits for that claim
            behind[hedge_key[ext]] = (h, k)
        elif running_hedge.get(k) == h:  # the retry should come: keep the hedge running a while
            orphaned[h] = time.time()

    def start_hedges() -> None:
        originals = len(in_flight) - len(running_hedge)
        if len(feed) or originals > max(1, int(stats.max_in_flight * HEDGE_BELOW)):
            return
        room = None if max_in_flight is None else max_in_flight - len(in_flight)
        todo = []
        for ext, r in in_flight.items():  # hedges too: a hedge can be cut like its original
            if (ext in hedge_of or r.json_schema is None or r.sampling.seed is None or r.reasoning is not None
                    or stats.steps - stats.submitted.get(r.id, stats.steps) < HEDGE_AFTER * r.sampling.max_tokens):
                continue
            todo.append((ext, r))
        for ext, r in todo[:room]:
            retry = _retry_of(r)
            k = key(retry)
            if k in running_hedge or k in done_hedge:
                continue
            added = add([retry])
            if added:
                hedge_of[ext] = (added[0], k)
                hedge_key[added[0]] = k
                running_hedge[k] = added[0]
                stats.hedges += 1

    def think(ext: str, r: Request, out: Any) -> Result | None:
        """A thinking request's phase ended: its Result, or None while its answer runs."""
        if ext in answering:
            return thinker.merge(r, answering.pop(ext), out)
        step = thinker.after_thinking(r, out)
        if isinstance(step, Result):
            return step
        ids, answer_params, thought = step
        try:
            vid = llm.enqueue([{"prompt_token_ids": ids}], [answer_params], use_tqdm=False)[0]
        except Exception as exc:  # noqa: BLE001 - e.g. past the context: this request fails, not the stream
            first = (str(exc).splitlines() or [""])[0][:300]
            log.warning("%s: the answer phase was refused: %s: %s", r.id, type(exc).__name__, first)
            return Result(id=r.id, text="", finish_reason="error", reasoning=thought.reasoning,
                          error=f"vLLM refused the answer phase: {type(exc).__name__}: {first}")
        nxt = vid.split("-", 1)[0]
        in_flight[nxt], internal[nxt], answering[nxt] = r, vid, thought
        return None

    def finished(ext: str, out: Any) -> Result | None:
        r = in_flight.pop(ext)
        internal.pop(ext, None)
        if r.reasoning is not None and thinker is not None:
            res = think(ext, r, out)
            if res is not None:
                stats.finished[r.id] = stats.steps
            return res
        res = _result(r, out)
        settle_behind(ext, res)
        if ext in hedge_key:  # a hedge ended before its retry was sent: keep the answer for it
            k = hedge_key.pop(ext)
            running_hedge.pop(k, None)
            orphaned.pop(ext, None)
            done_hedge[k] = res
            return None
        stats.finished[r.id] = stats.steps
        return res

    try:
        while True:
            if not in_flight and not len(feed) and not feed.closed:
                stats.idle_waits += 1
            room = None if max_in_flight is None else max(max_in_flight - len(in_flight), 0)
            batch = feed.take(room, timeout=0.0 if in_flight else None)
            if batch:
                submit(batch)
            now = time.time()
            for h in [h for h, t in orphaned.items() if now - t > HEDGE_GRACE_S]:
                drop_hedge(h)
            while ready:
                res = ready.pop()
                if on_result:
                    on_result(res)
                yield res
            if feed.exhausted() and len(in_flight) == len(running_hedge):
                return  # nothing left but hedges nobody will claim (aborted below)
            if not in_flight:
                continue
            outputs = engine.step()
            stats.steps += 1
            for out in outputs:
                if not out.finished or out.request_id not in in_flight:
                    continue
                res = finished(out.request_id, out)
                if res is None:
                    continue
                if on_result:
                    on_result(res)
                yield res
            if hedge:
                start_hedges()
    finally:
        stats.ended = time.time()
        if in_flight:
            engine.abort_request([internal[k] for k in in_flight if k in internal], internal=True)
