"""A 3-stage pipeline: continuous scheduling against running the stages one after another.

Both arms share one engine (prefix caching off, so neither finds the other's prompts cached) and
send exactly the same requests (same messages, sampling and seeds): the continuous arm is a
synthgen pipeline run (problem -> solution -> review; each record's next stage goes into the
engine's feed as soon as its answer lands); the stage-by-stage arm replays the requests the
continuous arm sent, grouped by stage, one engine batch per stage (what running one tool per
stage does: stage k+1 starts when the last answer of stage k is in).

Printed per arm: the engine's busy span (first request in to last answer out; for the continuous
arm this includes the scheduler's own work between steps: rendering the next stage, the cache),
its engine steps, and the continuous arm's whole `synthgen run` wall time (planning and writing
included). The gain comes from steps: stage-by-stage waits for each stage's longest answer, so it
needs about the sum over stages of the longest answer, continuous about the longest chain. It
needs answers of unequal length: with a small max_tokens every answer hits the cap, all chains
are equally long, and there is nothing to gain. Per step, a larger running batch costs more on a
CPU (compute-bound) than on a GPU, where the step ratio is close to the time ratio.

With every record in the engine at once (no cap, few records), both arms take as many steps as
the longest chain of answers, and when one record's answer is the longest at every stage (a small
model that rambles on its own rambling problem does that) there is nothing to gain. With more
records than the engine holds at once (`--max-in-flight`, as any engine's batch limit does at
scale) stage-by-stage pays a draining tail at every stage boundary, continuous only at the end.

    python bench/pipeline.py [--records 64] [--max-in-flight 16] [--max-tokens 192] [--repeats 1] [--model NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import describe  # noqa: E402

SPEC = """name: bench_pipeline
seed: {seed}
topics:
  - tree: math
    under: [Arithmetic, Fractions, Ratios Rates and Percentages]
generations_per_topic: 4
personas: {{file: core, sample: 40}}
models: [{{name: {model}}}]
sampling: {{temperature: 0.8, top_p: 0.95, max_tokens: {max_tokens}}}
run: {{shard_size: 64, retries: 0}}
stages:
  - {{name: problem, kind: generate, template: pipeline/math_problem}}
  - {{name: solution, kind: generate, template: pipeline/solve}}
  - {{name: review, kind: generate, template: review}}
"""
REVIEW = ("Check this solution. Say whether it is correct, and why, in two sentences.\n\n"
          "Problem: {{ problem.text }}\n\nSolution: {{ solution.text }}\n")


class Recording:
    """The shared engine, recording every request it receives. Without a native `stream` the
    scheduler feeds `generate` in gathered windows of `window` requests."""

    def __init__(self, inner, window: int):
        self.inner, self.model, self.window = inner, inner.model, window
        self.requests: list = []

    def generate(self, requests, on_result=None):
        requests = list(requests)
        self.requests.extend(requests)
        return self.inner.generate(requests, on_result)

    @property
    def stream(self):
        native = getattr(self.inner, "stream", None)
        if native is None:
            raise AttributeError("stream")

        def recorded(feed, on_result=None):
            return native(_RecordingFeed(feed, self.requests), on_result)
        return recorded

    def describe(self):
        return self.inner.describe()

    def close(self):
        pass


class _RecordingFeed:
    """A feed view that records what the backend takes (for a native `stream`)."""

    def __init__(self, feed, sink: list):
        self.feed, self.sink = feed, sink

    def take(self, *a, **k):
        got = self.feed.take(*a, **k)
        self.sink.extend(got)
        return got

    def __len__(self) -> int:
        return len(self.feed)

    def __getattr__(self, name):
        return getattr(self.feed, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--window", type=int, default=64, help="window of the fallback stream (no native stream)")
    ap.add_argument("--max-in-flight", type=int, default=16,
                    help="requests in the engine at once, in both arms (run.window; 0: no cap)")
    ap.add_argument("--model", default="smollm2-135m", help="model alias, Hugging Face name or folder")
    args = ap.parse_args()
    print(describe(), flush=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    from generator import run
    from generator.config.spec import load_spec
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.engine.executors.local import LocalExecutor

    backend = VLLMOfflineBackend(args.model, engine={"max_model_len": 2048, "enable_prefix_caching": False},
                                 window=args.max_in_flight or None)
    native = hasattr(backend.llm, "enqueue_chat")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    (work / "templates").mkdir()
    (work / "templates" / "review.j2").write_text(REVIEW)
    backend.generate(list(_warmup()))  # first-call allocations

    rows = []
    for i in range(args.repeats):
        spec_path = work / f"spec{i}.yaml"
        spec_path.write_text(SPEC.format(seed=100 + i, max_tokens=args.max_tokens, model=json.dumps(args.model)))
        spec = load_spec(spec_path)
        rec = Recording(backend, args.window)
        t = time.perf_counter()
        res = run(spec, out=work / f"run{i}", limit=args.records,
                  executor=LocalExecutor(backend_factory=lambda c, **_: rec), score=False)
        wall = time.perf_counter() - t
        c = backend.last_stream
        cont = {"span": c.ended - c.started, "steps": c.steps, "max_batch": c.max_in_flight}
        by_stage: dict[str, list] = {}
        for r in rec.requests:
            by_stage.setdefault(r.id.split("/")[1], []).append(r)
        staged = {"span": 0.0, "steps": 0, "max_batch": 0}
        n_tok, longest = 0, []
        for stage in ("problem", "solution", "review"):
            out = list(backend.generate(by_stage.get(stage, [])))
            s = backend.last_stream
            staged["span"] += s.ended - s.started
            staged["steps"] += s.steps
            staged["max_batch"] = max(staged["max_batch"], s.max_in_flight)
            n_tok += sum(x.completion_tokens for x in out)
            longest.append(max((x.completion_tokens for x in out), default=0))
        rows.append((cont, staged, wall))
        print(f"repeat {i + 1}: {len(rec.requests)} requests, {res.manifest['counts']['tokens']['completion']} "
              f"completion tokens kept, {n_tok} replayed; longest answer per stage {longest}")
        print(f"  continuous     span {cont['span']:6.1f}s  steps {cont['steps']:4d}  (whole synthgen run {wall:.1f}s)")
        print(f"  stage by stage span {staged['span']:6.1f}s  steps {staged['steps']:4d}")
    med = lambda arm, k: statistics.median(r[arm][k] for r in rows)  # noqa: E731
    mode = "native stream" if native else f"windowed fallback (generate windows of {args.window})"
    cap = f"at most {args.max_in_flight} requests in the engine" if args.max_in_flight else "no cap on requests in flight"
    print(f"\n(b) 3-stage pipeline, {args.records} records, max_tokens {args.max_tokens}, {cap}, {mode}:")
    print(f"    engine time: stage-by-stage {med(1, 'span'):.1f}s / continuous {med(0, 'span'):.1f}s "
          f"= {med(1, 'span') / med(0, 'span'):.2f}x (target >= 1.2x)")
    print(f"    engine steps: stage-by-stage {med(1, 'steps'):.0f} / continuous {med(0, 'steps'):.0f} "
          f"= {med(1, 'steps') / med(0, 'steps'):.2f}x")
    print(f"    whole run: stage-by-stage engine time / continuous synthgen run "
          f"{med(1, 'span') / statistics.median(r[2] for r in rows):.2f}x")
    backend.close()


def _warmup():
    from generator.core.backend import Request, Sampling

    for i in range(4):
        yield Request(id=f"w{i}", messages=({"role": "user", "content": "Say hi."},),
                      sampling=Sampling(max_tokens=8, seed=i))


if __name__ == "__main__":
    main()
