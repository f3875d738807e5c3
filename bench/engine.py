"""The continuously fed engine, measured: (a) its decode time against one bare `LLM.chat`, and
(c) what a SIGKILL mid-run loses against what was in flight.

(a) One `vllm.LLM` serves both arms (model load excluded from both). Each record's `max_tokens` is
drawn from a long-tailed distribution (most short, a few up to --max-tokens), the same draw in
both arms, so a driver that drains the engine between batches would idle on the tail. The bare arm
is one `LLM.chat` of every prompt; the synthgen arm is `run_spec` into a fresh run folder, timed
end to end and by its own decode time (the manifest's `generate_s`: feeding the engine, answers,
cache, shard files). Arms alternate to spread machine noise over both.

(c) `synthgen run` in a subprocess (its own engine), SIGKILLed once a third of the answers are in
the request cache. Prompts are one line (bench/overhead.py measures long templated prompts), so
decoding dominates. The subprocess logs, line by line, each request it hands the engine and each
answer the engine finishes; after the kill, the request cache says which answers were kept.
Lost = requests handed to the engine whose answers are not in the cache (the resumed run pays for
them again); in flight = requests handed to the engine and not finished at the kill.

    python bench/engine.py [--records 256] [--min-tokens 16] [--max-tokens 96] [--repeats 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402
TOPICS = ("fractions", "volcanoes", "rainbows", "magnets", "tides", "bridges", "honeybees", "glaciers",
          "batteries", "comets", "deserts", "vaccines", "rivers", "telescopes", "forests", "clocks")


def short_spec(folder: Path, records: int, max_tokens: int) -> Path:
    """A spec with one-line prompts, so decoding (where a drained engine idles) dominates."""
    (folder / "short.j2").write_text(
        "---\nname: short\ndescription: One short answer, for the engine benchmark.\npurpose: general\n"
        "variables: [subtopic]\nsystem: You are brief.\n---\nTell me something about {{ subtopic }}.\n")
    items = "\n".join(f"      - {{topic: Science, subtopic: {t}}}" for t in TOPICS)
    spec = folder / "spec.yaml"
    spec.write_text(f"name: engine-bench\nseed: 5\ntopics:\n  - items:\n{items}\n"
                    f"generations_per_topic: {-(-records // len(TOPICS))}\n"
                    f"templates:\n  - template: {folder / 'short.j2'}\n"
                    f"sampling: {{temperature: 0.8, top_p: 0.95, max_tokens: {max_tokens}}}\n"
                    f"run: {{shard_size: 16}}\n")
    return spec


def long_tail(key: str, low: int, high: int) -> int:
    """A Pareto(1.2) draw scaled to start at `low`, capped at `high`, fixed by `key`."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)
    return min(high, int(low * (1.0 - u) ** (-1 / 1.2)))


def use_long_tail(records, low: int, high: int) -> dict[str, int]:
    """Give every request of `records` its long-tailed max_tokens (in synthgen's request builder)."""
    import generator.engine.requests as requests_mod

    plain = requests_mod.make_request

    def make_request(row, attempt, schemas):
        req = plain(row, attempt, schemas)
        budget = long_tail(row["id"], low, high)
        return dataclasses.replace(req, sampling=dataclasses.replace(req.sampling, max_tokens=budget))

    requests_mod.make_request = make_request
    return {r.id: long_tail(r.id, low, high) for r in records}


def bench_decode(args) -> None:
    from vllm import SamplingParams

    import generator.engine.requests as requests_mod
    from generator.config.spec import load_spec
    from generator.core.backend import Borrowed
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.engine.executors.local import LocalExecutor
    from generator.engine.planner import plan_spec
    from generator.runs import run_spec

    spec = load_spec(short_spec(Path(tempfile.mkdtemp(prefix="synthgen-bench-spec-")), args.records,
                                args.max_tokens))
    _, records = plan_spec(spec, limit=args.records)
    plain = requests_mod.make_request
    draw = use_long_tail(records, args.min_tokens, args.max_tokens)  # the same budgets in both arms
    backend = VLLMOfflineBackend(spec.models[0].name, engine=spec.models[0].engine)
    llm = backend.llm
    messages = [r.messages for r in records]
    params = [SamplingParams(temperature=r.temperature, top_p=r.top_p, max_tokens=draw[r.id], seed=r.seed)
              for r in records]
    budgets = sorted(draw.values())
    print(f"(a) {len(records)} records, max_tokens long-tailed: median {statistics.median(budgets):.0f}, "
          f"p90 {budgets[int(0.9 * len(budgets))]}, max {budgets[-1]}", flush=True)

    engine, step = llm.llm_engine, llm.llm_engine.step
    steps = {"n": 0}

    def counted_step():  # engine steps: a load-independent view of how full the batches were
        steps["n"] += 1
        return step()

    engine.step = counted_step
    llm.chat(messages[:4], params[:4], use_tqdm=False)  # warm-up: first-call allocations
    bare, ours, decode, tokens, bare_steps, our_steps = [], [], [], [], [], []
    for i in range(args.repeats):
        steps["n"] = 0
        t = time.perf_counter()
        outs = llm.chat(messages, params, use_tqdm=False)
        bare.append(time.perf_counter() - t)
        bare_steps.append(steps["n"])
        tokens.append(sum(len(o.outputs[0].token_ids) for o in outs))
        steps["n"] = 0

        out = Path(tempfile.mkdtemp(prefix="synthgen-bench-"))
        t = time.perf_counter()
        res = run_spec(spec, out=out, limit=args.records,
                       executor=LocalExecutor(backend_factory=lambda cfg, **_: Borrowed(backend)))
        ours.append(time.perf_counter() - t)
        decode.append(res.manifest["timings"][-1]["generate_s"])
        our_steps.append(steps["n"])
        assert res.generated == len(records), "synthgen arm did not generate every record"
        shutil.rmtree(out, ignore_errors=True)
        print(f"  repeat {i + 1}: bare {bare[-1]:.2f}s  synthgen decode {decode[-1]:.2f}s "
              f"(ratio {decode[-1] / bare[-1]:.3f})  run_spec {ours[-1]:.2f}s (ratio {ours[-1] / bare[-1]:.3f})  "
              f"engine steps {our_steps[-1]} vs {bare_steps[-1]}",
              flush=True)
    engine.step = step
    backend.close()
    requests_mod.make_request = plain
    b, d, s = statistics.median(bare), statistics.median(decode), statistics.median(ours)
    print(f"  bare LLM.chat        : {b:7.2f} s  ({statistics.mean(tokens) / b:,.0f} completion tok/s)")
    print(f"  synthgen decode      : {d:7.2f} s  ratio {d / b:.3f}  (target <= 1.02)")
    print(f"  synthgen run_spec    : {s:7.2f} s  ratio {s / b:.3f}  (plan, decode, shards, manifest, card)",
          flush=True)
    ours_n, bare_n = statistics.median(our_steps), statistics.median(bare_steps)
    print(f"  engine steps         : synthgen {ours_n:.0f} vs bare {bare_n:.0f}  ratio {ours_n / bare_n:.3f}", flush=True)


# ---------------------------------------------------------------- (c) SIGKILL mid-run
def child(log_path: str, low: int, high: int, argv: list[str]) -> None:
    """`synthgen run` with long-tailed max_tokens, and the offline engine's hand-offs and answers
    logged line by line."""
    import generator.engine.backends.vllm_offline as offline

    use_long_tail([], low, high)
    from generator.cli.main import main

    log = open(log_path, "a", buffering=1)  # one write per line: a SIGKILL keeps every line before it
    inner = offline.stream_engine

    class Traced:
        def __init__(self, llm):
            self.llm, self.llm_engine = llm, llm.llm_engine

        def enqueue_chat(self, messages, params, **kw):
            ids = self.llm.enqueue_chat(messages, params, **kw)
            log.write(f"submitted {len(ids)}\n")
            return ids

    def stream_engine(llm, feed, params, on_result, *rest):
        def landed(res):
            log.write(f"finished {res.id}\n")
            if on_result:
                on_result(res)
        return inner(Traced(llm), feed, params, landed, *rest)

    offline.stream_engine = stream_engine
    sys.argv = ["synthgen", *argv]
    main()


def cache_count(run: Path) -> int:
    """Answers published into the run folder."""
    from generator.core.run_layout import read_answers

    frame = read_answers(run, ["key"])
    return 0 if frame is None else frame.height


def bench_kill(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="synthgen-kill-"))
    run, log = work / "run", work / "engine.log"
    spec = short_spec(work, args.records, args.kill_tokens)
    argv = ["run", str(spec), "--out", str(run), "--limit", str(args.records)]
    cmd = [sys.executable, __file__, "--child", str(log), str(args.min_tokens), str(args.kill_tokens), "--",
           *argv]
    # every answer published as it lands: this measures what the engine loses, not the publish batching
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHGEN_PUBLISH_ANSWERS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "stderr.log", "w"), start_new_session=True)
    target = max(1, args.records // 3)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and cache_count(run) < target:
        time.sleep(0.02)
    if proc.poll() is not None:
        raise SystemExit(f"(c) the run ended before the kill; see {work / 'stderr.log'}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    lines = log.read_text().splitlines()
    submitted = sum(int(x.split()[1]) for x in lines if x.startswith("submitted "))
    finished = sum(1 for x in lines if x.startswith("finished "))
    cached = cache_count(run)
    in_flight = submitted - finished
    lost = submitted - cached
    print(f"(c) SIGKILL with {cached} answers cached: {submitted} requests handed to the engine, "
          f"{finished} finished, {in_flight} in flight")
    print(f"  lost (handed over, answer not cached): {lost}; finished but not cached: {finished - cached}")
    print(f"  lost / in flight: {lost / max(in_flight, 1):.3f}  (1.000: a crash loses only what was in flight)",
          flush=True)
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[sys.argv.index("--") + 1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--kill-tokens", type=int, default=64, help="the (c) run's long-tail cap on max_tokens")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=["a", "c"], help="run one of the two measurements")
    args = ap.parse_args()
    print(describe(), flush=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if args.only != "c":
        bench_decode(args)
    if args.only != "a":
        bench_kill(args)


if __name__ == "__main__":
    main()
