"""How fast `synthgen view` starts and answers on a large run folder (no model involved).

Writes a synthetic run folder of N records (plan.parquet and generations/*.parquet in the engine's
schema, 1000 records a shard; texts drawn from a word list, 10 templates x 200 topics x 5 personas),
then starts `synthgen view RUN --port 0 --no-browser` as a subprocess and measures:
- start: from launching the process until /api/meta answers (includes Python and polars imports);
- filtered page: /api/records with template + topic + full-text filters, median of 30 requests,
  and an unfiltered deep page;
- when the first nearest-neighbour request answers (embeddings are computed in a background
  thread from start), nearest-neighbour latency after that, and the first k-means clustering.

    python bench/view.py [--records 10000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402

WORDS = ("apple river stone cloud seven music garden bridge number engine planet silver window forest ocean "
         "candle mirror rabbit violin tower harbor lantern meadow copper falcon pepper quartz saddle thunder "
         "velvet walnut yellow zebra anchor basket cactus dragon fraction angle triangle circle radius "
         "sum product divide measure volume area perimeter graph").split()


def build(run: Path, n: int, seed: int = 0) -> None:
    import polars as pl

    from generator.engine.run_folder import GENERATION_SCHEMA, PLAN_SCHEMA, shard_name

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tpl, topic, persona = f"tpl/{i % 10}", f"Topic {i % 200} / Sub {i % 7}", f"p{i % 5}"
        user = f"Write about {topic} for persona {persona} using template {tpl}."
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))
        status = "ok" if rng.random() > 0.08 else rng.choice(["truncated", "invalid_json", "empty"])
        rows.append({"id": f"{i:016x}", "round": 1, "topic_id": topic, "topic": topic.split(" / ")[0],
                     "subtopic": topic.split(" / ")[1], "keywords": ["a", "b"], "level": None,
                     "persona_ids": [persona], "template": tpl, "template_hash": f"h{i % 10}", "template_vars": "{}",
                     "model": "smollm2-135m", "temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "seed": i,
                     "generation": i // 200, "messages": [{"role": "system", "content": "You are a teacher."},
                                                          {"role": "user", "content": user}],
                     "prompt": user, "structured": False, "companion_topics": [], "completion": text,
                     "text": text if status == "ok" else None, "prompt_tokens": 30, "completion_tokens": 120,
                     "finish_reason": "stop", "status": status, "attempts": 1, "error": None})
    df = pl.DataFrame(rows, schema=GENERATION_SCHEMA)
    (run / "generations").mkdir(parents=True)
    df.select(list(PLAN_SCHEMA)).write_parquet(run / "plan.parquet")
    for k, start in enumerate(range(0, n, 1000)):
        df.slice(start, 1000).write_parquet(run / "generations" / shard_name(1, k))
    (run / "manifest.json").write_text(json.dumps({"name": f"bench-{n}"}))


def get(url: str) -> tuple[float, dict]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = json.load(r)
    return (time.perf_counter() - t) * 1000, body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--keep", help="Write the run folder here and keep it.")
    args = ap.parse_args()
    print(describe(), flush=True)
    tmp = tempfile.TemporaryDirectory()
    run = Path(args.keep) if args.keep else Path(tmp.name) / "run"
    t = time.perf_counter()
    build(run, args.records)
    print(f"built {args.records} records in {time.perf_counter() - t:.1f} s: {run}")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "generator.cli", "view", str(run), "--port", "0", "--no-browser"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = p.stdout.readline().split()[2]
        get(url + "api/meta")
        start = time.perf_counter() - t0
        q = {"template": "tpl/3", "topic": "Topic 3 / Sub 3", "q": "river"}
        first, res = get(url + "api/records?" + urllib.parse.urlencode(q))
        times = [get(url + "api/records?" + urllib.parse.urlencode({**q, "page": 1 + k % 2}))[0] for k in range(30)]
        deep = [get(url + f"api/records?page={args.records // 25 - k}")[0] for k in range(10)]
        search = [get(url + "api/records?q=" + w)[0] for w in WORDS[:10]]
        _, rec = get(url + "api/records?page=7")
        while True:  # 503 until the background embeddings are ready
            try:
                get(url + "api/neighbours?id=" + rec["records"][0]["id"])
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise
        ready = time.perf_counter() - t0
        nb = [get(url + "api/neighbours?id=" + r["id"])[0] for r in rec["records"][:10]]
        cl, _ = get(url + "api/clusters")
        print(f"server start (process launch to first answer): {start:.2f} s  (target < 3 s)")
        print(f"filtered page (template+topic+search, {res['total']} hits): first {first:.1f} ms, "
              f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms  (target < 200 ms)")
        print(f"unfiltered deep page: median {statistics.median(deep):.1f} ms; "
              f"search only: median {statistics.median(search):.1f} ms")
        print(f"first nearest neighbours (embeddings ready) {ready:.1f} s after launch; then median "
              f"{statistics.median(nb):.1f} ms; clusters (k-means, first call) {cl / 1000:.1f} s")
    finally:
        p.terminate()
        p.wait(10)
        tmp.cleanup()


if __name__ == "__main__":
    main()
