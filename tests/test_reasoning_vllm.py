"""A thinking model on the real offline engine (the embedded model, with a chat template that opens
a `<think>` block as DeepSeek-R1's does): the completion is split into reasoning and answer, a
spent thinking budget forces the end marker and the answer follows, and the output schema applies
to the answer after the end marker only. The embedded model is no reasoning model: these assert
the mechanics, never what it writes."""
from __future__ import annotations

import json

import pytest

from generator.core.backend import Request, Sampling
from generator.core.reasoning import PARSERS

pytestmark = pytest.mark.slow

OPENS_THINKING = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 999}},
          "required": ["name", "count"], "additionalProperties": False}


def _req(i: int, max_tokens: int, budget: int | None = None, schema: dict | None = None) -> Request:
    return Request(id=f"t{i}", messages=({"role": "user", "content": f"Think about the number {i}, then answer."},),
                   sampling=Sampling(temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=900 + i),
                   json_schema=schema, reasoning=PARSERS["deepseek_r1"], max_reasoning_tokens=budget)


@pytest.fixture
def thinking_engine(vllm_backend):
    llm = vllm_backend.llm
    before = llm.chat_template
    llm.chat_template = OPENS_THINKING  # what LLM.enqueue_chat renders with when given none
    yield vllm_backend
    llm.chat_template = before


def test_split_budget_and_schema_after_the_end_marker(thinking_engine):
    reqs = [_req(1, 24), _req(2, 160, budget=8, schema=SCHEMA), _req(3, 160, budget=8)]
    first = {r.id: r for r in thinking_engine.generate(reqs)}
    again = {r.id: r for r in thinking_engine.generate(reqs)}
    # deterministic: both phases are seeded and the second is a function of the first's tokens
    assert {k: (v.text, v.reasoning, v.meta) for k, v in first.items()} == \
           {k: (v.text, v.reasoning, v.meta) for k, v in again.items()}
    plain = first["t1"]  # no budget: the reasoning ends (an answer follows) or runs into max_tokens (none)
    assert plain.reasoning is not None and "<think>" not in plain.reasoning and "</think>" not in plain.reasoning
    if plain.meta.get("reasoning_unfinished"):
        assert plain.text == "" and plain.reasoning_tokens == plain.completion_tokens
    else:
        assert plain.reasoning_tokens < plain.completion_tokens
    for rid in ("t2", "t3"):
        r = first[rid]
        assert r.error is None and r.reasoning is not None and "</think>" not in r.reasoning
        # the budget: at most 8 thinking tokens, then the forced marker (or the model ended first)
        assert r.meta.get("reasoning_forced") or r.reasoning_tokens <= 8
        if r.meta.get("reasoning_forced"):
            assert 8 < r.reasoning_tokens <= 8 + 8  # the thinking, then the marker and a blank line
        assert r.completion_tokens > r.reasoning_tokens and not r.meta.get("reasoning_unfinished")
    # the schema applied to the answer, after the end marker: the answer is the object itself
    data = json.loads(first["t2"].text)
    assert set(data) == {"name", "count"} and first["t2"].finish_reason == "stop"
