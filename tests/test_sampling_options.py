"""`sampling.repetition_penalty`: planned into each record, sent to every backend, and absent from
the request key when unset (runs planned before it existed resume without paying again)."""
from __future__ import annotations

import polars as pl
import pytest

from generator.config.spec import load_spec
from generator.core.backend import Request, Sampling
from generator.testing.fake import FakeBackend
from generator.engine.backends.openai_wire import request_body
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec


def _run(spec, out):
    b = FakeBackend()
    res = run_spec(spec, out=out, executor=LocalExecutor(backend_factory=lambda c, **_: b), score=False)
    return res, b


def test_penalty_reaches_requests_and_the_http_body(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "1", "sampling.repetition_penalty": "1.15"})
    res, b = _run(spec, tmp_path / "run")
    assert b.calls and {r.sampling.repetition_penalty for r in b.calls} == {1.15}
    plan = pl.read_parquet(tmp_path / "run" / "plan.parquet")
    assert plan["repetition_penalty"].to_list() == [1.15] * plan.height
    body = request_body("m", b.calls[0])
    assert body["repetition_penalty"] == 1.15
    assert "repetition_penalty" not in request_body("m", Request(id="x", messages=({"role": "user", "content": "hi"},)))


def test_unset_penalty_keeps_earlier_request_keys(proj, tmp_path):
    r = Request(id="x", messages=({"role": "user", "content": "hi"},), sampling=Sampling(seed=3))
    # the key a run made before the option existed (sampling without the field)
    import hashlib
    import json

    old = {"model": "m", "messages": list(r.messages), "schema": None,
           "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 512, "seed": 3}}
    assert r.payload_hash("m") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    with_penalty = Request(id="x", messages=r.messages, sampling=Sampling(seed=3, repetition_penalty=1.1))
    assert with_penalty.payload_hash("m") != r.payload_hash("m")


def test_a_plan_written_before_the_column_resumes_without_new_calls(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "1"})
    out = tmp_path / "run"
    _run(spec, out)
    plan = pl.read_parquet(out / "plan.parquet").drop("repetition_penalty")
    plan.write_parquet(out / "plan.parquet")
    for f in (out / "generations").glob("*.parquet"):
        pl.read_parquet(f).drop("repetition_penalty").write_parquet(f)
    more = load_spec(proj / "spec.yaml", {"generations_per_topic": "2"})
    res, b = _run(more, out)
    assert res.generated == 2 * plan.height and len(b.calls) == plan.height  # only the new records
    assert pl.read_parquet(out / "plan.parquet")["repetition_penalty"].null_count() == 2 * plan.height


@pytest.mark.slow  # importing vLLM alone takes 10-30 s on 2 cores; the slow run imports it anyway
def test_offline_vllm_params_carry_the_penalty():
    from helpers import importorskip_ci

    importorskip_ci("vllm")
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend

    b = object.__new__(VLLMOfflineBackend)  # the parameters only: no engine is loaded
    msgs = ({"role": "user", "content": "hi"},)
    assert b._params(Request(id="x", messages=msgs, sampling=Sampling(repetition_penalty=1.2))).repetition_penalty == 1.2
    assert b._params(Request(id="x", messages=msgs)).repetition_penalty == 1.0
