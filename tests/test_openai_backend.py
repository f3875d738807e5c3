"""The OpenAI-compatible backend: unit checks on a mock transport, control flow (retries, key, stream)
against a scripted server on 127.0.0.1 (tests/openai_server.py), then a real vLLM api_server.

The server (embedded model, 127.0.0.1, a free port) starts once per session; set
SYNTHGEN_TEST_OPENAI_URL=http://127.0.0.1:PORT/v1 to use one already running instead."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from generator.core.backend import Request, Sampling
from generator.engine.backends.openai_http import OpenAIBackend
from generator.core.errors import BackendError
from helpers import importorskip_ci, small_spec
from vllm_server import free_port as _free_port, start_vllm_server, stop_server, wait_healthy  # noqa: F401
from openai_server import OpenAIServer, scripted_answer

SCHEMA = {"type": "object", "properties": {"question": {"type": "string", "maxLength": 80},
                                           "answer": {"type": "integer"}},
          "required": ["question", "answer"], "additionalProperties": False}


def _req(i: int, schema: dict | None = None, max_tokens: int = 24, words: int = 0) -> Request:
    pad = " ".join(str((i * 7919 + k * 104729) % 100003) for k in range(words))
    return Request(id=f"r{i}#1", messages=({"role": "user", "content": f"{pad} Name a fruit ({i})."},),
                   sampling=Sampling(temperature=0.7, max_tokens=max_tokens, seed=100 + i), json_schema=schema)


def _ok(body: dict, text: str = "apple") -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 5, "completion_tokens": 1}})


# ---------------------------------------------------------------- fast: mock transport
def test_retries_429_and_5xx_honouring_retry_after():
    hits = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        hits["n"] += 1
        if hits["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "slow down"}})
        if hits["n"] == 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return _ok(json.loads(request.content))

    b = OpenAIBackend("m", "http://mock/v1", check=False, transport=httpx.MockTransport(handler),
                      backoff=0.01, concurrency=1)
    out = list(b.generate([_req(0)]))
    assert out[0].text == "apple" and out[0].prompt_tokens == 5 and out[0].completion_tokens == 1
    assert b.stats["retries"] == 2 and b.stats["status_429"] == 1 and b.stats["status_5xx"] == 1


def test_4xx_is_one_line_with_status_and_server_message():
    def handler(request):
        return httpx.Response(400, json={"error": {"message": "max_tokens is too large:\n 9999"}})

    b = OpenAIBackend("m", "http://mock/v1", check=False, transport=httpx.MockTransport(handler))
    with pytest.raises(BackendError) as err:
        list(b.generate([_req(0)]))
    msg = str(err.value)
    assert "HTTP 400" in msg and "max_tokens is too large: 9999" in msg and "\n" not in msg


def test_5xx_after_all_retries_is_an_error_result_not_a_crash():
    b = OpenAIBackend("m", "http://mock/v1", check=False, max_retries=1, backoff=0.01,
                      transport=httpx.MockTransport(lambda r: httpx.Response(500, text="boom")))
    [res] = list(b.generate([_req(0)]))
    assert res.finish_reason == "error" and "HTTP 500" in res.error


def test_api_key_sent_but_never_described(monkeypatch):
    monkeypatch.setenv("SG_TEST_KEY", "sk-very-secret-123")
    seen = {}

    def handler(request):
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        return _ok(seen["body"])

    b = OpenAIBackend("m", "http://mock/v1", api_key_env="SG_TEST_KEY", check=False,
                      transport=httpx.MockTransport(handler))
    list(b.generate([_req(1, schema=SCHEMA)]))
    assert seen["auth"] == "Bearer sk-very-secret-123"
    text = json.dumps(b.describe()) + repr(b)
    assert "sk-very-secret" not in text
    b2 = OpenAIBackend("m", "http://user:pw@mock/v1?token=x", api_key_env="SG_TEST_KEY", check=False)
    text = json.dumps(b2.describe()) + repr(b2)
    assert "sk-very-secret" not in text and ":pw@" not in text and "token=" not in text and "user" not in text
    rf = seen["body"]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"] == SCHEMA
    assert "seed" not in seen["body"]  # opt-in only (CPU vLLM crash, see docs/scale-out.md)
    monkeypatch.delenv("SG_TEST_KEY")
    with pytest.raises(BackendError, match="SG_TEST_KEY is not set"):
        OpenAIBackend("m", "http://mock/v1", api_key_env="SG_TEST_KEY", check=False)


def test_seed_is_opt_in(monkeypatch):
    bodies = []
    t = httpx.MockTransport(lambda r: (bodies.append(json.loads(r.content)), _ok({}))[1])
    list(OpenAIBackend("m", "http://mock/v1", check=False, transport=t, send_seed=True).generate([_req(3)]))
    monkeypatch.setenv("SYNTHGEN_HTTP_SEED", "1")
    list(OpenAIBackend("m", "http://mock/v1", check=False, transport=t).generate([_req(4)]))
    assert [b.get("seed") for b in bodies] == [103, 104]


def test_generate_streams_results_as_they_finish():
    """The first answer is yielded while later requests are still unsent (concurrency 1)."""
    async def slow(request):
        await asyncio.sleep(0.02)
        return _ok({})

    b = OpenAIBackend("m", "http://mock/v1", check=False, concurrency=1, transport=httpx.MockTransport(slow))
    finished = []
    b.on_finished = finished.append
    it = b.generate([_req(i) for i in range(20)])
    first = next(it)
    in_flight_at_first = b.stats["requests"]
    rest = list(it)
    assert first.id == "r0#1" and in_flight_at_first < 20 and len(rest) == 19
    assert finished == [1] * 20


# ---------------------------------------------------------------- slow: a real vLLM server
def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url.removesuffix("/v1") + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


SPEC = small_spec("http-small", 3, max_tokens=32, run="{shard_size: 4}",
                  models='{name: smollm2-135m, backend: openai, base_url: "BASE_URL", api_key_env: SG_TEST_SERVER_KEY}')


@pytest.mark.slow
def test_real_server_plain_and_structured(vllm_server):
    b = OpenAIBackend("smollm2-135m", vllm_server, concurrency=4)
    finished = []
    b.on_finished = finished.append
    reqs = [_req(i) for i in range(6)] + [_req(10 + i, schema=SCHEMA, max_tokens=48) for i in range(4)]
    out = {r.id: r for r in b.generate(reqs)}
    assert set(out) == {r.id for r in reqs} and sum(finished) == 10
    for r in out.values():
        assert r.finish_reason in ("stop", "length") and r.prompt_tokens > 0 and r.completion_tokens > 0
    for i in range(4):
        r = out[f"r{10 + i}#1"]
        if r.finish_reason == "stop":
            assert set(json.loads(r.text)) == {"question", "answer"}


@pytest.mark.slow
def test_real_server_errors_are_one_line(vllm_server):
    with pytest.raises(BackendError, match="does not serve model 'nope'"):
        OpenAIBackend("nope", vllm_server)
    b = OpenAIBackend("smollm2-135m", vllm_server)
    with pytest.raises(BackendError) as err:
        list(b.generate([_req(0, max_tokens=5000)]))  # beyond --max-model-len 2048
    assert "HTTP 400" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_default_requests_do_not_crash_a_cpu_server(vllm_server):
    """Concurrent long prompts exceed the CPU server's 2048-token step budget, so prefills are
    chunked; a seeded request would kill the engine there. The default sends no seed."""
    b = OpenAIBackend("smollm2-135m", vllm_server, concurrency=16)
    out = list(b.generate([_req(200 + i, max_tokens=4, words=150) for i in range(6)]))
    assert len(out) == 6 and all(r.finish_reason != "error" for r in out)
    assert sum(r.prompt_tokens for r in out) > 2048  # more than one step's budget arrived together
    assert _healthy(vllm_server)


# ---------------------------------------------------------------- fast: a scripted server on 127.0.0.1
def test_run_spec_through_the_server_keeps_the_key_out(tmp_path, monkeypatch):
    from generator.runs import run_spec
    from generator.config.spec import load_spec

    monkeypatch.setenv("SG_TEST_SERVER_KEY", "sk-do-not-store-4242")
    with OpenAIServer() as server:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(SPEC.replace("BASE_URL", server.url))
        res = run_spec(load_spec(spec_path), out=tmp_path / "run")
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    plan = pl.read_parquet(tmp_path / "run" / "plan.parquet")
    assert sorted(df["id"].to_list()) == sorted(plan["id"].to_list()) and df.height == 12
    assert res.model_calls == 12 == len(server.bodies)
    assert server.auth == ["Bearer sk-do-not-store-4242"] * 12  # sent with every request...
    by_prompt = {b["messages"][-1]["content"]: scripted_answer(b) for b in server.bodies}
    assert [by_prompt[p] for p in df["prompt"]] == df["completion"].to_list()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["smollm2-135m"]["backend"] == "openai"
    for f in (tmp_path / "run").rglob("*"):  # ...and written nowhere
        if f.is_file():
            assert b"sk-do-not-store-4242" not in f.read_bytes(), f


def test_faults_429_and_500_are_retried_nothing_lost(tmp_path, monkeypatch):
    from generator.engine.executors.local import LocalExecutor
    from generator.engine.backends import make_backend
    from generator.runs import run_spec
    from generator.config.spec import load_spec

    monkeypatch.setenv("SG_TEST_SERVER_KEY", "k")
    made = []

    def factory(cfg, **kw):
        made.append(make_backend(cfg, **kw, backoff=0.05))
        return made[-1]

    with OpenAIServer(faults=6) as server:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(SPEC.replace("BASE_URL", server.url))
        res = run_spec(load_spec(spec_path), out=tmp_path / "run", executor=LocalExecutor(backend_factory=factory))
    assert server.injected == {"429": 3, "500": 3} and len(server.bodies) == 12
    stats = made[0].stats
    assert stats["retries"] == 6 and stats["status_429"] == 3 and stats["status_5xx"] == 3
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert df.height == 12 and df["id"].n_unique() == 12 and (df["status"] == "ok").all()
    assert (df["attempts"] == 1).all() and res.model_calls == 12  # an HTTP retry is not a new attempt


def test_stream_takes_follow_ups_while_others_run():
    from generator.core.backend import RequestFeed

    with OpenAIServer(delay=0.3) as server:
        b = OpenAIBackend("smollm2-135m", server.url, concurrency=8)
        feed = RequestFeed([_req(300), _req(301), _req(302, schema=SCHEMA)])
        out = []
        for res in b.stream(feed):
            out.append(res)
            if len(out) == 1:
                feed.put_many([_req(303), _req(304, schema=SCHEMA)])
            if len(out) == 5:
                feed.close()
    assert sorted(r.id for r in out) == [f"r{i}#1" for i in range(300, 305)]
    assert b.stats["requests"] == 5 == len(server.bodies)
    assert server.max_in_flight >= 2  # the first three were in the server together
    for r in out:
        assert r.finish_reason == "stop" and r.completion_tokens > 0
    for r in out:  # the schema requests got the server's JSON, the others its text
        assert r.text.startswith("{") == (r.id in ("r302#1", "r304#1"))
