"""What `synthgen run` adds over a bare vLLM script, on the same prompts and the same engine.

Both arms share one `vllm.LLM` (so model load is excluded from both), send the same chat
messages with the same per-request seeds, sampling and structured-output parameters (no retries,
so one request per record in both), and are timed end to end:
the bare arm is one `LLM.chat` call; the synthgen arm is `run_spec` into a fresh run folder
(plan, render, batch, classify, write Parquet shards, cache, manifest, dataset card).
Arms alternate (bare, synthgen, bare, synthgen, ...) to spread machine noise over both.

    python bench/overhead.py [--spec specs/math.yaml] [--limit 48] [--max-tokens 128] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "math.yaml"))
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(describe(), flush=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    from generator.core.backend import Borrowed
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.engine.executors.local import LocalExecutor
    from generator.engine.planner import plan_spec
    from generator.engine.requests import make_request
    from generator.runs import run_spec
    from generator.config.spec import load_spec

    # no retries: both arms send exactly one request per record
    spec = load_spec(args.spec, {"sampling.max_tokens": str(args.max_tokens), "run.retries": "0"})
    spec.scoring = None  # scoring is a separate step with its own benchmark (bench/score.py)
    resolved, records = plan_spec(spec, limit=args.limit)
    backend = VLLMOfflineBackend(spec.models[0].name, engine=spec.models[0].engine)
    llm = backend.llm
    messages = [r.messages for r in records]
    # the same sampling and structured-output parameters the synthgen arm sends
    schemas = {t.name: t.output_schema for t, _ in resolved.templates}
    params = [backend._params(make_request(r.to_row(), 1, schemas)) for r in records]

    llm.chat(messages[:4], params[:4], use_tqdm=False)  # warm-up: first-call allocations
    bare, ours, tokens = [], [], []
    for i in range(args.repeats):
        t = time.perf_counter()
        outs = llm.chat(messages, params, use_tqdm=False)
        bare.append(time.perf_counter() - t)
        tokens.append(sum(len(o.outputs[0].token_ids) for o in outs))

        out = Path(tempfile.mkdtemp(prefix="synthgen-bench-"))
        t = time.perf_counter()
        ex = LocalExecutor(backend_factory=lambda cfg, **_: Borrowed(backend))
        res = run_spec(spec, out=out, limit=args.limit, executor=ex)
        ours.append(time.perf_counter() - t)
        assert res.generated == len(records), "synthgen arm did not generate every record"
        shutil.rmtree(out, ignore_errors=True)
        print(f"repeat {i + 1}: bare {bare[-1]:.2f}s  synthgen {ours[-1]:.2f}s  ratio {ours[-1] / bare[-1]:.3f}",
              flush=True)
    backend.close()
    b, s = statistics.median(bare), statistics.median(ours)
    print(f"\n{len(records)} records, ~{statistics.mean(tokens):,.0f} completion tokens per arm, "
          f"{args.repeats} repeats (median)")
    print(f"bare vLLM LLM.chat : {b:8.2f} s  ({statistics.mean(tokens) / b:,.0f} tok/s)")
    print(f"synthgen run_spec  : {s:8.2f} s")
    print(f"ratio synthgen/bare: {s / b:.3f}  (overhead {100 * (s / b - 1):+.1f}%; target < +5%)")


if __name__ == "__main__":
    main()
