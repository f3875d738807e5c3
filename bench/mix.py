"""Throughput of `synthgen mix`: token counting and shard writing, in tokens per second.

Real side: GSM8K train repeated to ~7M tokens; synthetic side: a run folder made from GSM8K
(test + train, re-worded) with 50 topics. Reports counting (cold token cache), a cold build,
and warm builds per output format, each against a 1M tokens/s target.

    python bench/mix.py [--tokenizer PATH] [--copies 5] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.mix import build_mix, count_tokens, load_tokenizer  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
TARGET = 1_000_000


def make_data(work: Path, copies: int) -> tuple[Path, Path]:
    import polars as pl

    train = [json.loads(x) for x in (GSM8K / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (GSM8K / "test.jsonl").read_text().splitlines()]
    real = work / "real.jsonl"
    with open(real, "w") as f:
        for c in range(copies):
            for r in train:
                f.write(json.dumps({"text": f"{r['question']}\n{r['answer']}", "copy": c}) + "\n")
    run = work / "run"
    (run / "generations").mkdir(parents=True)
    rows = []
    for i, r in enumerate(test + train):
        rows.append({"id": f"s{i:06d}", "round": 1, "topic_id": i % 50, "topic": f"t{i % 50}", "subtopic": "s",
                     "template": "qa", "model": "m", "status": "ok",
                     "text": f"Exercise. {r['question']}\nWorked solution: {r['answer']}",
                     "messages": [{"role": "user", "content": r["question"]}], "completion": r["answer"],
                     "duplicate_of": None})
    half = len(rows) // 2
    pl.DataFrame(rows[:half]).write_parquet(run / "generations" / "part-00000.parquet")
    pl.DataFrame(rows[half:]).write_parquet(run / "generations" / "part-00001.parquet")
    return real, run


def rate(tokens: int, seconds: float) -> str:
    tps = tokens / seconds
    return f"{tokens:>11,} tokens in {seconds:6.2f} s = {tps / 1e6:5.2f} M tok/s ({tps / TARGET:4.2f}x the 1M target)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: embedded model)")
    ap.add_argument("--copies", type=int, default=5, help="GSM8K train copies on the real side (~1.4M tokens each)")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="synthgen-mix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tok = load_tokenizer(args.tokenizer)
        print(f"tokenizer: {tok.path} (vocab {tok.vocab_size:,}, eos {tok.eos_token!r}); cpu cores: {os.cpu_count()}")
        real, run = make_data(work, args.copies)
        texts = [json.loads(x)["text"] for x in real.read_text().splitlines()]
        print(f"data: {len(texts):,} real docs ({real.stat().st_size / 1e6:.1f} MB)")

        t0 = time.perf_counter()
        n = count_tokens(texts, tok)
        t_count = time.perf_counter() - t0
        print(f"count_tokens (encode_batch, in memory)   {rate(int(n.sum()), t_count)}")

        base = {"real": [{"path": str(real), "name": "gsm8k-x"}], "synthetic": [{"run": str(run), "name": "syn"}],
                "tokenizer": str(tok.path.parent), "ratio": "4:1", "seed": 1, "shard_tokens": 2_000_000,
                "cache_dir": str(work / "cache")}  # a fresh token cache: the first build counts everything
        t0 = time.perf_counter()
        res = build_mix({**base, "format": "parquet", "out": str(work / "cold")})
        t_cold = time.perf_counter() - t0
        counted = res.manifest["token_count"]["counted_this_run"]
        written = res.manifest["mixes"][0]["tokens"]["total"]
        print(f"build, cold cache (read+count+write)     {rate(counted, t_cold)} counted")
        mx = res.manifest["mixes"][0]
        print(f"  mix: {written:,} tokens (budget {mx['budget_tokens']:,}, shortfall {mx['budget_shortfall_tokens']}), "
              f"real {mx['tokens']['real']:,} : synthetic {mx['tokens']['synthetic']:,} = "
              f"{mx['achieved_ratio']:.6f}:1")
        results = {"count_tokens_per_s": int(n.sum()) / t_count, "cold_build_counted_tokens_per_s": counted / t_cold}
        for fmt in ("jsonl", "jsonl.zst", "parquet", "megatron"):
            marks: dict[str, float] = {}

            def log(msg: str) -> None:
                if ": selecting" in msg:
                    marks["select"] = time.perf_counter()
                elif ": wrote" in msg:
                    marks["wrote"] = time.perf_counter()

            t0 = time.perf_counter()
            res = build_mix({**base, "format": fmt, "out": str(work / fmt.replace(".", "_"))}, log=log)
            dt = time.perf_counter() - t0
            written = res.manifest["mixes"][0]["tokens"]["total"]
            size = sum((work / fmt.replace(".", "_") / f).stat().st_size
                       for sh in res.manifest["mixes"][0]["shards"] for f in sh["files"])
            dw = marks["wrote"] - marks["select"]
            print(f"build, warm cache, {fmt:<9} ({size / 1e6:6.1f} MB) {rate(written, dt)} written")
            print(f"  of which select+shuffle+write           {rate(written, dw)}")
            results[f"warm_build_{fmt}_tokens_per_s"] = written / dt
            results[f"write_{fmt}_tokens_per_s"] = written / dw
        print(json.dumps({k: round(v) for k, v in results.items()}))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
