"""The orchestrator alone: records/s and peak memory of `synthgen run` when answers are free.

The shipped specs/math.yaml (one stage) and specs/math_verified.yaml (problem -> solution -> 3
re-solves -> agreement check) are scaled to N records (more generations per topic, `--limit N`,
larger shards) and run on the fake backend, which answers at once; so what is measured is the
engine's own work: planning (expand, render, the plan frame, plan.parquet), then per record the
prompt renders, request hashes, the request cache, the Parquet shards and lineage.
The fake answers a prompt the same way whatever its seed, so a solution agrees with its
re-solves and no record is regenerated (5 requests per math_verified record).

Each (spec, size) runs in a fresh subprocess; its peak RSS is that process's VmHWM, so sizes do
not share a heap. Printed per run: records/s end to end and for the execute phase alone, the
seconds of each phase (plan: spec -> records; prepare: plan frame, plan.parquet, manifest;
execute: the scheduler; finish: read back, usage, card), and peak RSS. On a shared machine wall
time follows the other load; records per CPU-second (all threads) is the steadier figure.
Targets (2 CPU cores): >= 3,000 records/s single-stage, >= 1,000 for math_verified,
peak RSS < 2 GB at 10^6 records and flat in the plan's size.

    python bench/orchestrator.py [--sizes 10000,100000] [--specs math,math_verified]
                                 [--shard-size 1024] [--json OUT] [--profile DIR]

10^6 records (`--sizes 1000000`) takes long (tens of minutes per spec at today's rates).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = "10000,100000"
from bench.machine import describe, machine  # noqa: E402

DEFAULT_SPECS = "math,math_verified"


def _vm_hwm() -> int:
    """This process's peak resident set in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Discard(list):
    """The fake's request log, kept empty: the engine's memory is measured, not the fake's."""

    def append(self, _item) -> None:
        pass


def _answer(request) -> str:
    """A valid answer that is a function of the prompt alone: a solution and its re-solves (the
    same prompt, other seeds) agree, and a structured request gets JSON of its schema."""
    import hashlib

    from generator.library.schema_examples import minimal_instance

    content = request.messages[-1]["content"]
    if request.json_schema is not None:
        return json.dumps(minimal_instance(request.json_schema, content[:64]))
    h = int(hashlib.sha1(content.encode()).hexdigest()[:8], 16)
    return f"Worked answer for the problem. The answer is {h % 1000}."


def child(spec_name: str, n: int, shard_size: int, out: Path, profile: Path | None) -> dict:
    """One run of `spec_name` at `n` records into `out`; returns its figures."""
    from generator.config.spec import load_spec
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec
    from generator.testing.fake import FakeBackend

    path = ROOT / "specs" / f"{spec_name}.yaml"
    spec = load_spec(path)
    cells = spec.topics[0].sample if spec.topics and getattr(spec.topics[0], "sample", None) else 16
    spec = load_spec(path, overrides={"generations_per_topic": str(max(1, math.ceil(n / cells))),
                                      "run.shard_size": str(shard_size), "run.max_records": str(max(n * 2, 10**6))})
    spec.scoring = None

    def factory(cfg, **_):
        b = FakeBackend(cfg.name, responder=_answer)
        b.calls = _Discard()
        return b

    marks: dict[str, float] = {}

    cpu: dict[str, float] = {}

    def progress(event: str, data: dict) -> None:
        if event in ("plan", "start", "shard"):  # the last shard's mark ends the execute phase
            marks[event] = time.perf_counter()
            cpu[event] = time.process_time()
        if event == "plan":  # the runner's own planning time (spec -> records); the rest is prepare
            marks["plan_s"] = data["seconds"]

    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_spec(spec, out=out, limit=n, executor=LocalExecutor(backend_factory=factory),
                   progress=progress, score=False)
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        prof.disable()
        profile.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(profile / f"{spec_name}-{n}.prof"))
    t_start = marks.get("start", t0)
    t_plan = t0 + min(marks.get("plan_s", 0.0), t_start - t0)
    t_exec_end = marks.get("shard", t_start)
    execute = max(t_exec_end - t_start, 1e-9)
    exec_cpu = max(cpu.get("shard", c0) - cpu.get("start", c0), 1e-9)
    return {"spec": spec_name, "records": res.generated, "planned": res.planned, "model_calls": res.model_calls,
            "seconds": round(wall, 3), "records_per_s": round(res.generated / wall, 1),
            "execute_records_per_s": round(res.generated / execute, 1),
            # CPU seconds of every thread: steadier than wall time on a loaded machine
            "cpu_s": round(cpu_s, 3), "execute_cpu_s": round(exec_cpu, 3),
            "records_per_cpu_s": round(res.generated / max(cpu_s, 1e-9), 1),
            "phases_s": {"plan": round(t_plan - t0, 3), "prepare": round(t_start - t_plan, 3),
                         "execute": round(execute, 3), "finish": round(t0 + wall - t_exec_end, 3)},
            "peak_rss_mb": round(_vm_hwm() / 2**20, 1), "statuses": res.statuses}


def run_one(spec_name: str, n: int, shard_size: int, profile: Path | None, timeout: float | None) -> dict:
    """`child` in a fresh interpreter (its own peak RSS); the run folder is removed after."""
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        cmd = [sys.executable, __file__, "--child", spec_name, str(n), str(shard_size), str(Path(tmp) / "run")]
        if profile is not None:
            cmd.append(str(profile))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"error: {spec_name} at {n} records failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name, n, shard, out = argv[1], int(argv[2]), int(argv[3]), Path(argv[4])
        print(json.dumps(child(name, n, shard, out, Path(argv[5]) if len(argv) > 5 else None)), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="10^6 records (--sizes 1000000) takes long: tens of minutes per spec.")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"records per run, comma-separated (default {DEFAULT_SIZES})")
    ap.add_argument("--specs", default=DEFAULT_SPECS, help=f"shipped specs, comma-separated (default {DEFAULT_SPECS})")
    ap.add_argument("--shard-size", type=int, default=1024, help="run.shard_size (default 1024)")
    ap.add_argument("--json", metavar="OUT", help="also write the figures (and the machine line) to OUT")
    ap.add_argument("--profile", metavar="DIR", help="write a cProfile of each run to DIR/SPEC-N.prof")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per run (default: none)")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: give whole numbers separated by commas, e.g. 10000,100000")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes: give at least one size >= 1")
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    for s in specs:
        if not (ROOT / "specs" / f"{s}.yaml").exists():
            ap.error(f"--specs: no specs/{s}.yaml; e.g. --specs math,math_verified")
    print(describe(), flush=True)
    print(f"{'spec':<14} {'records':>9} {'rec/s':>8} {'exec rec/s':>10} {'rec/cpu-s':>9} {'plan s':>7} "
          f"{'prep s':>7} {'exec s':>8} {'finish s':>8} {'peak RSS MB':>11}", flush=True)
    rows = []
    for s in specs:
        for n in sizes:
            r = run_one(s, n, args.shard_size, Path(args.profile) if args.profile else None, args.timeout)
            p = r["phases_s"]
            print(f"{s:<14} {r['records']:>9,} {r['records_per_s']:>8,.0f} {r['execute_records_per_s']:>10,.0f} "
                  f"{r['records_per_cpu_s']:>9,.0f} {p['plan']:>7.2f} {p['prepare']:>7.2f} {p['execute']:>8.2f} {p['finish']:>8.2f} "
                  f"{r['peak_rss_mb']:>11,.0f}", flush=True)
            rows.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "shard_size": args.shard_size, "runs": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
