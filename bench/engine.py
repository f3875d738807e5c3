"""The continuously fed engine, measured: (a) its decode time against one bare `LLM.chat`,
(c) what a SIGKILL mid-run loses against what was in flight, and (s) what one engine step costs
by the number of sequences in it (see `bench_step_cost`; run it with `--only s`).

(a) The engine's cost as a user sees it: `synthgen run SPEC` (the shipped specs/math.yaml by
default) in its own process, against one bare `LLM.chat` of the same records' first tries (the
same messages, seeds, sampling and structured-output schemas, read from the synthgen arm's
plan.parquet) in another process, on an engine built with the same settings. Each arm runs alone
on the machine; model load is excluded from both (the timed `LLM.chat`
call; the synthgen arm's decode is the model's busy span in the usage ledger, from its
first request to its last answer). The synthgen arm's time includes its retries (a structured answer cut by
max_tokens is retried with the next seed; the bare arm keeps it cut); the per-token ratio divides
each arm's time by the completion tokens it decoded. A third arm, "retries in one batch", is the
bare arm with the synthgen arm's retries added to the same `LLM.chat`: the same tokens as the
synthgen arm, all decoded in one batch from the first step. It splits the ratio in two: what the
retries' own tokens cost (one batch / bare) and what synthgen's scheduling adds (synthgen / one
batch). On a CPU a decode step costs in proportion to the sequences in it, so a retry's tokens cost
time even inside the running batch; where the step cost is flat in the batch (a GPU) they do not.

(c) `synthgen run` in a subprocess (its own engine), SIGKILLed once a third of the answers are in
the request cache. Prompts are one line (bench/overhead.py measures long templated prompts), so
decoding dominates. The subprocess logs, line by line, each request it hands the engine and each
answer the engine finishes; after the kill, the request cache says which answers were kept.
Lost = requests handed to the engine whose answers are not in the cache (the resumed run pays for
them again); in flight = requests handed to the engine and not finished at the kill.

    python bench/engine.py [--only a|c|s] [--spec specs/math.yaml] [--limit N] [--repeats 1] [--no-hedge-arm]
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


def run_arm(spec: str, out: Path, limit: int | None, model: str | None = None, hedge: bool = True) -> dict:
    """The synthgen arm: `synthgen run SPEC` in its own process, as a user runs it."""
    import yaml

    cmd = [sys.executable, "-m", "generator", "run", spec, "--out", str(out)] + (["--limit", str(limit)] if limit else [])
    declared = "models" in (yaml.safe_load(Path(spec).read_text()) or {})
    if model:  # in place of the first model (its engine settings kept), or as the only one
        cmd += ["--set", f"models.0.name={model}" if declared else f"models=[{{name: {json.dumps(model)}}}]"]
    if not hedge:
        cmd += ["--set", "models.0.hedge=false" if declared or model else "models=[{name: smollm2-135m, hedge: false}]"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"(a) synthgen run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    from generator.core.run_layout import read_manifest
    from generator.export.usage import compute_usage

    manifest = read_manifest(out)
    timing = manifest["timings"][-1]
    stream = [m.get("stats") or {} for m in (manifest.get("models") or {}).values()]
    usage = compute_usage(out)
    # decode: the model's busy span, from its first request to its last answer (the usage ledger)
    return {"wall": wall, "decode": sum(m["busy_s"] for m in usage["models"]), "generate": timing["generate_s"],
            "load": timing.get("model_load_s", 0.0), "calls": usage["total"]["requests"],
            "tokens": usage["total"]["completion_tokens"],
            "steps": sum(x.get("engine_steps", 0) for x in stream), "hedges": sum(x.get("hedges", 0) for x in stream),
            "hedges_used": sum(x.get("hedges_used", 0) for x in stream)}


def bare_arm(run_dir: str, model: str | None = None, retries: bool = False) -> None:
    """The bare arm, in its own process: one `LLM.chat` of the first try of every record the
    synthgen arm planned (its plan.parquet), with the same messages, seeds, sampling and schemas,
    on an engine built with the same settings (`VLLMOfflineBackend`). Prints one JSON line.

    `retries`: the batch arm instead: the same first tries and, in the same `LLM.chat`, every later
    try the synthgen arm sent (read from its published answers), so it decodes the synthgen arm's
    token set in one batch from the first step. Against the bare arm it prices the retries' own
    tokens; against the synthgen arm, what its scheduling adds beyond them."""
    import json

    from generator.core.run_layout import read_answers

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
    if retries:
        by_id = {r["id"]: r for r in rows}
        answers = read_answers(run_dir, ["id"])
        for rid in sorted(set(answers["id"].to_list()) if answers is not None else ()):
            record, _, attempt = rid.rpartition("#")
            if record in by_id and attempt.isdigit() and int(attempt) > 1:
                requests.append(make_request(by_id[record], int(attempt), schemas))
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


def bare_process(run_dir: Path, model: str | None, retries: bool) -> dict:
    flag = "--batch" if retries else "--bare"
    proc = subprocess.run([sys.executable, __file__, flag, str(run_dir), *([model] if model else [])],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"(a) the {flag[2:]} arm failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_decode(args) -> None:
    """(a) `synthgen run SPEC` against a bare `LLM.chat` of the same first tries, each in its own
    process alone on the machine, arms alternating; decode time excludes model load in both. A
    third arm (`bare_arm(retries=True)`) decodes the synthgen arm's retries too, in the same batch."""
    ours, bare, batch, unhedged = [], [], [], []
    for i in range(args.repeats):
        if args.no_hedge_arm:
            out = Path(tempfile.mkdtemp(prefix="synthgen-bench-")) / "run"
            unhedged.append(run_arm(args.spec, out, args.limit, args.model, hedge=False))
            shutil.rmtree(out.parent, ignore_errors=True)
            u = unhedged[-1]
            print(f"  repeat {i + 1}: synthgen with hedge: false {u['decode']:.1f}s ({u['calls']} calls, "
                  f"{u['tokens']} tokens, {u['steps']} engine steps)", flush=True)
        out = Path(tempfile.mkdtemp(prefix="synthgen-bench-")) / "run"
        s = run_arm(args.spec, out, args.limit, args.model)
        b = bare_process(out, args.model, retries=False)
        o = bare_process(out, args.model, retries=True)
        shutil.rmtree(out.parent, ignore_errors=True)
        ours.append(s)
        bare.append(b)
        batch.append(o)
        print(f"  repeat {i + 1}: synthgen decode {s['decode']:.1f}s ({s['calls']} calls, {s['tokens']} tokens, "
              f"{s['steps']} engine steps, {s['hedges']} hedges of which {s['hedges_used']} used)  "
              f"bare LLM.chat {b['decode']:.1f}s ({b['calls']} calls, {b['tokens']} tokens, {b['cut']} cut)  "
              f"retries in one batch {o['decode']:.1f}s ({o['calls']} calls, {o['tokens']} tokens)  "
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
    od, ot = statistics.median(x["decode"] for x in batch), statistics.median(x["tokens"] for x in batch)
    print(f"  retries in one batch : {od:7.1f} s  {ot / od:6.1f} completion tok/s  (bare arm + the synthgen "
          f"arm's retries, one LLM.chat)")
    if unhedged:
        ud = statistics.median(x["decode"] for x in unhedged)
        print(f"  synthgen, hedge: false: {ud:6.1f} s  ratio {ud / bd:.3f} (its retries start when the cut answer ends)")
    print(f"  ratio in time        : {sd / bd:.3f}  (target <= 1.02)")
    print(f"  ratio per token      : {(sd / st) / (bd / bt):.3f}")
    print(f"  of which the retries' own tokens (one batch / bare): {od / bd:.3f}; synthgen's scheduling "
          f"(synthgen / one batch): {sd / od:.3f}", flush=True)


# ---------------------------------------------------------------- (s) what a decode step costs
STEP_SCHEMA = {"type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer"}}},
               "required": ["numbers"]}


def bench_step_cost(args) -> None:
    """(s) Milliseconds per engine step with B sequences decoding, free text and under a JSON
    schema (structured output), on the engine the project builds (`VLLMOfflineBackend`). Steps are
    counted only while all B requests of a batch are still decoding (prefill steps excluded), so a
    structured answer that closes early does not lower B unseen. The slope is what one more sequence
    costs a step: on a GPU it is near zero until the batch fills the device."""
    from generator.engine.backends.vllm_args import sampling_kwargs, sampling_params
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.core.backend import Sampling

    backend = VLLMOfflineBackend(args.model or "smollm2-135m")
    engine = backend.llm.llm_engine
    sizes = (1, 2, 4, 8, 16, 32, 48)

    def per_step(b: int, schema: dict | None) -> float | None:
        msgs = [[{"role": "user", "content": f"List many numbers, starting at {7 * i}."}] for i in range(b)]
        params = [sampling_params({**sampling_kwargs(Sampling(temperature=0.9, top_p=0.95, max_tokens=96, seed=i),
                                                     schema), **({} if schema else {"ignore_eos": True})})
                  for i in range(b)]
        backend.llm.enqueue_chat(msgs, params, use_tqdm=False)
        times, steps = 0.0, 0
        first = True
        while engine.has_unfinished_requests():
            full = engine.get_num_unfinished_requests() == b
            t = time.perf_counter()
            engine.step()
            dt = time.perf_counter() - t
            if full and not first:
                times, steps = times + dt, steps + 1
            first = False
        return 1000 * times / steps if steps >= 8 else None

    print("(s) ms per engine step with B sequences decoding (max_tokens 96; prefill steps excluded)")
    print(f"  {'B':>3} {'free text':>10} {'JSON schema':>12}")
    rows = []
    for b in sizes:
        per_step(b, STEP_SCHEMA)  # compiles the grammar, warms the engine at this size
        free, structured = per_step(b, None), per_step(b, STEP_SCHEMA)
        rows.append((b, free, structured))
        show = lambda v: f"{v:10.1f}" if v is not None else f"{'-':>10}"  # noqa: E731
        print(f"  {b:>3} {show(free)} {show(structured):>12}", flush=True)
    for label, col in (("free text", 1), ("JSON schema", 2)):
        pts = [(r[0], r[col]) for r in rows if r[col] is not None]
        if len(pts) >= 2:
            n = len(pts)
            mx, my = sum(b for b, _ in pts) / n, sum(v for _, v in pts) / n
            slope = sum((b - mx) * (v - my) for b, v in pts) / sum((b - mx) ** 2 for b, _ in pts)
            print(f"  {label}: about {my - slope * mx:.1f} ms a step + {slope:.2f} ms per sequence (least squares)")
    backend.close()


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
    if len(sys.argv) > 2 and sys.argv[1] in ("--bare", "--batch"):
        return bare_arm(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None, retries=sys.argv[1] == "--batch")
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[sys.argv.index("--") + 1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="specs/math.yaml", help="(a) the spec both arms run")
    ap.add_argument("--limit", type=int, default=None, help="(a) run only the first N records")
    ap.add_argument("--records", type=int, default=256, help="(c) records in the killed run")
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--kill-tokens", type=int, default=64, help="the (c) run's long-tail cap on max_tokens")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=["a", "c", "s"],
                    help="run one measurement: (a), (c), or (s) the engine's step cost by batch size (not run by default)")
    ap.add_argument("--no-hedge-arm", action="store_true",
                    help="(a) also run the synthgen arm with `hedge: false` (its retries trail the batch)")
    ap.add_argument("--model", help="model alias, Hugging Face name or folder, in place of the spec's first model")
    args = ap.parse_args()
    print(describe(), flush=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if args.only == "s":
        return bench_step_cost(args)
    if args.only != "c":
        bench_decode(args)
    if args.only != "a":
        bench_kill(args)


if __name__ == "__main__":
    main()
