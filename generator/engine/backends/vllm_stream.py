"""The continuously fed loop over one offline vLLM engine (`LLM.enqueue_chat` + `LLMEngine.step`).

Requests are taken from the feed before every engine step without waiting, so a request put while
others run joins the running batch at the next step; the loop waits on the feed only when the
engine has nothing in flight. Requests still in flight when the consumer stops (an exception, a
closed generator) are aborted, so the engine is clean for the next caller.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from generator.core.backend import ProgressFn, Request, RequestFeed, Result


@dataclass
class StreamStats:
    """What one stream did: engine steps, and for each request the step it joined and left at."""

    steps: int = 0
    idle_waits: int = 0           # times the loop waited on the feed with nothing in flight
    max_in_flight: int = 0
    submitted: dict[str, int] = field(default_factory=dict)   # request id -> steps run before it joined
    finished: dict[str, int] = field(default_factory=dict)    # request id -> step that finished it
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


def stream_engine(llm: Any, feed: RequestFeed, params: Callable[[Request], Any],
                  on_result: ProgressFn | None, stats: StreamStats,
                  max_in_flight: int | None = None) -> Iterator[Result]:
    """`max_in_flight` (run.window) caps the requests handed to the engine at once; a finished
    one is replaced at the next step, so the cap never drains the engine."""
    engine = llm.llm_engine
    # LLM's request ids are counter values; the engine makes them unique with a random suffix
    # ("7-1a2b3c4d"), and step() reports the counter value: key by that
    in_flight: dict[str, Request] = {}
    internal: dict[str, str] = {}

    refused: list[Result] = []

    def submit(batch: list[Request]) -> None:
        # one enqueue_chat per set of tools: the template renders the call's `tools` into every
        # conversation of it
        for tools, group in by_tools(batch):
            submit_group(group, tools)

    def submit_group(batch: list[Request], tools: tuple[dict, ...] | None) -> None:
        # enqueue_chat renders with the model's chat template exactly as LLM.chat does (same
        # renderer, same tokenization flags), so a seeded request gets the same tokens either way
        try:
            ids = llm.enqueue_chat([list(r.messages) for r in batch], [params(r) for r in batch], use_tqdm=False,
                                   **({"tools": list(tools)} if tools is not None else {}))
        except Exception as exc:  # noqa: BLE001 - e.g. a prompt longer than the context
            # vLLM aborts what it had added of the batch: the others go in one by one, and only the
            # request it refuses fails (an error answer), not the stream with everything in flight
            if len(batch) > 1:
                for r in batch:
                    submit_group([r], tools)
                return
            first = (str(exc).splitlines() or [""])[0][:300]
            refused.append(Result(id=batch[0].id, text="", finish_reason="error",
                                  error=f"vLLM refused the request: {type(exc).__name__}: {first}"))
            return
        for vid, r in zip(ids, batch):
            ext = vid.split("-", 1)[0]
            in_flight[ext], internal[ext] = r, vid
            stats.submitted[r.id] = stats.steps
        stats.max_in_flight = max(stats.max_in_flight, len(in_flight))

    try:
        while True:
            if not in_flight and not len(feed) and not feed.closed:
                stats.idle_waits += 1
            room = None if max_in_flight is None else max(max_in_flight - len(in_flight), 0)
            batch = feed.take(room, timeout=0.0 if in_flight else None)
            if batch:
                submit(batch)
            while refused:
                res = refused.pop()
                if on_result:
                    on_result(res)
                yield res
            if not in_flight:
                if feed.exhausted():
                    return
                continue
            outputs = engine.step()
            stats.steps += 1
            for out in outputs:
                if not out.finished or out.request_id not in in_flight:
                    continue
                r = in_flight.pop(out.request_id)
                internal.pop(out.request_id, None)
                stats.finished[r.id] = stats.steps
                res = _result(r, out)
                if on_result:
                    on_result(res)
                yield res
    finally:
        stats.ended = time.time()
        if in_flight:
            engine.abort_request([internal[k] for k in in_flight], internal=True)
