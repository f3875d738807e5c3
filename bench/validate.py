"""`synthgen validate` on hostile inputs (docs/security.md limits): wall time per input, end to end.

Each input is a fresh `python -m generator.cli validate` process (interpreter start and imports
included), timed over a few repeats; the goal is under 2 s each, and every one exits 2 with one
line. Interpreter start alone is timed too, to show what the check itself costs.

    python bench/validate.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402

GOAL_S = 2.0

INPUTS = {
    "a 2 MiB file (over the 1 MiB limit)": "name: h\ndescription: '" + "a" * (2 << 20) + "'\n",
    "flow nesting 20,000 deep": "name: h\nvars: " + "[" * 20000 + "]" * 20000 + "\n",
    "block nesting 400 deep": "".join(" " * i + f"k{i}:\n" for i in range(400)),
    "aliases expanding to 10^9 values": "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefgh", "bcdefghi")),
    "a 900 KB line": "name: h\ndescription: " + "x" * 900_000 + "\n",
    "a 900 KB unclosed quote": "name: h\nvars: {a: '" + "x" * 900_000 + "\n",
    "50,000 keys": "name: h\nvars:\n" + "".join(f"  k{i}: {i}\n" for i in range(50_000)),
}


def _time(args: list[str], cwd: Path) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if k != "SYNTHGEN_DEBUG"} | {"PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, res.stderr.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        start = statistics.median(_time(["-c", "pass"], cwd)[0] for _ in range(args.repeats))
        print(f"interpreter start alone: {start:.2f} s")
        worst = 0.0
        for label, text in INPUTS.items():
            (cwd / "spec.yaml").write_text(text)
            runs = [_time(["-m", "generator.cli", "validate", "spec.yaml"], cwd) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            worst = max(worst, seconds)
            rc, err = runs[0][1], runs[0][2]
            one_line = len(err.splitlines()) == 1
            print(f"{label:<36} {seconds:5.2f} s  exit {rc}  {'one line' if one_line else 'NOT ONE LINE'}: "
                  f"{err[:110]}")
        print(f"slowest: {worst:.2f} s (goal < {GOAL_S:.0f} s) -> {'ok' if worst < GOAL_S else 'OVER'}")


if __name__ == "__main__":
    main()
