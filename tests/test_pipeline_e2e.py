"""Every shipped pipeline end to end on the embedded model (mechanics only: counts, statuses,
columns, accounting; never what the 135M model writes), and a pipeline run SIGKILLed mid-run
(fake backend) that resumes paying only for requests it never got an answer to."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.core.backend import Borrowed
from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator.library.catalog import builtin_root
from helpers import cache_keys, kill_when, salvaged_keys

ROOT = Path(__file__).resolve().parents[1]
SYNTHGEN = Path(sys.executable).with_name("synthgen")
FAKE_SYNTHGEN = Path(__file__).resolve().parent / "fake_synthgen.py"
PIPELINES = ["math_verified", "instruct_judged", "preference", "rewrite_seeds"]
STATUSES = {"ok", "truncated", "empty", "invalid_json", "error", "rejected"}


def small(spec, max_tokens: int = 40):
    spec.sampling.max_tokens = max_tokens
    for stage in spec.stages:
        if stage.kind not in ("generate", "judge"):
            continue
        stage.sampling.max_tokens = None
        if stage.kind == "judge":
            stage.sampling.max_tokens = 96  # room for a short JSON verdict
    spec.scoring = None
    return spec


def need_data(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing")
        pytest.skip(f"{path} is missing")
    return path


class Recording(Borrowed):
    """The shared engine, recording every request that reaches it."""

    def __init__(self, inner):
        super().__init__(inner)
        self.requests: list = []

    def generate(self, requests, on_result=None):
        requests = list(requests)
        self.requests.extend(requests)
        return self.inner.generate(requests, on_result)

    def stream(self, feed, on_result=None):
        seen = self.requests

        class Tap:  # the engine's own continuous feed, recording what it takes
            def __getattr__(self, name):
                return getattr(feed, name)

            def __len__(self):
                return len(feed)

            def take(self, *args, **kwargs):
                got = feed.take(*args, **kwargs)
                seen.extend(got)
                return got

        return self.inner.stream(Tap(), on_result)


def check_run(out: Path, planned: int) -> pl.DataFrame:
    df = pl.read_parquet(out / "generations" / "*.parquet")
    finals = df.filter(pl.col("final"))
    assert finals.height == planned and finals["id"].n_unique() == planned  # each record ends once
    assert set(df["status"].unique()) <= STATUSES
    assert df.filter(~pl.col("final"))["status"].unique().to_list() in ([], ["rejected"])
    for _, rows in df.group_by("id"):
        assert sorted(rows["attempts"].to_list()) == list(range(1, rows.height + 1))
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["generated"] == planned and m["pipeline"]["rows"] == df.height
    assert set(m["pipeline"]["stages"]) <= set(m["pipeline"]["order"])
    assert (df["completion_tokens"] > 0).any()
    return df


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINES)
def test_shipped_pipeline_runs_end_to_end(name, vllm_backend, tmp_path):
    sets = {}
    if name == "rewrite_seeds":
        gsm8k = need_data(ROOT.parent / "shared" / "data" / "gsm8k")
        sets = {"topics.0.seeds": str(gsm8k), "topics.0.id_column": "null", "topics.0.sample": "3"}
    allow = (str(gsm8k),) if name == "rewrite_seeds" else ()  # the seed data lives outside the project
    spec = small(load_spec(builtin_root("specs") / f"{name}.yaml", sets, allow))
    rec = Recording(vllm_backend)
    out = tmp_path / "run"
    res = run(spec, out=out, limit=3, executor=LocalExecutor(backend_factory=lambda c, **_: rec))
    df = check_run(out, 3)
    assert res.model_calls == len(rec.requests) > 0
    stages = [s.name for s in spec.stages]
    assert all(f"{s}.status" in df.columns for s in stages)
    entry = df.filter(pl.col("attempts") == 1)
    assert (entry[f"{stages[0]}.seed"] == entry["seed"]).all()  # the plan's seed is the entry's
    if name == "rewrite_seeds":
        assert df["seed_id"].is_not_null().all()
        assert all(t.startswith("seed:") and t[5:] == s for t, s in zip(df["topic_id"], df["seed_id"]))
    if name == "preference":
        done = df.filter(pl.col("pick.status") == "ok")
        for r in done.iter_rows(named=True):
            assert {r["pick.chosen"], r["pick.rejected"]} == {r["answer_a.text"], r["answer_b.text"]}
        mix = subprocess.run([str(SYNTHGEN), "mix", "--layout", "preference", "--synthetic", str(out),
                              "--out", str(tmp_path / "mix")], capture_output=True, text=True, timeout=120)
        assert mix.returncode == 0, mix.stderr
        rows = (tmp_path / "mix" / "preference.jsonl").read_text().splitlines()
        assert len(rows) == df.filter(pl.col("final") & (pl.col("status") == "ok")).height
    rep = subprocess.run([str(SYNTHGEN), "report", str(out)], capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and all(s in rep.stdout for s in stages), rep.stdout + rep.stderr
    # a rerun finds everything written: no model call
    again = run(spec, out=out, limit=3, executor=LocalExecutor(backend_factory=lambda c, **_: rec))
    assert again.model_calls == 0


def test_sigkill_mid_pipeline_then_resume_pays_only_for_unanswered(tmp_path):
    """Control flow only, so the fake backend answers (tests/fake_synthgen.py in the killed CLI run);
    the shipped pipelines run on the real engine above."""
    spec_path = builtin_root("specs") / "math_verified.yaml"
    out = tmp_path / "run"
    sets = ["--set", "run.shard_size=2"]
    cmd = [sys.executable, str(FAKE_SYNTHGEN), "run", str(spec_path), "--out", str(out), "--limit", "6", *sets]
    env = {**os.environ, "SYNTHGEN_TEST_FAKE_DELAY": "0.1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # mid-pipeline: problems answered, solutions in flight
    kill_when(proc, lambda: len(cache_keys(out)) >= 8, tmp_path / "first.log", 120)
    cached = cache_keys(out)
    assert 8 <= len(cached) < 30  # killed mid-way: 6 records x 5 calls when nothing is rejected
    spec = load_spec(spec_path, {"run.shard_size": "2"})
    rec = Recording(FakeBackend(model="smollm2-135m"))
    res = run(spec, out=out, limit=6, executor=LocalExecutor(backend_factory=lambda c, **_: rec), score=False)
    paid = [r.payload_hash("smollm2-135m") for r in rec.requests]
    # answered before the kill: published then, or salvaged from the killed process's local copy now
    cached |= salvaged_keys(out)
    assert paid and not set(paid) & cached  # nothing answered before the kill is paid again
    assert len(paid) == len(set(paid)) == res.model_calls
    assert len(cached) + len(paid) == 30  # and everything else is paid exactly once
    m = json.loads((out / "manifest.json").read_text())
    assert m["timings"][-1]["model_calls"] == len(paid)
    assert cache_keys(out) >= cached | set(paid) - {None}
    check_run(out, 6)
