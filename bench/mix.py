"""`synthgen mix` at corpus scale: peak memory and token-counting speed on a generated 5 GB corpus.

The real side is a JSONL corpus of --gb gigabytes (default 5) in 1 GB files, generated
deterministically from GSM8K train: each document is 1 to 8 problems with their worked answers,
drawn with a seeded generator, under web-dump style metadata (id, url, date). The synthetic side
is a run folder of re-worded GSM8K problems in 50 topics. The tokenizer is the embedded model's.

Steps: compare token-counting methods on a sample of the corpus; then build a 4:1 mix with a
cold token cache in a child process, sampling the memory (RSS) of that process and of its
counting workers; optionally (--warm) build it again from the token cache. Everything is written
under a temporary folder that is deleted at the end (unless --keep).

    python bench/mix.py [--gb 5] [--tokenizer PATH] [--warm] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe, machine  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
FILE_BYTES = 1 << 30


def make_corpus(folder: Path, gb: float, seed: int = 13) -> tuple[int, int]:
    """JSONL files totalling `gb` GB; returns (bytes, documents)."""
    rows = [json.loads(x) for x in (GSM8K / "train.jsonl").read_text().splitlines()]
    # JSON-escaped problems once; lines are put together from them without re-encoding
    parts = [json.dumps(f"{r['question']}\n{r['answer']}")[1:-1] for r in rows]
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    total, docs, k = int(gb * 1e9), 0, 0
    written = 0
    while written < total:
        with open(folder / f"web-{k:05d}.jsonl", "w") as f:
            size = 0
            while size < FILE_BYTES and written + size < total:
                n = rng.choice((1, 1, 2, 2, 3, 4, 6, 8))
                text = "\\n\\n".join(parts[rng.randrange(len(parts))] for _ in range(n))
                line = (f'{{"id":"doc-{docs:09d}","url":"https://example.org/{rng.randrange(10**9)}",'
                        f'"date":"2024-{1 + docs % 12:02d}-{1 + docs % 28:02d}","text":"{text}"}}\n')
                f.write(line)
                size += len(line)
                docs += 1
        written += size
        k += 1
    return written, docs


def make_run(run: Path, copies: int) -> None:
    import polars as pl

    rows = [json.loads(x) for x in (GSM8K / "test.jsonl").read_text().splitlines()] + \
        [json.loads(x) for x in (GSM8K / "train.jsonl").read_text().splitlines()]
    (run / "generations").mkdir(parents=True)
    for c in range(copies):
        out = [{"id": f"s{c:02d}-{i:06d}", "round": 1, "topic_id": i % 50, "template": "qa", "status": "ok",
                "text": f"Exercise {c}. {r['question']}\nWorked solution: {r['answer']}", "duplicate_of": None}
               for i, r in enumerate(rows)]
        pl.DataFrame(out).write_parquet(run / "generations" / f"part-{c:05d}.parquet")


def sample_texts(folder: Path, nbytes: int) -> list[str]:
    texts, size = [], 0
    with open(sorted(folder.iterdir())[0]) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size >= nbytes:
                break
    return texts


def compare_counting(texts: list[str], tokenizer: str | None) -> dict:
    """Tokens/s (wall clock) and tokens per CPU-second (this process and the counting workers) of
    each way of counting, on the same texts (+1 EOS each, as the mix counts)."""
    import psutil

    from generator.mix import load_tokenizer
    from generator.mix.counting import TokenCounter

    tok = load_tokenizer(tokenizer)
    me = psutil.Process()
    results = {}
    for name, workers, word_cache in (("batch encoder, in process (Rust threads)", 1, False),
                                      ("batch encoder, 2 worker processes", 2, False),
                                      ("word cache, in process", 1, True),
                                      ("word cache, 2 worker processes", 2, True)):
        counter = TokenCounter(tok, workers=workers, word_cache=word_cache)
        if workers > 1:
            counter.submit(["warm up the workers"] * 2, big=True).result()
        procs = [me] + ([psutil.Process(pid) for pid in counter._pool._processes] if counter._pool else [])

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in procs)
        c0, t0 = cpu(), time.perf_counter()
        n = int(counter.submit(texts, big=True).result().sum())
        dt, used = time.perf_counter() - t0, cpu() - c0
        counter.close()
        results[name] = (n, dt, used)
        print(f"  {name:<42} {n:>10,} tokens in {dt:6.2f} s = {n / dt / 1e6:5.2f} M tok/s, "
              f"{used:5.1f} CPU-s = {n / used / 1e6:5.2f} M tok per CPU-s", flush=True)
    return results


def child(config: str) -> None:
    """Build the mix described by the JSON `config`; print timings and this process's peak RSS."""
    from generator.mix import build_mix

    marks = {"start": time.perf_counter()}

    def log(msg: str) -> None:
        now = time.perf_counter()
        if msg.startswith("available:"):
            marks["indexed"] = now
        elif msg.startswith("reading the selected"):
            marks["selected"] = now
        print(f"  [{now - marks['start']:7.1f} s] {msg}", flush=True)

    res = build_mix(json.loads(config), log=log)
    marks["end"] = time.perf_counter()
    m = res.manifest
    print("RESULT " + json.dumps({
        "index_s": marks["indexed"] - marks["start"], "select_s": marks["selected"] - marks["indexed"],
        "write_s": marks["end"] - marks["selected"], "total_s": marks["end"] - marks["start"],
        "counted": m["token_count"]["counted_this_run"], "files_counted": m["token_count"]["files_counted"],
        "available": {s["name"]: s["available_tokens"] for s in m["sources"]},
        "docs": {s["name"]: s["available_docs"] for s in m["sources"]},
        "mix_tokens": m["mixes"][0]["tokens"], "achieved_ratio": m["mixes"][0]["achieved_ratio"],
        "shards": len(m["mixes"][0]["shards"]),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)


def run_sampled(config: dict) -> tuple[dict, dict]:
    """Run child() in a new process; sample its RSS and that of its children every 0.2 s."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(config)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peaks = {"main": 0, "total": 0, "workers_max": 0}
    stop = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                main = p.memory_info().rss
                kids = [c.memory_info().rss for c in p.children(recursive=True)]
            except psutil.Error:
                break
            peaks["main"] = max(peaks["main"], main)
            peaks["total"] = max(peaks["total"], main + sum(kids))
            peaks["workers_max"] = max([peaks["workers_max"], *kids])
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    result = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print(line, end="", flush=True)
    proc.wait()
    stop.set()
    th.join()
    if proc.returncode:
        raise SystemExit(f"the mix failed (exit {proc.returncode})")
    return result, peaks


def report(label: str, r: dict, peaks: dict) -> dict:
    real_avail = r["available"]["web"]
    rate = r["counted"] / r["index_s"] if r["counted"] else 0.0
    print(f"{label}: {r['total_s']:.0f} s in all; read + count {r['index_s']:.0f} s "
          f"({r['counted']:,} tokens counted = {rate / 1e6:.2f} M tok/s), select {r['select_s']:.1f} s, "
          f"read selected + write {r['write_s']:.0f} s")
    print(f"  real {real_avail:,} tokens in {r['docs']['web']:,} docs; mix {r['mix_tokens']['total']:,} tokens "
          f"(real {r['mix_tokens']['real']:,} : synthetic {r['mix_tokens']['synthetic']:,} = "
          f"{r['achieved_ratio']:.6f}:1) in {r['shards']} shards")
    print(f"  peak RSS: mix process {r['maxrss'] / 2**30:.2f} GiB (sampled {peaks['main'] / 2**30:.2f}), "
          f"largest worker {peaks['workers_max'] / 2**30:.2f} GiB, all processes together "
          f"{peaks['total'] / 2**30:.2f} GiB")
    return {"tokens_per_s": round(rate), "peak_rss_mix": r["maxrss"], "peak_rss_all": peaks["total"], **r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=5.0, help="size of the real corpus in GB (default 5)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: embedded model)")
    ap.add_argument("--synthetic-copies", type=int, default=20, help="copies of GSM8K on the synthetic side")
    ap.add_argument("--sample-mb", type=int, default=8, help="corpus sample for the counting comparison")
    ap.add_argument("--warm", action="store_true", help="build the mix a second time, from the token cache")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    print(describe(), flush=True)

    work = args.keep or Path(tempfile.mkdtemp(prefix="synthgen-mix-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
        t0 = time.perf_counter()
        size, docs = make_corpus(work / "web", args.gb)
        make_run(work / "run", args.synthetic_copies)
        print(f"corpus: {size / 1e9:.2f} GB in {len(list((work / 'web').iterdir()))} JSONL files, {docs:,} documents "
              f"(generated in {time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"counting methods on a {args.sample_mb} MB sample:", flush=True)
        compare_counting(sample_texts(work / "web", args.sample_mb << 20), args.tokenizer)
        cfg = {"real": [{"path": str(work / "web"), "name": "web"}], "synthetic": [{"run": str(work / "run"),
               "name": "syn"}], "ratio": "4:1", "seed": 1, "format": "jsonl", "cache_dir": str(work / "cache"),
               "out": str(work / "mix")}
        if args.tokenizer:
            cfg["tokenizer"] = args.tokenizer
        print(f"4:1 mix, cold token cache (load average {os.getloadavg()[0]:.1f}):", flush=True)
        out = {"cold": report("cold", *run_sampled(cfg))}
        if args.warm:
            print(f"4:1 mix again, from the token cache (load average {os.getloadavg()[0]:.1f}):", flush=True)
            out["warm"] = report("warm", *run_sampled({**cfg, "out": str(work / "mix2")}))
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print(json.dumps({"machine": machine()} | {k: {"tokens_per_s": v["tokens_per_s"], "peak_rss_mix": v["peak_rss_mix"],
                                                 "peak_rss_all": v["peak_rss_all"]} for k, v in out.items()}))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
