"""The HTTP path against one real vLLM CPU server on this machine: raw async httpx against
synthgen's `backend: openai`, the same prompts and sampling.

One `vllm.entrypoints.openai.api_server` serves the embedded model (started as the tests start it:
tests/vllm_server.py, with the project's CPU defaults). Two contenders answer the same N prompts
("Write a short grade-school math word problem about {topic}, then solve it step by step.", one
user message each), `temperature` 0.8, `max_tokens` 160, `top_p` as in the shipped specs (0.95)
and 1.0:
  raw       async httpx, all N requests in flight at once (at most 64: `--raw-in-flight`)
  synthgen  `generator.run` on a spec whose model entry is `backend: openai` (no `concurrency:`:
            the window finds the server's capacity by itself, from its /metrics)
Arms alternate (raw, synthgen, raw, ...) per size and top_p; the median of `--repeats` is printed
with synthgen's time over raw's. The wall time of each arm is from the first request to the last
answer (synthgen's: the run's generate time). NeMo Data Designer is not run here.

    python bench/http_path.py [--sizes 64 256] [--repeats 3] [--top-p 0.95 1.0] [--json OUT]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.machine import describe, machine  # noqa: E402

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Write a short grade-school math word problem about {topic}, then solve it step by step."
TOPICS = ["apples", "buses", "coins", "cookies", "marbles", "pencils", "books", "trains", "birds", "pizza",
          "stickers", "shoes", "flowers", "balloons", "fish", "cars", "candles", "socks", "eggs", "kites",
          "boats", "cups", "stamps", "shells", "blocks", "hats", "lemons", "chairs", "rings", "ropes",
          "tickets", "buttons"]
TEMPLATE = """---
name: bench/http
description: The HTTP bench's prompt.
variables: [topic]
---
""" + PROMPT.replace("{topic}", "{{ topic }}") + "\n"
SPEC = """name: bench_http
seed: 3
topics:
  - items: [{items}]
generations_per_topic: 1
templates:
  - template: {template}
models:
  - name: smollm2-135m
    backend: openai
    base_url: {url}
sampling: {{temperature: 0.8, top_p: {top_p}, max_tokens: 160}}
run: {{shard_size: 256, retries: 0}}
"""


def topics(n: int) -> list[str]:
    return [f"{TOPICS[i % len(TOPICS)]} ({i})" for i in range(n)]


async def raw(url: str, n: int, top_p: float, in_flight: int) -> tuple[float, int]:
    import httpx

    gate = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)

    async def one(client, topic: str) -> int:
        async with gate:
            r = await client.post(url + "/chat/completions", json={
                "model": "smollm2-135m", "messages": [{"role": "user", "content": PROMPT.format(topic=topic)}],
                "temperature": 0.8, "top_p": top_p, "max_tokens": 160})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(one(client, t) for t in topics(n)))
        return time.perf_counter() - t0, sum(tokens)


def synthgen(url: str, n: int, top_p: float, work: Path, tag: str) -> tuple[float, int]:
    from generator import load_spec, run

    (work / "bench_http.j2").write_text(TEMPLATE)
    spec = work / f"{tag}.yaml"
    spec.write_text(SPEC.format(items=", ".join(json.dumps(t) for t in topics(n)), url=url, top_p=top_p,
                                template=work / "bench_http.j2"))
    res = run(load_spec(spec), out=work / tag, limit=n, score=False)
    model = res.manifest["models"]["smollm2-135m"]
    return res.manifest["timings"][-1]["generate_s"], sum(e["completion_tokens"] for e in model["endpoints"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top-p", type=float, nargs="+", default=[0.95, 1.0])
    ap.add_argument("--raw-in-flight", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from vllm_server import free_port, start_vllm_server, stop_server, wait_healthy

    print(describe(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        log = work / "vllm.log"
        proc = start_vllm_server(port, log)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            wait_healthy(proc, url + "/models", log)
            asyncio.run(raw(url, 4, 1.0, 4))  # warm-up: first requests compile and allocate
            for n in args.sizes:
                for top_p in args.top_p:
                    times: dict[str, list[float]] = {"raw": [], "synthgen": []}
                    for rep in range(args.repeats):
                        t, tok = asyncio.run(raw(url, n, top_p, args.raw_in_flight))
                        times["raw"].append(t)
                        print(f"  n={n} top_p={top_p} raw #{rep + 1}: {t:.1f} s, {tok} tokens", flush=True)
                        t, tok = synthgen(url, n, top_p, work, f"s{n}_{top_p}_{rep}")
                        times["synthgen"].append(t)
                        print(f"  n={n} top_p={top_p} synthgen #{rep + 1}: {t:.1f} s, {tok} tokens", flush=True)
                    row = {"records": n, "top_p": top_p, **{k: statistics.median(v) for k, v in times.items()},
                           "runs": times}
                    row["ratio"] = row["synthgen"] / row["raw"]
                    rows.append(row)
                    print(f"n={n} top_p={top_p}: raw {row['raw']:.1f} s, synthgen {row['synthgen']:.1f} s, "
                          f"synthgen/raw {row['ratio']:.2f}", flush=True)
        finally:
            stop_server(proc)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
