"""Which weight type decodes faster on this CPU, and on an AVX2-only one: the embedded model's
decode throughput in bfloat16 and in float32, each in its own process, natively and with torch
and oneDNN held to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`,
`MKL_ENABLE_INSTRUCTIONS=AVX2`), which is how an AVX2-only CPU runs them. The held-to-AVX2 arms
are an emulation: vLLM's own kernels still see the real CPU, so they bound, not replace, a
measurement on an AVX2-only machine. `engine_defaults` picks the type this bench favours
(`vllm_offline.cpu_dtype`).

    python bench/cpu_dtype.py [--prompts 16] [--tokens 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def arm(dtype: str, prompts: int, tokens: int) -> None:
    """One engine in `dtype`; prints completion tokens/s over `prompts` requests of `tokens` each."""
    from vllm import SamplingParams

    from generator.engine.backends.vllm_offline import VLLMOfflineBackend, cpu_dtype

    backend = VLLMOfflineBackend("smollm2-135m", engine={"dtype": dtype})
    llm = backend.llm
    chats = [[{"role": "user", "content": f"Write a short story about the number {i}."}] for i in range(prompts)]
    params = [SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, seed=i) for i in range(prompts)]
    llm.chat(chats[:2], params[:2], use_tqdm=False)  # warm-up
    t = time.perf_counter()
    outs = llm.chat(chats, params, use_tqdm=False)
    seconds = time.perf_counter() - t
    done = sum(len(o.outputs[0].token_ids) for o in outs)
    backend.close()
    print(json.dumps({"dtype": dtype, "tok_s": done / seconds, "seconds": seconds, "picked": cpu_dtype()}), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--arm":
        return arm(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    print(describe(), flush=True)
    rows = {}
    for isa, extra in (("native", {}), ("AVX2 (emulated)", AVX2)):
        for dtype in ("bfloat16", "float32"):
            env = {**os.environ, **extra, "PYTHONPATH": str(ROOT), "VLLM_LOGGING_LEVEL": "ERROR"}
            proc = subprocess.run([sys.executable, __file__, "--arm", dtype, str(args.prompts), str(args.tokens)],
                                  env=env, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"{isa} {dtype} failed: {proc.stderr.strip()[-1500:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[(isa, dtype)] = r
            print(f"  {isa:16s} {dtype:9s} {r['tok_s']:7.1f} completion tok/s  ({r['seconds']:.1f} s; "
                  f"default picks {r['picked']})  load {os.getloadavg()[0]:.1f}", flush=True)
    for isa in ("native", "AVX2 (emulated)"):
        ratio = rows[(isa, "float32")]["tok_s"] / rows[(isa, "bfloat16")]["tok_s"]
        print(f"  {isa}: float32 / bfloat16 throughput {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
