"""Throughput of synthgen's backends against bare vLLM, on the same prompts, in one run.

Four ways to answer the same ~48 prompts (math word problems) with the embedded model:
  bare      vllm.LLM.chat on all prompts at once (the ceiling)
  offline   synthgen's offline backend through run_spec (window = all prompts)
  http      synthgen's OpenAI backend through run_spec, against a local vLLM api_server
  ray       the Ray executor (one actor, its own engine) through run_spec
Each engine is started and stopped in turn (never two at once). Completion tokens per second of
generation (model load excluded) are printed, with the ratio to bare vLLM.

Every engine runs with chunked prefill off: on the CPU build a seeded request that is prefilled
in chunks crashes the engine (see docs/scale-out.md); the HTTP backend sends no seeds.

    python bench/backends.py [--prompts 48] [--max-tokens 64] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe, machine  # noqa: E402

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE = {"enable_chunked_prefill": False, "max_model_len": 2048}

SPEC = """
name: bench-backends
seed: 1
topics:
  - items:
      - {topic: Arithmetic, subtopic: Adding two-digit numbers, keywords: [carrying, tens], level: grade 2}
      - {topic: Money, subtopic: Making change, keywords: [coins, change], level: grade 3}
      - {topic: Measurement, subtopic: Telling time, keywords: [hours, minutes], level: grade 2}
      - {topic: Fractions, subtopic: Comparing fractions, keywords: [numerator, denominator], level: grade 4}
generations_per_topic: GENS
personas: {file: core, sample: 20}
templates:
  - template: math/word_problem
models:
  - MODEL
sampling: {temperature: 0.8, top_p: 0.95, max_tokens: MAXTOK}
run: {shard_size: 8, window: WINDOW}
"""


def write_spec(work: Path, name: str, model: str, prompts: int, max_tokens: int) -> Path:
    gens = max(prompts // 4, 1)
    text = (SPEC.replace("GENS", str(gens)).replace("MAXTOK", str(max_tokens))
            .replace("WINDOW", str(gens * 4)).replace("MODEL", model))
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path


def bare(spec_path: Path) -> dict:
    from vllm import LLM, SamplingParams

    from generator.engine.backends.vllm_offline import engine_defaults
    from generator.core.model_aliases import resolve_model
    from generator.engine.planner import plan_spec
    from generator.config.spec import load_spec

    _, records = plan_spec(load_spec(spec_path))
    kwargs = {**engine_defaults(False), **ENGINE}
    t0 = time.time()
    llm = LLM(model=resolve_model("smollm2-135m"), seed=0, **kwargs)
    load = time.time() - t0
    params = [SamplingParams(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=r.seed)
              for r in records]
    t1 = time.time()
    outs = llm.chat([list(r.messages) for r in records], params, use_tqdm=False)
    secs = time.time() - t1
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return {"records": len(records), "completion_tokens": tokens, "generate_s": secs, "load_s": load}


def through_run_spec(spec_path: Path, out: Path, executor=None) -> dict:
    from generator.runs import run_spec
    from generator.config.spec import load_spec

    res = run_spec(load_spec(spec_path), out=out, executor=executor, score=False)
    t = res.manifest["timings"][-1]
    tokens = res.manifest["counts"]["tokens"]["completion"]
    gen = t["generate_s"] - t["model_load_s"]
    return {"records": res.generated, "completion_tokens": tokens, "generate_s": gen, "load_s": t["model_load_s"],
            "model_calls": res.model_calls}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(work: Path, prompts: int, max_tokens: int) -> dict:
    import httpx

    from generator.core.model_aliases import resolve_model

    port = free_port()
    log = open(work / "server.log", "w")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model("smollm2-135m"),
           "--served-model-name", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "2048", "--enforce-eager", "--no-enable-chunked-prefill"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > 600:
                raise RuntimeError("server did not start in 600 s")
            time.sleep(1)
        load = time.time() - t0
        model = f"{{name: smollm2-135m, backend: openai, base_url: 'http://127.0.0.1:{port}/v1'}}"
        spec = write_spec(work, "http", model, prompts, max_tokens)
        out = through_run_spec(spec, work / "run-http")
        out["load_s"] = load
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--only", nargs="*", default=["bare", "offline", "http", "ray"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(describe(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="sg-bench-backends-"))
    offline_model = "{name: smollm2-135m, engine: {enable_chunked_prefill: false, max_model_len: 2048}}"
    spec = write_spec(work, "offline", offline_model, args.prompts, args.max_tokens)
    results: dict[str, dict] = {}
    try:
        for name in args.only:
            t0 = time.time()
            print(f"[{name}] running...", file=sys.stderr, flush=True)
            if name == "bare":
                results[name] = bare(spec)
            elif name == "offline":
                results[name] = through_run_spec(spec, work / "run-offline")
            elif name == "http":
                results[name] = http(work, args.prompts, args.max_tokens)
            elif name == "ray":
                from generator.engine.executors.ray import RayExecutor

                ex = RayExecutor(actors=1)
                try:
                    results[name] = through_run_spec(spec, work / "run-ray", executor=ex)
                finally:
                    ex.close()
            r = results[name]
            r["tokens_per_s"] = r["completion_tokens"] / max(r["generate_s"], 1e-6)
            r["wall_s"] = time.time() - t0
            print(f"[{name}] {r['records']} records, {r['completion_tokens']} tokens in {r['generate_s']:.1f}s "
                  f"(load {r['load_s']:.1f}s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("bare", {}).get("tokens_per_s")
    print(f"{'backend':<10}{'records':>8}{'tokens':>8}{'gen s':>8}{'tok/s':>9}{'vs bare':>9}")
    for name, r in results.items():
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{name:<10}{r['records']:>8}{r['completion_tokens']:>8}{r['generate_s']:>8.1f}"
              f"{r['tokens_per_s']:>9.1f}{ratio:>9}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "backends": results}, indent=2))


if __name__ == "__main__":
    main()
