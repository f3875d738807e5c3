"""The continuously fed backend interface (`RequestFeed`, `Backend.stream`) and its callers, on the
fake model and a mock HTTP transport: control flow only; tests/test_stream_vllm.py runs it on
the real engine and server."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from generator.core.backend import Request, RequestFeed, Sampling
from generator.core.errors import ModelError
from generator.testing.fake import FakeBackend
from generator.engine.backends.memory import split_memory
from generator.engine.backends.openai_http import OpenAIBackend
from generator.engine.request_cache import RequestCache


def _req(i: int, max_tokens: int = 16) -> Request:
    return Request(id=f"q{i}", messages=({"role": "user", "content": f"question {i}"},),
                   sampling=Sampling(max_tokens=max_tokens, seed=i))


# ---------------------------------------------------------------- the feed contract
def test_stream_ends_when_the_feed_is_closed_empty_and_nothing_in_flight():
    fake = FakeBackend()
    assert list(fake.stream(RequestFeed(close=True))) == []
    out = [r.id for r in fake.stream(RequestFeed([_req(0), _req(1)], close=True))]
    assert sorted(out) == ["q0", "q1"]


@pytest.mark.parametrize("lifo", [False, True])
def test_request_put_after_the_first_result_completes(lifo):
    fake = FakeBackend(lifo=lifo)
    feed = RequestFeed([_req(i) for i in range(3)])
    seen = []
    for res in fake.stream(feed):
        seen.append(res.id)
        if len(seen) == 1:
            feed.put(_req(9))
        if len(seen) == 4:
            feed.close()  # nothing outstanding: close before asking for the next result
    assert sorted(seen) == ["q0", "q1", "q2", "q9"]
    # newest first: the follow-up overtakes what was queued before it
    assert (seen[1] == "q9") == lifo


def test_stream_waits_for_another_thread_when_idle():
    feed = RequestFeed()
    fake = FakeBackend()

    def producer():
        for i in range(3):
            time.sleep(0.05)
            feed.put(_req(i))
        time.sleep(0.05)
        feed.close()

    t = threading.Thread(target=producer)
    t.start()
    out = [r.id for r in fake.stream(feed)]
    t.join()
    assert out == ["q0", "q1", "q2"]


def test_put_on_a_closed_feed_is_refused():
    feed = RequestFeed(close=True)
    with pytest.raises(RuntimeError):
        feed.put(_req(0))


# ---------------------------------------------------------------- the one core on one feed
def _row(i: int) -> dict:
    return {"id": f"rec{i}", "seed": 10 * i, "messages": [{"role": "user", "content": f"write {i}"}],
            "temperature": 0.8, "top_p": 0.95, "max_tokens": 16, "template": "t", "model": "fake",
            "structured": False, "topic_id": "t"}


def _answer(proj, backend, rows, cache, retries, final):
    from generator.config.spec import load_spec
    from generator.engine.pipeline.execute import answer_rows
    from generator.engine.planner import resolve_spec

    return answer_rows(resolve_spec(load_spec(proj / "spec.yaml")), rows, {"fake": backend}, final.append,
                       cache=cache, retries=retries)


def test_retries_join_the_same_feed_at_once(proj, tmp_path):
    """An empty answer's retry is put the moment it lands; with a newest-first fake it is served
    next, before the first attempts still queued (a windowed driver would send it after them).
    Each answer takes 50 ms, as an engine step would: time for the scheduler to put the retry."""

    class Stepped(FakeBackend):
        def generate(self, requests, on_result=None):
            for res in super().generate(requests, on_result):
                yield res
                time.sleep(0.05)  # the next step starts after the scheduler has seen this answer

    fake = Stepped(model="fake", script={"rec1#1": [""], "rec1#2": [""]}, lifo=True)
    cache = RequestCache(tmp_path / "cache.sqlite")
    final = []
    calls = _answer(proj, fake, [_row(i) for i in range(5)], cache, 2, final)
    order = [r.id for r in fake.calls]
    assert calls == len(order) == 7
    i = order.index("rec1#1")
    assert order[i:i + 3] == ["rec1#1", "rec1#2", "rec1#3"]
    by_id = {r["id"]: r for r in final}
    assert len(final) == 5 and by_id["rec1"]["attempts"] == 3 and by_id["rec1"]["status"] == "ok"
    assert len(cache) == 7  # every answer, the empty ones too, was cached as it landed
    # a rerun replays everything from the cache: no model call
    again = FakeBackend()
    final2 = []
    assert _answer(proj, again, [_row(i) for i in range(5)], cache, 2, final2) == 0
    assert not again.calls and sorted(r["id"] for r in final2) == sorted(by_id)
    cache.close()


class _DiesAfter(FakeBackend):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def generate(self, requests, on_result=None):
        for res in super().generate(requests, on_result):
            if len(self.calls) > self.n:
                raise KeyboardInterrupt  # not an Exception: nothing on the way up handles it
            yield res


def test_a_crash_loses_only_the_request_in_flight(proj, tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    with pytest.raises(KeyboardInterrupt):
        _answer(proj, _DiesAfter(3), [_row(i) for i in range(6)], cache, 0, [])
    assert len(cache) == 3  # the 4th answer was in flight: everything before it is on disk
    cache.close()


# ---------------------------------------------------------------- HTTP stream on a mock transport
def test_http_stream_sends_a_follow_up_while_others_run():
    """A request put after the first answer is sent at once and finishes before a slow one."""
    sent: list[tuple[str, float]] = []

    async def handler(request):
        body = json.loads(request.content)
        sent.append((body["messages"][-1]["content"], time.time()))
        await asyncio.sleep(body["max_tokens"] / 1000)
        return httpx.Response(200, json={"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    b = OpenAIBackend("m", "http://mock/v1", check=False, concurrency=4, transport=httpx.MockTransport(handler))
    feed = RequestFeed([_req(0, max_tokens=20), _req(1, max_tokens=600)])
    order = []
    for res in b.stream(feed):
        order.append((res.id, time.time()))
        if len(order) == 1:
            feed.put(_req(2, max_tokens=20))
        if len(order) == 3:
            feed.close()
    assert [i for i, _ in order] == ["q0", "q2", "q1"]
    assert b.stats["requests"] == 3
    # sent right after the first answer landed, not after the slow request drained
    assert sent[2][1] - order[0][1] < 0.3


def test_http_stream_respects_concurrency():
    live = {"now": 0, "max": 0}

    async def handler(request):
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        await asyncio.sleep(0.01)
        live["now"] -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]})

    b = OpenAIBackend("m", "http://mock/v1", check=False, concurrency=3, transport=httpx.MockTransport(handler))
    out = list(b.generate([_req(i) for i in range(20)]))
    assert len(out) == 20 and live["max"] == 3


# ---------------------------------------------------------------- memory split
class _M:
    def __init__(self, name, backend="vllm", **engine):
        self.name, self.backend, self.engine = name, backend, engine


def test_one_offline_model_gets_no_override():
    assert split_memory([_M("a"), _M("s", backend="openai")], True, 0.9) == {}
    assert split_memory([_M("a"), _M("a")], True, 0.9) == {}  # the same model listed twice


def test_gpu_fraction_split_equally_among_distinct_offline_models():
    got = split_memory([_M("a"), _M("b"), _M("c"), _M("s", backend="openai")], True, 0.9)
    assert got == {n: {"gpu_memory_utilization": 0.3} for n in "abc"}


def test_override_keeps_its_value_the_rest_share_what_is_left():
    got = split_memory([_M("a", gpu_memory_utilization=0.5), _M("b"), _M("c")], True, 0.9)
    assert got == {"b": {"gpu_memory_utilization": 0.2}, "c": {"gpu_memory_utilization": 0.2}}
    assert split_memory([_M("a", gpu_memory_utilization=0.5), _M("b", gpu_memory_utilization=0.4)], True, 0.9) == {}


def test_cpu_kv_bytes_split():
    gib = 1 << 30
    got = split_memory([_M("a"), _M("b"), _M("c", kv_cache_memory_bytes=gib)], False, 2 * gib)
    assert got == {"a": {"kv_cache_memory_bytes": gib // 2}, "b": {"kv_cache_memory_bytes": gib // 2}}
    thirds = split_memory([_M("a"), _M("b"), _M("c")], False, gib)
    assert sum(v["kv_cache_memory_bytes"] for v in thirds.values()) <= gib


def test_overrides_that_take_the_whole_budget_are_one_clear_error():
    with pytest.raises(ModelError, match="leaving nothing for b"):
        split_memory([_M("a", gpu_memory_utilization=0.9), _M("b")], True, 0.9)


def test_local_executor_gives_each_offline_model_its_slice(proj, tmp_path, monkeypatch):
    from generator.config.spec import load_spec
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec
    import generator.engine.backends.memory as memory

    monkeypatch.setattr(memory, "on_gpu", lambda: False)
    monkeypatch.setenv("SYNTHGEN_KV_CACHE_GB", "1")
    text = (proj / "spec.yaml").read_text()
    two = "models:\n  - name: smollm2-135m\n  - name: other-model\n"
    (proj / "spec.yaml").write_text(text.replace("models:\n  - name: smollm2-135m\n", two))
    seen = {}

    def factory(cfg, **_):
        seen[cfg.name] = dict(cfg.engine)
        return FakeBackend(model=cfg.name)

    run_spec(load_spec(proj / "spec.yaml"), out=tmp_path / "run", executor=LocalExecutor(backend_factory=factory))
    assert seen == {n: {"kv_cache_memory_bytes": 1 << 29} for n in ("smollm2-135m", "other-model")}


def test_a_prompt_the_engine_refuses_fails_alone_and_the_stream_goes_on():
    """vLLM's enqueue_chat raises on a prompt longer than the context (and aborts the rest of that
    batch): that one request gets an error answer, every other request is answered."""
    from types import SimpleNamespace

    from generator.engine.backends.vllm_stream import StreamStats, stream_engine

    class Engine:
        def __init__(self):
            self.queued: list[str] = []

        def step(self):
            done, self.queued = self.queued, []
            return [SimpleNamespace(request_id=i.split("-")[0], finished=True, prompt_token_ids=[1, 2],
                                    outputs=[SimpleNamespace(text=f"answer {i}", finish_reason="stop", token_ids=[3])])
                    for i in done]

        def abort_request(self, ids, internal=False):
            self.queued = [q for q in self.queued if q not in ids]

    class LLM:
        def __init__(self):
            self.llm_engine, self.n = Engine(), 0

        def enqueue_chat(self, convs, params, use_tqdm=False):
            ids = []
            for conv in convs:
                if "TOO LONG" in conv[-1]["content"]:
                    self.llm_engine.abort_request(ids)
                    raise ValueError("The decoder prompt (length 2049) is longer than the maximum model length")
                self.n += 1
                ids.append(f"{self.n}-x")
                self.llm_engine.queued.append(ids[-1])
            return ids

    reqs = [Request(id=f"r{i}", messages=({"role": "user", "content": "TOO LONG" if i == 2 else f"q{i}"},))
            for i in range(5)]
    out = {r.id: r for r in stream_engine(LLM(), RequestFeed(reqs, close=True), lambda r: None, None, StreamStats())}
    assert sorted(out) == [f"r{i}" for i in range(5)]
    assert out["r2"].finish_reason == "error" and "longer than the maximum" in out["r2"].error
    assert all(out[f"r{i}"].finish_reason == "stop" for i in (0, 1, 3, 4))


# ---------------------------------------------------------------- hedged retries (vllm_stream)
class _StepEngine:
    """One token a step per request; a request's answer length is fixed by (prompt, seed), and one
    longer than max_tokens is cut ("length"), as a degenerate structured answer is."""

    def __init__(self, lengths: dict[tuple[str, int], int]):
        self.lengths, self.running, self.aborted, self.n = lengths, {}, [], 0

    def enqueue_chat(self, convs, params, use_tqdm=False):
        ids = []
        for conv, r in zip(convs, params):
            self.n += 1
            ids.append(f"{self.n}-x")
            self.running[ids[-1]] = [r, 0]
        return ids

    @property
    def llm_engine(self):
        return self

    def step(self):
        from types import SimpleNamespace

        outs = []
        for vid, state in list(self.running.items()):
            r = state[0]
            state[1] += 1
            want = self.lengths.get((r.messages[-1]["content"], r.sampling.seed), 5)
            if state[1] >= min(want, r.sampling.max_tokens):
                del self.running[vid]
                reason = "length" if want > r.sampling.max_tokens else "stop"
                outs.append(SimpleNamespace(
                    request_id=vid.split("-")[0], finished=True, prompt_token_ids=[1],
                    outputs=[SimpleNamespace(text=f"{r.messages[-1]['content']} seed {r.sampling.seed}",
                                             finish_reason=reason, token_ids=[0] * state[1])]))
        return outs

    def abort_request(self, ids, internal=False):
        for vid in ids:
            if self.running.pop(vid, None) is not None:
                self.aborted.append(vid)


def _drive(lengths, n, hedge, max_tokens=40):
    """A caller like the scheduler: a cut answer is retried at once with the next seed; the feed
    closes when every record has an answer that is not cut. Returns answers by request id, the step
    each landed at, and the stream's stats."""
    from generator.engine.backends.vllm_stream import StreamStats, stream_engine

    schema = {"type": "object"}

    def req(i, attempt):
        return Request(id=f"r{i}#{attempt}", messages=({"role": "user", "content": f"p{i}"},),
                       sampling=Sampling(max_tokens=max_tokens, seed=100 * i + attempt - 1), json_schema=schema)

    engine, stats = _StepEngine(lengths), StreamStats()
    feed = RequestFeed([req(i, 1) for i in range(n)])
    got, landed, open_ = {}, {}, set(range(n))
    for res in stream_engine(engine, feed, lambda r: r, None, stats, hedge=hedge):
        got[res.id], landed[res.id] = res, stats.steps
        i, attempt = int(res.id[1:].split("#")[0]), int(res.id.split("#")[1])
        if res.finish_reason == "length":
            feed.put(req(i, attempt + 1))
        else:
            open_.discard(i)
            if not open_:
                feed.close()
    return got, landed, stats, engine


def _lengths(n, cut=(), retry_len=30):
    lengths = {(f"p{i}", 100 * i): 5 + i % 4 for i in range(n)}
    for i in cut:
        lengths[(f"p{i}", 100 * i)] = 10_000   # degenerate: cut at max_tokens
        lengths[(f"p{i}", 100 * i + 1)] = retry_len
    return lengths


def test_a_cut_answers_retry_runs_beside_the_batch_and_gets_the_same_answer():
    lengths = _lengths(16, cut=(3,))
    plain, plain_at, plain_stats, _ = _drive(lengths, 16, hedge=False)
    hedged, hedged_at, stats, engine = _drive(lengths, 16, hedge=True)
    # same answers, same requests answered
    assert {k: (v.text, v.finish_reason, v.completion_tokens) for k, v in plain.items()} == \
           {k: (v.text, v.finish_reason, v.completion_tokens) for k, v in hedged.items()}
    assert plain["r3#1"].finish_reason == "length" and plain["r3#2"].finish_reason == "stop"
    # without a hedge the retry starts when the cut answer lands (step 40) and needs 30 more steps;
    # with one it started once the batch drained and half the budget was spent
    assert plain_at["r3#2"] == 70
    # the hedge, 30 tokens long, was itself hedged at half its budget; that one went unused
    assert hedged_at["r3#2"] < 60 and stats.hedges == 2 and stats.hedges_used == 1
    assert stats.steps < plain_stats.steps and not engine.running


def test_a_retry_that_is_cut_too_has_its_own_retry_started_beside_it():
    """Two cut tries in a row: the third try was hedged while the second ran, so it does not start
    only when the second is cut; the answers are those of the unhedged run."""
    lengths = _lengths(16, cut=(3,))
    lengths[("p3", 301)] = 10_000  # the second try is cut too
    lengths[("p3", 302)] = 30
    plain, plain_at, _, _ = _drive(lengths, 16, hedge=False)
    hedged, hedged_at, stats, engine = _drive(lengths, 16, hedge=True)
    assert {k: (v.text, v.finish_reason) for k, v in plain.items()} == \
           {k: (v.text, v.finish_reason) for k, v in hedged.items()}
    assert [plain[f"r3#{a}"].finish_reason for a in (1, 2, 3)] == ["length", "length", "stop"]
    # unhedged: cut at 40, cut again at 80, the third try lands at 110; hedged: the second try
    # started at step 20 (cut at 60) and the third at 40, beside it
    assert plain_at["r3#3"] == 110 and hedged_at["r3#3"] <= 72
    assert stats.hedges_used == 2 and not engine.running


def test_a_hedge_whose_original_is_not_cut_is_aborted_and_never_answered():
    lengths = _lengths(8)
    lengths[("p2", 200)] = 35  # long but within the budget of 40: hedged at step 20, then not needed
    lengths[("p2", 201)] = 30
    got, _, stats, engine = _drive(lengths, 8, hedge=True)
    assert sorted(got) == [f"r{i}#1" for i in range(8)]
    assert stats.hedges == 1 and stats.hedges_used == 0
    assert len(engine.aborted) == 1 and not engine.running


def test_free_text_and_unseeded_requests_are_never_hedged():
    from generator.engine.backends.vllm_stream import StreamStats, stream_engine

    engine, stats = _StepEngine({("p0", None): 50, ("p1", 7): 50}), StreamStats()
    reqs = [Request(id="a", messages=({"role": "user", "content": "p0"},),
                    sampling=Sampling(max_tokens=40, seed=None), json_schema={"type": "object"}),
            Request(id="b", messages=({"role": "user", "content": "p1"},), sampling=Sampling(max_tokens=40, seed=7))]
    out = [r.id for r in stream_engine(engine, RequestFeed(reqs, close=True), lambda r: r, None, stats)]
    assert sorted(out) == ["a", "b"] and stats.hedges == 0 and stats.steps == 40


def test_a_run_ends_without_waiting_for_hedges_nobody_claims():
    """Max attempts reached (the caller does not retry a cut answer): the stream ends when the feed
    is closed and only hedges remain, and they are aborted."""
    from generator.engine.backends.vllm_stream import StreamStats, stream_engine

    lengths = _lengths(4, cut=(1,), retry_len=400)
    engine, stats = _StepEngine(lengths), StreamStats()
    reqs = [Request(id=f"r{i}", messages=({"role": "user", "content": f"p{i}"},),
                    sampling=Sampling(max_tokens=40, seed=100 * i), json_schema={}) for i in range(4)]
    out = list(stream_engine(engine, RequestFeed(reqs, close=True), lambda r: r, None, stats))
    # the hedge and, past half its budget, the hedge behind it: both aborted at the end
    assert len(out) == 4 and stats.hedges == 2 and stats.steps == 40
    assert not engine.running and len(engine.aborted) == 2


@pytest.mark.parametrize("hedge", [True, False])
def test_the_model_entrys_hedge_reaches_the_offline_engine_loop(monkeypatch, hedge):
    """`hedge:` in a model entry is read by the offline backend too (not only by fleets)."""
    import generator.engine.backends.vllm_offline as offline
    from generator.config.models import ModelConfig
    from generator.engine.backends import make_backend

    made = {}

    class Recording:
        def __init__(self, model, engine=None, **kw):
            made.update(kw, model=model)

    monkeypatch.setattr(offline, "VLLMOfflineBackend", Recording)
    make_backend(ModelConfig(name="smollm2-135m", **({} if hedge else {"hedge": False})))
    assert made["model"] == "smollm2-135m" and made["hedge"] is hedge


def _random_lengths(data, n):
    """Answer lengths by (prompt, seed) for up to 4 tries of each of `n` records: short, long but
    within the budget of 40, or cut (some records cut at every try)."""
    from hypothesis import strategies as st

    kind = st.sampled_from([5, 12, 25, 38, 10_000])
    return {(f"p{i}", 100 * i + a): data.draw(kind) for i in range(n) for a in range(4)}


def test_hedging_never_changes_an_answer_and_leaves_the_engine_empty():
    """Random lengths, cuts and chains of cuts: the same answers for the same requests with and
    without hedges, each request answered once, nothing left running."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data(), st.integers(1, 12))
    def check(data, n):
        lengths = _random_lengths(data, n)
        lengths.update({(f"p{i}", 100 * i + 4): 5 for i in range(n)})  # the fifth try always ends
        plain, _, plain_stats, _ = _drive(lengths, n, hedge=False)
        hedged, _, stats, engine = _drive(lengths, n, hedge=True)
        assert {k: (v.text, v.finish_reason) for k, v in plain.items()} == \
               {k: (v.text, v.finish_reason) for k, v in hedged.items()}
        assert not engine.running and stats.hedges_used <= stats.hedges
        assert stats.steps <= plain_stats.steps

    check()
