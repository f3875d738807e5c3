"""A 3-stage pipeline: continuous scheduling against running the stages one after another.

Both arms share one engine and send exactly the same requests (same messages, sampling and
seeds): the continuous arm is a synthgen pipeline run (problem -> solution -> review; each
record's next stage goes into the engine's feed as soon as its answer lands); the stage-by-stage
arm replays the requests the continuous arm sent, grouped by stage, one batch per stage (what
running one tool per stage does: stage k+1 starts when the last answer of stage k is in).
Each repeat runs the continuous arm first and then replays its requests, so the stage-by-stage
arm finds its prompts in vLLM's prefix cache: the comparison favours stage-by-stage.

The speed-up is only as good as the backend's `stream`: a backend without a native one (the
offline vLLM backend until its continuous engine lands) streams in windows of `generate`
calls, which drain the engine between windows; the report says which one ran.

    python bench/pipeline.py [--records 48] [--max-tokens 64] [--repeats 1] [--window 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = """name: bench_pipeline
seed: {seed}
topics:
  - tree: math
    under: [Arithmetic, Fractions, Ratios Rates and Percentages]
generations_per_topic: 4
personas: {{file: core, sample: 40}}
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
    ap.add_argument("--records", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--window", type=int, default=64, help="window of the fallback stream (no native stream)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    from generator import run
    from generator.config.spec import load_spec
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend
    from generator.engine.executors.local import LocalExecutor

    backend = VLLMOfflineBackend("smollm2-135m", engine={"max_model_len": 2048})
    native = hasattr(backend, "stream")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    (work / "templates").mkdir()
    (work / "templates" / "review.j2").write_text(REVIEW)
    backend.generate(list(_warmup()))  # first-call allocations

    cont, staged, tokens = [], [], []
    for i in range(args.repeats):
        spec_path = work / f"spec{i}.yaml"
        spec_path.write_text(SPEC.format(seed=100 + i, max_tokens=args.max_tokens))
        spec = load_spec(spec_path)
        rec = Recording(backend, args.window)
        t = time.perf_counter()
        res = run(spec, out=work / f"run{i}", limit=args.records,
                  executor=LocalExecutor(backend_factory=lambda c, **_: rec), score=False)
        cont.append(time.perf_counter() - t)
        by_stage: dict[str, list] = {}
        for r in rec.requests:
            by_stage.setdefault(r.id.split("/")[1], []).append(r)
        t = time.perf_counter()
        n_tok = 0
        for stage in ("problem", "solution", "review"):
            n_tok += sum(x.completion_tokens for x in backend.generate(by_stage.get(stage, [])))
        staged.append(time.perf_counter() - t)
        tokens.append((res.manifest["counts"]["tokens"]["completion"], n_tok))
        print(f"repeat {i + 1}: continuous {cont[-1]:.1f}s ({len(rec.requests)} requests, "
              f"{tokens[-1][0]} tokens); stage by stage {staged[-1]:.1f}s ({tokens[-1][1]} tokens)")
    ratio = statistics.median(staged) / statistics.median(cont)
    mode = "native stream" if native else f"windowed fallback (generate windows of {args.window})"
    print(f"\n(b) 3-stage pipeline, {args.records} records, max_tokens {args.max_tokens}, {mode}:")
    print(f"    stage-by-stage {statistics.median(staged):.1f}s / continuous {statistics.median(cont):.1f}s "
          f"= {ratio:.2f}x (target >= 1.2x)")
    backend.close()


def _warmup():
    from generator.core.backend import Request, Sampling

    for i in range(4):
        yield Request(id=f"w{i}", messages=({"role": "user", "content": "Say hi."},),
                      sampling=Sampling(max_tokens=8, seed=i))


if __name__ == "__main__":
    main()
