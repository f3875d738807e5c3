"""A thinking model on the offline engine: each request with reasoning markers runs in two phases.

1. Thinking: free text (no output schema) until the end marker, at most `max_reasoning_tokens`
   tokens (else `max_tokens`).
2. The answer: the prompt's tokens, the thinking's tokens and, when the budget ran out, the end
   marker (forced, then a blank line) go back in as one token prompt, and the model answers in
   what is left of `max_tokens`, under the output schema when the request has one. So a schema
   applies after the reasoning, never to it.

Both phases are seeded with the request's seed and the second is a pure function of the first's
tokens, so the answer is as deterministic as a one-phase answer, and the request cache holds the
merged result under the request's own key (which names the markers and the budget).
A completion that never opened a reasoning block (a model that may skip thinking) is the answer
itself, unless the request has an output schema: that answer was written without it, so it is
set aside (its tokens still counted) and the answer phase starts from the prompt alone. Reasoning
cut by `max_tokens`, or one the model stopped inside, has no answer (`meta.reasoning_unfinished`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generator.core.backend import Request, Result
from generator.core.reasoning import FORCED_END, split
from generator.engine.backends.vllm_args import answer_kwargs, sampling_params


@dataclass
class Thought:
    """What the first phase left for the second."""

    reasoning: str | None
    prompt_tokens: int
    thinking_tokens: int  # generated in phase 1, plus the forced marker's tokens
    forced: bool
    set_aside: int = 0    # phase 1's tokens when it answered without thinking (and without the schema)


class Thinker:
    def __init__(self, llm: Any):
        self.llm = llm  # its tokenizer writes a forced end marker (read only then)

    def after_thinking(self, r: Request, out: Any) -> Result | tuple[list[int], Any, Thought]:
        """Phase 1 finished: the final Result (no answer to follow), or (token prompt, sampling
        params, Thought) of phase 2."""
        c = out.outputs[0]
        ids = list(c.token_ids)
        prompt = len(out.prompt_token_ids or [])
        s = split(c.text, r.reasoning)
        if s.reasoning is None and r.json_schema is None:  # the model answered without thinking
            return Result(id=r.id, text=c.text, finish_reason=c.finish_reason or "stop", prompt_tokens=prompt,
                          completion_tokens=len(ids))
        if s.reasoning is None:  # ...but not under the schema: the answer phase starts from the prompt
            params = sampling_params(answer_kwargs(r.sampling, r.json_schema, r.sampling.max_tokens))
            return list(out.prompt_token_ids), params, Thought(None, prompt, 0, False, set_aside=len(ids))
        budget = r.max_reasoning_tokens
        cut_by_budget = (c.finish_reason == "length" and budget is not None and budget < r.sampling.max_tokens
                         and len(ids) >= budget)
        if not s.ended and not cut_by_budget:
            return Result(id=r.id, text="", finish_reason=c.finish_reason or "stop", prompt_tokens=prompt,
                          completion_tokens=len(ids), reasoning=s.reasoning, reasoning_tokens=len(ids),
                          meta={"reasoning_unfinished": True})
        forced: list[int] = []
        if cut_by_budget and not s.ended:
            forced = list(self.llm.get_tokenizer().encode(r.reasoning.end + FORCED_END, add_special_tokens=False))
        left = r.sampling.max_tokens - len(ids) - len(forced)
        if left <= 0:  # nothing left for the answer: the end marker was the last token allowed
            return Result(id=r.id, text="", finish_reason="length", prompt_tokens=prompt,
                          completion_tokens=len(ids), reasoning=s.reasoning, reasoning_tokens=len(ids),
                          meta={"reasoning_unfinished": True})
        params = sampling_params(answer_kwargs(r.sampling, r.json_schema, left))
        thought = Thought(s.reasoning, prompt, len(ids) + len(forced), bool(forced))
        return list(out.prompt_token_ids) + ids + forced, params, thought

    @staticmethod
    def merge(r: Request, thought: Thought, out: Any) -> Result:
        """Phase 2 finished: the request's Result, its reasoning and answer apart."""
        c = out.outputs[0]
        meta = {"reasoning_forced": True} if thought.forced else {}
        return Result(id=r.id, text=c.text, finish_reason=c.finish_reason or "stop", prompt_tokens=thought.prompt_tokens,
                      completion_tokens=thought.set_aside + thought.thinking_tokens + len(c.token_ids),
                      reasoning=thought.reasoning, reasoning_tokens=thought.thinking_tokens, meta=meta)
