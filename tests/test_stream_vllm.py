"""The continuously fed offline engine on the embedded model (the session's one engine): requests
join while others run, outputs match `LLM.chat` for the same seeds, structured output streams,
and an abandoned stream leaves the engine clean."""
from __future__ import annotations

import json

import pytest

from generator.core.backend import Request, RequestFeed, Sampling

pytestmark = pytest.mark.slow

# every field bounded: the grammar closes any answer well inside the 256-token budget
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 999}},
          "required": ["name", "count"], "additionalProperties": False}


def _req(i: int, max_tokens: int, temperature: float = 0.8, schema: dict | None = None) -> Request:
    return Request(id=f"s{i}", messages=({"role": "system", "content": "You are brief."},
                                         {"role": "user", "content": f"Tell me one fact about the number {i}."}),
                   sampling=Sampling(temperature=temperature, top_p=0.95, max_tokens=max_tokens, seed=500 + i),
                   json_schema=schema)


def test_a_request_put_while_others_run_joins_at_the_next_step(vllm_backend):
    feed = RequestFeed([_req(0, 4), _req(1, 48), _req(2, 48)])
    seen = []
    for res in vllm_backend.stream(feed):
        seen.append(res)
        if len(seen) == 1:
            feed.put(_req(3, 8))
        if len(seen) == 4:
            feed.close()
    st = vllm_backend.last_stream
    ids = [r.id for r in seen]
    assert sorted(ids) == ["s0", "s1", "s2", "s3"]
    assert all(r.completion_tokens > 0 and r.finish_reason in ("stop", "length") for r in seen)
    # it joined right after the step that finished the first answer (whichever the model ended
    # first), while the longest request was still running
    first = min(st.finished[i] for i in ("s0", "s1", "s2"))
    assert st.submitted["s3"] == first
    assert st.submitted["s3"] < max(st.finished["s0"], st.finished["s1"], st.finished["s2"])
    # the engine never waited on the feed while it had work: one step per loop until the end
    assert st.idle_waits == 0 and st.steps == max(st.finished.values())


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_stream_matches_llm_chat_for_seeded_requests(vllm_backend, temperature):
    reqs = [_req(10 + i, 8 + 5 * i, temperature) for i in range(8)]
    old = {r.id: r for r in vllm_backend.chat(reqs)}
    new = {r.id: r for r in vllm_backend.generate(reqs)}
    assert set(new) == set(old)
    for k in old:
        assert (new[k].text, new[k].finish_reason, new[k].prompt_tokens, new[k].completion_tokens) == \
            (old[k].text, old[k].finish_reason, old[k].prompt_tokens, old[k].completion_tokens), k


def test_structured_output_through_the_stream(vllm_backend):
    feed = RequestFeed([_req(20 + i, 256, schema=SCHEMA) for i in range(3)])
    out = []
    for res in vllm_backend.stream(feed):
        out.append(res)
        if len(out) == 1:
            feed.put(_req(30, 256, schema=SCHEMA))
        if len(out) == 4:
            feed.close()
    assert len(out) == 4
    for r in out:  # the grammar ends every answer as this object, well inside the budget
        assert r.finish_reason == "stop" and r.completion_tokens > 0
        data = json.loads(r.text)
        assert set(data) == {"name", "count"} and len(data["name"]) <= 20 and 0 <= data["count"] <= 999


def test_an_abandoned_stream_aborts_what_it_had_in_flight(vllm_backend):
    feed = RequestFeed([_req(40 + i, 64) for i in range(4)], close=True)
    it = vllm_backend.stream(feed)
    next(it)
    it.close()
    engine = vllm_backend.llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert len(list(vllm_backend.generate([_req(50, 4)]))) == 1  # and the engine still serves


def test_one_stream_at_a_time_per_engine(vllm_backend):
    first = vllm_backend.stream(RequestFeed([_req(60, 4)], close=True))
    next(first)
    with pytest.raises(RuntimeError, match="one feed"):
        next(vllm_backend.stream(RequestFeed([_req(61, 4)], close=True)))
    first.close()
    assert len(list(vllm_backend.generate([_req(62, 4)]))) == 1


def test_window_caps_requests_in_the_engine_and_refills_at_once(vllm_backend):
    vllm_backend.window = 2
    try:
        out = list(vllm_backend.generate([_req(70 + i, 4 + 4 * i) for i in range(5)]))
    finally:
        vllm_backend.window = None
    st = vllm_backend.last_stream
    assert len(out) == 5 and st.max_in_flight == 2
    # each later request joined the step after one finished: no draining between "windows"
    finish_steps = sorted(st.finished.values())
    assert sorted(st.submitted.values())[2:] == finish_steps[:3]
