"""`synthgen probe` at toy scale: real-only, 4:1 and 1:1 mixes of GSM8K train with a synthetic math run.

The embedded SmolLM2-135M is trained with identical settings on each mix, 3 seeds per arm, and
evaluated on GSM8K test (perplexity and answer accuracy) and on held-out synthetic text. Prints
the table (mean ± sd over seeds), the wall time per arm, and whether any difference from the
real-only arm exceeds the spread (|delta| > sd_a + sd_b).

    python bench/probe.py [--run RUN] [--steps 4] [--seeds 3] [--out DIR]

Without --run, a small math run is generated first (`synthgen run specs/math.yaml --limit 64`,
several minutes on 2 CPU cores). Rerunning with the same --out resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe, machine  # noqa: E402

from generator.mix import MixConfig, build_mix  # noqa: E402
from generator.probe import ProbeSettings, run_probe  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"


def make_run(out: Path) -> Path:
    if not (out / "generations").is_dir():
        subprocess.run([sys.executable, "-m", "generator.cli", "run", str(ROOT / "specs" / "math.yaml"),
                        "--limit", "64", "--out", str(out)], check=True, cwd=str(ROOT))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a synthgen math run folder (default: generate one)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/synthgen-bench-probe"))
    ap.add_argument("--mix-tokens", type=int, default=2200, help="tokens per mix (about one pass at the default steps)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-docs", type=int, default=8, help="held-out real documents")
    ap.add_argument("--eval-synthetic-docs", type=int, default=None,
                    help="held-out synthetic documents (default: --eval-docs); taken from rows no mix selected "
                         "when there are enough, else out of every arm's training data")
    ap.add_argument("--gsm8k-n", type=int, default=4)
    ap.add_argument("--gsm8k-max-new-tokens", type=int, default=24)
    a = ap.parse_args()
    print(describe(), flush=True)

    run = a.run or make_run(a.out / "run")
    mix_dir = a.out / "mix"
    if not (mix_dir / "mix_manifest.json").is_file():
        build_mix(MixConfig.model_validate({
            "real": [{"path": str(GSM8K / "train.jsonl"), "name": "gsm8k", "text_template": "{question}\n{answer}"}],
            "synthetic": [{"run": str(run), "name": "math"}], "ratios": ["1:0", "4:1", "1:1"],
            "total_tokens": a.mix_tokens, "tokenizer": "smollm2-135m", "format": "parquet", "seed": 17,
            "out": str(mix_dir), "overwrite": True}))
    settings = ProbeSettings(
        seeds=list(range(a.seeds)), max_steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
        learning_rate=a.lr, eval_real=GSM8K / "test.jsonl", eval_docs=a.eval_docs,
        eval_synthetic_docs=a.eval_docs if a.eval_synthetic_docs is None else a.eval_synthetic_docs,
        eval_seq_len=a.seq_len, gsm8k=GSM8K / "test.jsonl", gsm8k_n=a.gsm8k_n, gsm8k_max_new_tokens=a.gsm8k_max_new_tokens,
        keep_models=False, save_steps=a.steps)
    t0 = time.perf_counter()
    probe = run_probe([mix_dir], settings, a.out / "probe", log=lambda m: print(m, flush=True), progress=False)
    wall = time.perf_counter() - t0

    from rich.console import Console

    from generator.probe.report import differences_table, table

    c = Console(width=160)
    c.print(table(probe))
    c.print(differences_table(probe))
    print(f"\nwall time of this invocation: {wall:.0f} s")
    for arm in probe["arms"]:
        w = [r["wall_s"] for r in arm["runs"] if r.get("status") == "done"]
        print(f"  {arm['name']}: {sum(x['total'] for x in w):.0f} s over {len(w)} seed(s) "
              f"(train {sum(x['train'] for x in w):.0f} s, eval {sum(x['eval'] for x in w):.0f} s)")
    exceeds = [d for d in probe["differences"] if d["exceeds"] and d["metric"] != "train_loss_last"]
    print("differences beyond the spread: " + (", ".join(f"{d['arm']} {d['metric']} {d['delta']:+.4g} "
                                                          f"(spread {d['spread']:.4g})" for d in exceeds) or "none"))
    print(json.dumps({"machine": machine(), "probe": str(a.out / "probe" / "probe.json")}))


if __name__ == "__main__":
    main()
