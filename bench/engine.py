"""The continuously fed engine, measured: (a) its decode time against one bare `LLM.chat`, and
(c) what a SIGKILL mid-run loses against what was in flight.

(a) The engine's cost as a user sees it: `synthgen run SPEC` (the shipped specs/math.yaml by
default) in its own process, against one bare `LLM.chat` of the same records' first tries (the
same messages, seeds, sampling and structured-output schemas, read from the synthgen arm's
plan.parquet) in another process, on an engine built with the same settings. Each arm runs alone
on the machine; model load is excluded from both (the timed `LLM.chat`
call; the synthgen arm's decode is the model's busy span in the usage ledger, from its
first request to its last answer). The synthgen arm's time includes its retries (a structured answer cut by
max_tokens is retried with the next seed; the bare arm keeps it cut); the per-token ratio divides
each arm's time by the completion tokens it decoded.

(c) `synthgen run` in a subprocess (its own engine), SIGKILLed once a third of the answers are in
the request cache. Prompts are one line (bench/overhead.py measures long templated prompts), so
decoding dominates. The subprocess logs, line by line, each request it hands the engine and each
answer the engine finishes; after the kill, the request cache says which answers were kept.
Lost = requests handed to the engine whose answers are not in the cache (the resumed run pays for
them again); in flight = requests handed to the engine and not finished at the kill.

    python bench/engine.py [--only a|c] [--spec specs/math.yaml] [--limit N] [--repeats 1]
                           [--records 256] [--min-tokens 16] [--kill-tokens 64] [--model NAME]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
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


def short_spec(folder: Path, records: int, max_tokens: int, model: str | None = None) -> Path:
    """A spec with one-line prompts, so decoding (where a drained engine idles) dominates."""
    (folder / "short.j2").write_text(
        "---\nname: short\ndescription: One short answer, for the engine benchmark.\npurpose: general\n"
        "variables: [subtopic]\nsystem: You are brief.\n---\nTell me something about {{ subtopic }}.\n")
    items = "\n".join(f"      - {{topic: Science, subtopic: {t}}}" for t in TOPICS)
    spec = folder / "spec.yaml"
    spec.write_text(f"name: engine-bench\nseed: 5\ntopics:\n  - items:\n{items}\n"
                    f"generations_per_topic: {-(-records // len(TOPICS))}\n"
                    f"templates:\n  - template: {folder / 'short.j2'}\n"
                    + (f"models:\n  - name: {json.dumps(model)}\n" if model else "") +
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


def run_arm(spec: str, out: Path, limit: int | None, model: str | None = None) -> dict:
    """The synthgen arm: `synthgen run SPEC` in its own process, as a user runs it."""
    cmd = [sys.executable, "-m", "generator", "run", spec, "--out", str(out)] + (["--limit", str(limit)] if limit else [])
    if model:  # in place of the first model (its engine settings kept), or as the only one
        import yaml

        declared = "models" in (yaml.safe_load(Path(spec).read_text()) or {})
        cmd += ["--set", f"models.0.name={model}" if declared else f"models=[{{name: {json.dumps(model)}}}]"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"(a) synthgen run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    from generator.core.run_layout import read_manifest
    from generator.export.usage import compute_usage

    timing = read_manifest(out)["timings"][-1]
    usage = compute_usage(out)
    # decode: the model's busy span, from its first request to its last answer (the usage ledger)
    return {"wall": wall, "decode": sum(m["busy_s"] for m in usage["models"]), "generate": timing["generate_s"],
            "load": timing.get("model_load_s", 0.0), "calls": usage["total"]["requests"],
            "tokens": usage["total"]["completion_tokens"]}


def bare_arm(run_dir: str, model: str | None = None) -> None:
    """The bare arm, in its own process: one `LLM.chat` of the first try of every record the
    synthgen arm planned (its plan.parquet), with the same messages, seeds, sampling and schemas,
    on an engine built with the same settings (`VLLMOfflineBackend`). Prints one JSON line."""
    import json

    from generator.config.spec import load_spec
    from generator.core.run_layout import read_manifest, read_plan
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.engine.planner import resolve_spec
    from generator.engine.requests import make_request

    manifest = read_manifest(run_dir)
    spec = load_spec(manifest["spec_file"])
    schemas = {t.name: t.output_schema for t, _ in resolve_spec(spec).templates}
    rows = read_plan(run_dir).to_dicts()
    requests = [make_request(r, 1, schemas) for r in rows]
    t = time.perf_counter()
    backend = VLLMOfflineBackend(model or spec.models[0].name, engine=spec.models[0].engine)
    load = time.perf_counter() - t
    t = time.perf_counter()
    results = backend.chat(requests)
    decode = time.perf_counter() - t
    backend.close()
    print(json.dumps({"decode": decode, "load": load, "calls": len(results),
                      "tokens": sum(r.completion_tokens for r in results),
                      "cut": sum(r.finish_reason == "length" for r in results)}), flush=True)


def bench_decode(args) -> None:
    """(a) `synthgen run SPEC` against a bare `LLM.chat` of the same first tries, each in its own
    process alone on the machine, arms alternating; decode time excludes model load in both."""
    import json

    ours, bare = [], []
    for i in range(args.repeats):
        out = Path(tempfile.mkdtemp(prefix="synthgen-bench-")) / "run"
        s = run_arm(args.spec, out, args.limit, args.model)
        proc = subprocess.run([sys.executable, __file__, "--bare", str(out), *([args.model] if args.model else [])],
                              cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            raise SystemExit(f"(a) the bare arm failed: {proc.stderr.strip()[-2000:]}")
        b = json.loads(proc.stdout.strip().splitlines()[-1])
        shutil.rmtree(out.parent, ignore_errors=True)
        ours.append(s)
        bare.append(b)
        print(f"  repeat {i + 1}: synthgen decode {s['decode']:.1f}s ({s['calls']} calls, {s['tokens']} tokens)  "
              f"bare LLM.chat {b['decode']:.1f}s ({b['calls']} calls, {b['tokens']} tokens, {b['cut']} cut)  "
              f"ratio {s['decode'] / b['decode']:.3f}  load {os.getloadavg()[0]:.1f}", flush=True)
    sd, bd = statistics.median(x["decode"] for x in ours), statistics.median(x["decode"] for x in bare)
    st, bt = statistics.median(x["tokens"] for x in ours), statistics.median(x["tokens"] for x in bare)
    print(f"(a) {args.spec}: synthgen run vs bare LLM.chat, separate processes, median of {args.repeats}")
    print(f"  bare LLM.chat        : {bd:7.1f} s  {bt / bd:6.1f} completion tok/s")
    print(f"  synthgen run decode  : {sd:7.1f} s  {st / sd:6.1f} completion tok/s  "
          f"(retries included)")
    print(f"  synthgen around it   : model load {statistics.median(x['load'] for x in ours):.1f} s, generate phase "
          f"{statistics.median(x['generate'] for x in ours):.1f} s, process wall "
          f"{statistics.median(x['wall'] for x in ours):.1f} s; bare model load "
          f"{statistics.median(x['load'] for x in bare):.1f} s")
    print(f"  ratio in time        : {sd / bd:.3f}  (target <= 1.02)")
    print(f"  ratio per token      : {(sd / st) / (bd / bt):.3f}", flush=True)


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
    spec = short_spec(work, args.records, args.kill_tokens, args.model)
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
    if len(sys.argv) > 2 and sys.argv[1] == "--bare":
        return bare_arm(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[sys.argv.index("--") + 1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="specs/math.yaml", help="(a) the spec both arms run")
    ap.add_argument("--limit", type=int, default=None, help="(a) run only the first N records")
    ap.add_argument("--records", type=int, default=256, help="(c) records in the killed run")
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--kill-tokens", type=int, default=64, help="the (c) run's long-tail cap on max_tokens")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=["a", "c"], help="run one of the two measurements")
    ap.add_argument("--model", help="model alias, Hugging Face name or folder, in place of the spec's first model")
    args = ap.parse_args()
    print(describe(), flush=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if args.only != "c":
        bench_decode(args)
    if args.only != "a":
        bench_kill(args)


if __name__ == "__main__":
    main()
