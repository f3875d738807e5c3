"""bench/orchestrator.py: both shipped specs at 300 records each in fresh subprocesses, printing
records/s and peak RSS beside the machine line; bad options are refused in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "orchestrator.py"


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_bench_prints_records_per_second_and_rss(tmp_path):
    out = tmp_path / "orch.json"
    proc = _run("--sizes", "300", "--shard-size", "64", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "cores" in lines[0]
    assert "rec/s" in lines[1] and "rec/cpu-s" in lines[1] and "peak RSS MB" in lines[1]
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1 and "avx512" in data["machine"]
    runs = {r["spec"]: r for r in data["runs"]}
    assert set(runs) == {"math", "math_verified"}
    for name, r in runs.items():
        # every planned record is written ok: the fake's answers pass the schema and the agreement check
        assert r["records"] == r["planned"] == 300 and r["statuses"] == {"ok": 300}, r
        assert r["records_per_s"] > 0 and r["execute_records_per_s"] >= r["records_per_s"]
        assert 0 < r["execute_cpu_s"] <= r["cpu_s"] and abs(r["records_per_cpu_s"] * r["cpu_s"] / 300 - 1) < 0.02
        assert sum(r["phases_s"].values()) <= r["seconds"] + 0.05
        assert 30 < r["peak_rss_mb"] < 2048
        row = next(ln for ln in lines[2:] if ln.split()[0] == name)
        assert row.split()[1] == "300"
    assert runs["math"]["model_calls"] == 300  # one request per record: nothing retried
    assert runs["math_verified"]["model_calls"] == 300 * 5  # problem, solution, 3 re-solves: none rejected


def test_bench_refuses_bad_sizes():
    proc = _run("--sizes", "ten", timeout=60)
    assert proc.returncode == 2 and "--sizes" in proc.stderr and not proc.stdout.startswith("machine")
    proc = _run("--specs", "nope", timeout=60)
    assert proc.returncode == 2 and "specs/nope.yaml" in proc.stderr
