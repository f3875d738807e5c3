"""A fleet of simulated GPU servers: the share of its capacity a `synthgen run` uses, and a 3-stage
pipeline run continuously against stage by stage on the same fleet.

The servers (tests/fleet_server.py, one separate process serving K ports from one asyncio loop)
model a GPU server's decode: a request of T completion tokens takes T steps of `--step-ms`, and a
step costs the same for 1 to `--batch` sequences (a GPU's step time is flat up to its batch
limit); requests above the batch limit queue. Steps are timed on the wall clock, so the
simulation's own CPU (it shares the machine with the driver) delays answers but not the GPU.
Capacity is K x batch / step tokens/s. The figures are scaled down from a real GPU server (about 256 sequences, 20-40 ms a step) so that the client
side fits this machine's CPUs: the request rate, not the token rate, is what costs the client.

(1) For K = 8 and K = 64: a plain spec on `backend: openai` with the fleet's URLs in `base_url`
    (default `concurrency`: no hand tuning), sized to `--waves` full batches per server, run with
    `generator.run`. Share = tokens the servers produced / (capacity x the servers' busy span,
    first request in to last answer out); also against the whole run's wall time. Printed beside
    it: the CPU seconds the driver (this process) and the simulated servers used, and the load;
    how many requests each server was first sent, and the hedges (tail requests re-sent to a
    server with room; `--no-hedge` turns them off).
(2) A problem -> solution -> review pipeline (answers of unequal length: T drawn from the prompt
    in [max/8, max]) on K servers: the continuous arm is `generator.run` (each record's next stage
    is sent the moment its answer lands); the stage-by-stage arm replays exactly the requests the
    servers answered, grouped by stage, one stage after the other through the same backend
    (stage k+1 starts when the last answer of stage k is in). Compared: the servers' busy spans.

(1) runs on two latency profiles: GPU-like (above) and CPU-like, whose step time grows with the
    batch (`--grow`: each sequence adds that share of `--step-ms`), so answers take seconds and the
    first round trips are what a window that starts small would waste. `--metrics`: the servers
    also serve vLLM's /metrics (running, waiting), which the window then reads.

    python bench/fleet.py [--sizes 8 64] [--step-ms 40] [--batch 8] [--tokens 128] [--waves 4]
                          [--profiles gpu cpu] [--grow 0.25] [--metrics]
                          [--pipeline-k 8] [--pipeline-records 128] [--skip-pipeline] [--no-hedge]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402

PLAIN = """name: bench_fleet
seed: 7
topics:
  - items: [{items}]
generations_per_topic: {per_topic}
templates:
  - template: math/word_problem
personas: {{file: core, sample: 40}}
models:
  - name: sim
    backend: openai
    base_url: {urls}
    hedge: {hedge}
sampling: {{temperature: 0.8, top_p: 0.95, max_tokens: {tokens}}}
run: {{shard_size: 256, retries: 0}}
"""

PIPELINE = """name: bench_fleet_pipeline
seed: 11
topics:
  - items: [{items}]
generations_per_topic: {per_topic}
personas: {{file: core, sample: 40}}
models:
  - name: sim
    backend: openai
    base_url: {urls}
sampling: {{temperature: 0.8, top_p: 0.95, max_tokens: {tokens}}}
run: {{shard_size: 64, retries: 0}}
stages:
  - {{name: problem, kind: generate, template: pipeline/math_problem}}
  - {{name: solution, kind: generate, template: pipeline/solve}}
  - {{name: review, kind: generate, template: review}}
"""
REVIEW = ("Check this solution. Say whether it is correct, and why, in two sentences.\n\n"
          "Problem: {{ problem.text }}\n\nSolution: {{ solution.text }}\n")
STAGE_OF = (("Write one math word problem", "problem"), ("Solve this problem", "solution"),
            ("Check this solution", "review"))


class SimFleet:
    """K simulated servers in one child process."""

    def __init__(self, k: int, step_ms: float, batch: int, vary: bool = False, grow: float = 0.0,
                 metrics: bool = False):
        cmd = [sys.executable, str(ROOT / "tests" / "fleet_server.py"), "--count", str(k), "--step-ms",
               str(step_ms), "--batch", str(batch), "--model", "sim", *(["--vary"] if vary else []),
               "--grow", str(grow), *(["--metrics"] if metrics else [])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.urls = json.loads(self.proc.stdout.readline())["urls"]

    def _get(self, path: str) -> list:
        import httpx

        with httpx.Client(timeout=60) as c:
            return [c.get(u.removesuffix("/v1") + path).json() for u in self.urls]

    def stats(self) -> list[dict]:
        return self._get("/stats")

    def requests(self) -> list[dict]:
        return [b for server in self._get("/requests") for b in server]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def served(stats: list[dict]) -> tuple[int, float]:
    """Completion tokens the servers produced, and their busy span (first request in to last out)."""
    tokens = sum(s["completion_tokens"] for s in stats)
    first = min(s["first_at"] for s in stats if s["first_at"] is not None)
    last = max(s["last_at"] for s in stats if s["last_at"] is not None)
    return tokens, last - first


def items(n: int) -> str:
    return ", ".join(f"Topic {i}" for i in range(n))


def capacity_share(k: int, args, work: Path, grow: float = 0.0) -> dict:
    from generator import load_spec, run

    fleet = SimFleet(k, args.step_ms, args.batch, grow=grow, metrics=args.metrics)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        records = args.waves * k * args.batch
        topics = max(1, records // 16)
        path = work / f"plain{k}_{grow}.yaml"
        path.write_text(PLAIN.format(items=items(topics), per_topic=-(-records // topics), tokens=args.tokens,
                                     urls=json.dumps(fleet.urls), hedge=str(not args.no_hedge).lower()))
        t0 = time.perf_counter()
        res = run(load_spec(path), out=work / f"plain{k}_{grow}", limit=records, score=False)
        wall = time.perf_counter() - t0
        stats = fleet.stats()
        tokens, span = served(stats)
        answers = [x["answered"] for x in stats]
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        fleet.close()  # waited for: its CPU time is in RUSAGE_CHILDREN from here
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cap = k * args.batch * 1000 / (args.step_ms * (1 + grow * (args.batch - 1)))  # tok/s at full batches
    gen_s = res.manifest["timings"][-1]["generate_s"]
    model = res.manifest["models"]["sim"]
    sent = [e["requests"] - e["hedges"] for e in model["endpoints"]]  # requests first sent to each
    return {"k": k, "records": res.generated, "tokens": tokens, "span": span, "wall": wall, "gen_s": gen_s,
            "capacity": cap, "share": tokens / span / cap, "share_gen": tokens / gen_s / cap,
            "driver_cpu": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
            "servers_cpu": children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime,
            "load": os.getloadavg()[0], "answers": (min(answers), max(answers)), "sent": (min(sent), max(sent)),
            "hedges": model["stats"]["hedges"], "hedges_won": model["stats"]["hedges_won"],
            "windows": sorted(e["max_window"] for e in model["endpoints"])}


def pipeline(args, work: Path) -> dict:
    from generator import load_spec, run
    from generator.core.backend import Request, Sampling
    from generator.engine.backends.openai_http import OpenAIBackend

    (work / "templates").mkdir(exist_ok=True)
    (work / "templates" / "review.j2").write_text(REVIEW)
    n, k = args.pipeline_records, args.pipeline_k
    fleet = SimFleet(k, args.step_ms, args.batch, vary=True)
    try:
        path = work / "pipeline.yaml"
        path.write_text(PIPELINE.format(items=items(max(1, n // 8)), per_topic=8, tokens=args.tokens,
                                        urls=json.dumps(fleet.urls)))
        t0 = time.perf_counter()
        res = run(load_spec(path), out=work / "pipeline", limit=n, score=False)
        wall = time.perf_counter() - t0
        tokens, span = served(fleet.stats())
        sent = fleet.requests()
    finally:
        fleet.close()
    by_stage: dict[str, list] = {}
    for i, body in enumerate(sent):
        text = body["messages"][-1]["content"]
        stage = next((s for prefix, s in STAGE_OF if text.startswith(prefix)), "other")
        by_stage.setdefault(stage, []).append(Request(
            id=f"{stage}-{i}", messages=tuple(body["messages"]),
            sampling=Sampling(temperature=body["temperature"], top_p=body["top_p"], max_tokens=body["max_tokens"])))
    fleet = SimFleet(k, args.step_ms, args.batch, vary=True)
    staged, staged_tokens, longest = 0.0, 0, []
    try:
        backend = OpenAIBackend("sim", fleet.urls)
        for stage in ("problem", "solution", "review"):
            out = list(backend.generate(by_stage.get(stage, [])))
            t, s = served(fleet.stats())
            staged += s - sum(x["span"] for x in longest)
            longest.append({"stage": stage, "span": s - sum(x["span"] for x in longest),
                            "longest": max(r.completion_tokens for r in out)})
            staged_tokens = t
    finally:
        fleet.close()
    return {"records": res.generated, "requests": len(sent), "by_stage": {s: len(v) for s, v in by_stage.items()},
            "continuous": span, "wall": wall, "staged": staged, "tokens": tokens, "staged_tokens": staged_tokens,
            "stages": longest, "capacity": k * args.batch * 1000 / args.step_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--step-ms", type=float, default=40.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128, help="completion tokens per request (max_tokens)")
    ap.add_argument("--waves", type=int, default=4, help="records per server slot in (1)")
    ap.add_argument("--pipeline-k", type=int, default=8)
    ap.add_argument("--pipeline-records", type=int, default=128)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--no-hedge", action="store_true", help="(1) with `hedge: false` (no re-sent tail requests)")
    ap.add_argument("--profiles", nargs="+", choices=["gpu", "cpu"], default=["gpu", "cpu"],
                    help="(1) on GPU-like servers (flat step time) and/or CPU-like ones (step time grows)")
    ap.add_argument("--grow", type=float, default=0.25,
                    help="CPU-like profile: each sequence in the batch adds this share to the step time")
    ap.add_argument("--metrics", action="store_true", help="the simulated servers serve vLLM's /metrics")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    print(describe())
    print(f"simulation: each server decodes up to {args.batch} sequences per {args.step_ms:g} ms step "
          f"(flat step time up to the batch limit, as on a GPU; above it requests queue); a request of "
          f"T tokens takes T steps; (1) T = {args.tokens} for every request; (2) T from the prompt in "
          f"[{args.tokens // 8}, {args.tokens}]. Scaled down from ~256 sequences a step so the client "
          f"fits this machine's CPUs. Servers: one child process, one asyncio loop, K ports.")
    for profile, k in ((p, k) for p in args.profiles for k in args.sizes):
        grow = args.grow if profile == "cpu" else 0.0
        if grow:
            print(f"CPU-like: a step of n sequences takes {args.step_ms:g} ms x (1 + {grow:g} x (n - 1)): "
                  f"{args.step_ms * (1 + grow * (args.batch - 1)):g} ms at the batch limit, a request "
                  f"{args.tokens * args.step_ms * (1 + grow * (args.batch - 1)) / 1000:.1f} s")
        r = capacity_share(k, args, work, grow)
        print(f"(1) {profile} K = {k:3d}: {r['records']} records, {r['tokens']:,} tokens in {r['span']:.1f}s of server busy "
              f"span = {r['tokens'] / r['span']:,.0f} tok/s of {r['capacity']:,.0f} capacity -> share "
              f"{r['share']:.3f} (target >= 0.9); over the run's generate time {r['gen_s']:.1f}s: "
              f"{r['share_gen']:.3f}; whole run {r['wall']:.1f}s; answers per server "
              f"{r['answers'][0]}-{r['answers'][1]} (even: {args.waves * args.batch}; first sent "
              f"{r['sent'][0]}-{r['sent'][1]}); hedges {r['hedges']}, {r['hedges_won']} answered first; "
              f"largest window per server {r['windows'][0]:g}-{r['windows'][-1]:g}"
              f"{' (from /metrics)' if args.metrics else ' (no /metrics)'}")
        print(f"    CPU: driver {r['driver_cpu']:.1f}s ({r['driver_cpu'] / r['records'] * 1000:.1f} ms a record), "
              f"simulated servers {r['servers_cpu']:.1f}s, in {r['wall']:.1f}s of wall time; machine load "
              f"average {r['load']:.1f} on {os.cpu_count()} CPUs")
    if args.skip_pipeline:
        return
    p = pipeline(args, work)
    print(f"(2) 3-stage pipeline on K = {args.pipeline_k}: {p['records']} records, {p['requests']} requests "
          f"{p['by_stage']}, capacity {p['capacity']:,.0f} tok/s")
    print(f"    continuous (generator.run): server busy span {p['continuous']:.1f}s "
          f"({p['tokens'] / p['continuous'] / p['capacity']:.2f} of capacity); whole run {p['wall']:.1f}s")
    print("    stage by stage: " + ", ".join(f"{s['stage']} {s['span']:.1f}s (longest {s['longest']} tok)"
                                               for s in p["stages"]) +
          f" = {p['staged']:.1f}s ({p['staged_tokens'] / p['staged'] / p['capacity']:.2f} of capacity)")
    print(f"    stage-by-stage / continuous = {p['staged'] / p['continuous']:.2f}x (target >= 1.2x); "
          f"against the whole continuous run {p['staged'] / p['wall']:.2f}x")


if __name__ == "__main__":
    main()
