"""The HTTP path against one real vLLM CPU server on this machine: raw async httpx, synthgen's
`backend: openai` and (optionally) NeMo Data Designer, the same prompts and sampling.

One `vllm.entrypoints.openai.api_server` serves the embedded model (started as the tests start it:
tests/vllm_server.py, with the project's CPU defaults). Two contenders answer the same N prompts
("Write a short grade-school math word problem about {topic}, then solve it step by step.", one
user message each), `temperature` 0.8, `max_tokens` 160, `top_p` as in the shipped specs (0.95)
and 1.0:
  raw       async httpx, all N requests in flight at once (at most 64: `--raw-in-flight`)
  synthgen  `generator.run` on a spec whose model entry is `backend: openai` (no `concurrency:`:
            the window finds the server's capacity by itself, from its /metrics)
  dd<P>     with `--dd-python` (a Python with NeMo Data Designer installed in its own environment,
            never this project's): a script written into a temp dir runs `DataDesigner.create` with
            the topics as an ordered seed dataset, one `LLMTextColumnConfig` of the same prompt and
            `max_parallel_requests` P (`--dd-parallel`, default 4, its default, and 64)
Arms alternate (raw, synthgen, dd4, dd64, raw, ...) per size and top_p (`--arms` picks a subset);
the median of `--repeats` is printed with each arm's time over raw's. The wall time of each arm is
from the first request to the last answer: synthgen's is the run's generate time, Data Designer's
from `create` to its one batch written (its health check skipped, its column profiling after).
`raw<N>` in `--arms` adds a raw arm with N in flight.
Beside each figure: the client's CPU seconds, the load average (the machine is shared) and the server's own gauges sampled
every 0.5 s (mean running, mean waiting, peak running, sequences preempted), and for synthgen whether it read /metrics.

`--check-bodies` runs synthgen and each Data Designer arm once against the scripted server
(tests/openai_server.py) instead and prints the request bodies each sent, to compare with raw's.

    python bench/http_path.py [--sizes 64 256] [--repeats 3] [--top-p 0.95 1.0]
                              [--dd-python /path/to/venv/bin/python] [--arms raw synthgen dd64] [--json OUT]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
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


def raw_body(topic: str, top_p: float) -> dict:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": PROMPT.format(topic=topic)}],
            "temperature": 0.8, "top_p": top_p, "max_tokens": 160}


async def raw(url: str, n: int, top_p: float, in_flight: int) -> tuple[float, int]:
    import httpx

    gate = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)

    async def one(client, topic: str) -> int:
        async with gate:
            r = await client.post(url + "/chat/completions", json=raw_body(topic, top_p))
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(one(client, t) for t in topics(n)))
        return time.perf_counter() - t0, sum(tokens)


def synthgen(url: str, n: int, top_p: float, work: Path, tag: str) -> tuple[float, int, dict]:
    from generator import load_spec, run

    (work / "bench_http.j2").write_text(TEMPLATE)
    spec = work / f"{tag}.yaml"
    spec.write_text(SPEC.format(items=", ".join(json.dumps(t) for t in topics(n)), url=url, top_p=top_p,
                                template=work / "bench_http.j2"))
    res = run(load_spec(spec), out=work / tag, limit=n, score=False)
    model = res.manifest["models"]["smollm2-135m"]
    ep = model["endpoints"][0]  # what the window learned from the server's /metrics
    seen = {k: ep[k] for k in ("metrics", "metrics_readings", "server_peak", "max_window", "window")}
    return res.manifest["timings"][-1]["generate_s"], sum(e["completion_tokens"] for e in model["endpoints"]), seen


DD_SCRIPT = """import json, os, re, sys, time
os.environ.setdefault("NEMO_TELEMETRY_ENABLED", "false")
os.environ.setdefault("DATA_DESIGNER_SKIP_MODEL_HEALTH_CHECKS", "1")
import pandas as pd
import data_designer.config as dd
from data_designer.interface import DataDesigner

a = json.loads(sys.argv[1])
params = dict(temperature=0.8, top_p=a["top_p"], max_tokens=160, max_parallel_requests=a["parallel"])
model = dd.ModelConfig(alias="bench", model="smollm2-135m", provider="bench",
                       inference_parameters=dd.ChatCompletionInferenceParams(**params))
builder = dd.DataDesignerConfigBuilder(model_configs=[model])
builder.with_seed_dataset(dd.DataFrameSeedSource(df=pd.DataFrame({"topic": a["topics"]})),
                          sampling_strategy=dd.SamplingStrategy.ORDERED)
builder.add_column(dd.LLMTextColumnConfig(name="answer", model_alias="bench", prompt=a["prompt"]))
designer = DataDesigner(artifact_path=a["out"], model_providers=[
    dd.ModelProvider(name="bench", endpoint=a["url"], provider_type="openai", api_key="none")])
designer.set_run_config(dd.RunConfig(otel_metrics_port=None, buffer_size=max(1000, len(a["topics"]))))
done = []
t0 = time.perf_counter()
res = designer.create(builder, num_records=len(a["topics"]), dataset_name="bench",
                      on_batch_complete=lambda path: done.append(time.perf_counter() - t0))
df = res.load_dataset()
print("DD_RESULT " + json.dumps({"wall_s": done[0] if done else time.perf_counter() - t0,
                                 "records": len(df), "filled": int(df["answer"].notna().sum())}))
"""


def data_designer(python: str, url: str, n: int, top_p: float, parallel: int, work: Path, tag: str) -> tuple[float, int]:
    """Data Designer in its own interpreter (its own environment); (seconds, completion tokens)."""
    script = work / "dd_arm.py"
    script.write_text(DD_SCRIPT)
    arg = json.dumps({"url": url, "top_p": top_p, "parallel": parallel, "topics": topics(n), "out": str(work / tag),
                      "prompt": PROMPT.replace("{topic}", "{{ topic }}")})
    p = subprocess.run([python, str(script), arg], capture_output=True, text=True, timeout=1800)
    found = re.search(r"^DD_RESULT (.*)$", p.stdout, re.M)
    if p.returncode or not found:
        raise RuntimeError(f"Data Designer arm failed ({p.returncode}):\n{p.stdout[-1500:]}\n{p.stderr[-3000:]}")
    res = json.loads(found.group(1))
    if res["filled"] != n:
        raise RuntimeError(f"Data Designer answered {res['filled']} of {n} records")
    tokens = re.findall(r"tokens: input=\d+, output=(\d+)", p.stdout + p.stderr)
    return res["wall_s"], int(tokens[-1]) if tokens else -1


class Gauges:
    """The server's running / waiting gauges every 0.5 s while an arm runs."""

    def __init__(self, url: str):
        from generator.engine.backends.fleet_metrics import metrics_url, parse

        self.url, self.parse, self.samples = metrics_url(url), parse, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def preemptions(self) -> float:
        """vLLM's count of sequences it preempted (its KV cache full): -1 when unreadable."""
        import httpx

        try:
            text = httpx.get(self.url, timeout=5).text
        except httpx.HTTPError:
            return -1
        found = re.findall(r"^vllm:num_preemptions_total(?:\{[^}]*\})? ([0-9.e+]+)", text, re.M)
        return sum(float(v) for v in found) if found else -1

    def loop(self) -> None:
        import httpx

        self.preempted = -self.preemptions()
        with httpx.Client(timeout=2) as client:
            while not self.stop.wait(0.5):
                try:
                    got = self.parse(client.get(self.url).text)
                except httpx.HTTPError:
                    continue
                if got:
                    self.samples.append(got)

    def __enter__(self) -> "Gauges":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.preempted += self.preemptions()

    def summary(self) -> dict:
        busy = [s for s in self.samples if s[0] or s[1]] or [(0, 0)]
        return {"running_mean": round(statistics.mean(r for r, _ in busy), 1),
                "waiting_mean": round(statistics.mean(w for _, w in busy), 1),
                "running_peak": max(r for r, _ in busy), "preempted": int(self.preempted)}


def client_cpu() -> float:
    """CPU seconds of this process and its finished children (a Data Designer arm; the vLLM server
    is still running, so it is not counted)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def check_bodies(args) -> None:
    """Each arm once against the scripted server: the bodies it sent, beside raw's."""
    from openai_server import OpenAIServer

    def answer(body: dict) -> str:
        content = body["messages"][-1]["content"]
        return "an answer to " + (content if isinstance(content, str) else content[0]["text"])

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("raw     :", json.dumps(raw_body(topics(1)[0], 0.95)))
        arms = [("synthgen", lambda url: synthgen(url, 4, 0.95, work, "check"))]
        for par in args.dd_parallel if args.dd_python else []:
            arms.append((f"dd{par}", lambda url, par=par: data_designer(args.dd_python, url, 4, 0.95, par, work,
                                                                        f"check{par}")))
        for name, arm in arms:
            with OpenAIServer(answer=answer) as server:
                arm(server.url)
                first = min(server.bodies, key=lambda b: json.dumps(b["messages"]))
                print(f"{name:8s}:", json.dumps(first), f"({len(server.bodies)} requests)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top-p", type=float, nargs="+", default=[0.95, 1.0])
    ap.add_argument("--raw-in-flight", type=int, default=64)
    ap.add_argument("--dd-python", help="a Python whose environment has NeMo Data Designer (`data-designer`)")
    ap.add_argument("--dd-parallel", type=int, nargs="+", default=[4, 64], help="its max_parallel_requests")
    ap.add_argument("--arms", nargs="+", help="a subset of raw, synthgen, dd<P> (default: all)")
    ap.add_argument("--check-bodies", action="store_true", help="compare request bodies on the scripted server")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.check_bodies:
        return check_bodies(args)
    from vllm_server import free_port, start_vllm_server, stop_server, wait_healthy

    names = ["raw", "synthgen"] + [f"dd{p}" for p in (args.dd_parallel if args.dd_python else [])]
    names = [a for a in names if not args.arms or a in args.arms] + \
        [a for a in args.arms or [] if re.fullmatch(r"raw\d+", a)]
    print(describe(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        log = work / "vllm.log"
        proc = start_vllm_server(port, log)
        url = f"http://127.0.0.1:{port}/v1"

        def arm(name: str, n: int, top_p: float, tag: str) -> tuple[float, int, dict]:
            if name.startswith("raw"):  # raw<N>: N in flight instead of --raw-in-flight
                return (*asyncio.run(raw(url, n, top_p, int(name[3:] or args.raw_in_flight))), {})
            if name == "synthgen":
                return synthgen(url, n, top_p, work, tag)
            return (*data_designer(args.dd_python, url, n, top_p, int(name[2:]), work, tag), {})

        try:
            wait_healthy(proc, url + "/models", log)
            asyncio.run(raw(url, 4, 1.0, 4))  # warm-up: first requests compile and allocate
            for n in args.sizes:
                for top_p in args.top_p:
                    times: dict[str, list[float]] = {a: [] for a in names}
                    runs = []
                    for rep in range(args.repeats):
                        for name in names:
                            load0, cpu0 = os.getloadavg()[0], client_cpu()
                            with Gauges(url) as gauges:
                                t, tok, seen = arm(name, n, top_p, f"{name}{n}_{top_p}_{rep}")
                            load, cpu = (load0 + os.getloadavg()[0]) / 2, client_cpu() - cpu0
                            times[name].append(t)
                            runs.append({"arm": name, "rep": rep, "s": t, "tokens": tok, "load": round(load, 1),
                                         "client_cpu_s": round(cpu, 1),
                                         "server": gauges.summary(), **({"synthgen": seen} if seen else {})})
                            print(f"  n={n} top_p={top_p} {name} #{rep + 1}: {t:.1f} s, {tok} tokens, "
                                  f"load {load:.1f}, client CPU {cpu:.1f} s, server {gauges.summary()}" + (f", window {seen}" if seen else ""),
                                  flush=True)
                    row = {"records": n, "top_p": top_p, **{k: statistics.median(v) for k, v in times.items()},
                           "runs": runs}
                    ratios = {k: row[k] / row["raw"] for k in names if k != "raw" and "raw" in row}
                    row["ratios"] = ratios
                    rows.append(row)
                    print(f"n={n} top_p={top_p}: " + ", ".join(f"{k} {row[k]:.1f} s" for k in names)
                          + "".join(f", {k}/raw {v:.2f}" for k, v in ratios.items()), flush=True)
        finally:
            stop_server(proc)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
