"""Targets and budgets on the scripted fake backend: N accepted records (the same N on a rerun and
after a kill-and-resume), budgets checked before each request, and a hopeless target said early."""
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
from generator.engine.budget import Gate
from generator.engine.executors.local import LocalExecutor
from generator.engine.tally import Tally, wilson
from generator.runs.target import next_size
from generator.testing.fake import FakeBackend
from helpers import kill_when

ROOT = Path(__file__).resolve().parents[1]
# the fake's default answer is "Answer <12 hex digits> to: ...": the first hex digit is uniform, so
# a text below 'Answer 5' is accepted about 5 times in 16 (31%)
ACCEPT = "Answer 5"
SINGLE = """name: t
seed: 4
topics:
  - items: [Fractions, Decimals, Percentages, Ratios, Angles, Areas, Volumes]
templates:
  - template: t
sampling: {{max_tokens: 16}}
run: {{shard_size: 8, retries: 0}}
{extra}
"""
PIPE = """name: p
seed: 4
topics:
  - items: [Fractions, Decimals, Percentages, Ratios, Angles, Areas, Volumes]
sampling: {{max_tokens: 16}}
run: {{shard_size: 8, retries: 0}}
stages:
  - {{name: draft, kind: generate, template: t}}
  - {{name: solve, kind: generate, template: s, output: true}}
  - {{name: keep, kind: filter, expr: "{expr}"}}
{extra}
"""


def project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "t.j2").write_text("Write one short problem about {{ topic }}.\n")
    (tmp_path / "templates" / "s.j2").write_text("Solve: {{ draft.text }}\n")
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def fake_executor(**kw) -> LocalExecutor:
    return LocalExecutor(backend_factory=lambda cfg, **_: FakeBackend(model=cfg.name, **kw))


def final_rows(out: Path) -> pl.DataFrame:
    df = pl.read_parquet(out / "generations" / "*.parquet")
    return df.filter(pl.col("final")) if "final" in df.columns else df


def accepted_ids(out: Path) -> list[str]:
    return sorted(final_rows(out).filter(pl.col("status") == "ok")["id"].to_list())


def test_target_single_stage_where_exact_and_rerun_same(tmp_path):
    spec = project(tmp_path, SINGLE.format(extra=f"target: {{accepted: 50, where: \"text < '{ACCEPT}'\"}}"))
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    t = res.manifest["target"]
    assert t["reached"] and t["accepted_so_far"] == 50
    ok = final_rows(tmp_path / "a").filter(pl.col("status") == "ok")
    # `where:` decides: rows that ended ok but fail it are not accepted toward the target
    passing = ok.filter(pl.col("text") < ACCEPT)
    assert passing.height == 50
    assert 0.15 < 50 / res.planned < 0.5  # the acceptance the script makes, so the plan grew to ~160
    again = run(load_spec(spec), out=tmp_path / "b", executor=fake_executor(lifo=True), score=False)
    assert again.manifest["target"]["reached"]
    assert sorted(passing["id"].to_list()) == sorted(final_rows(tmp_path / "b").filter(
        (pl.col("status") == "ok") & (pl.col("text") < ACCEPT))["id"].to_list())
    # a rerun into the finished folder plans nothing new and sends nothing
    fakes = FakeBackend(model="x")
    third = run(load_spec(spec), out=tmp_path / "a", executor=LocalExecutor(backend_factory=lambda c, **_: fakes),
                score=False)
    assert third.manifest["target"]["accepted_so_far"] == 50 and not fakes.calls


def test_target_pipeline_exact_fifty_and_beyond_target_marked(tmp_path):
    spec = project(tmp_path, PIPE.format(expr=f"solve.text < '{ACCEPT}'", extra="target: {accepted: 50}"))
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    rows = final_rows(tmp_path / "a")
    assert rows.filter(pl.col("status") == "ok").height == 50
    beyond = rows.filter(pl.col("status") == "beyond_target")
    assert res.manifest["target"]["beyond_target"] == beyond.height
    assert beyond.height == 0 or (beyond["solve.text"] < ACCEPT).all()
    assert res.statuses.get("ok") == 50
    # a larger target on the same folder counts the kept ones again and goes on
    spec.write_text(spec.read_text().replace("accepted: 50", "accepted: 60"))
    more = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    assert more.statuses.get("ok") == 60
    # the first 60 accepted in plan order hold the first 50
    assert set(rows.filter(pl.col("status") == "ok")["id"].to_list()) <= set(accepted_ids(tmp_path / "a"))


def test_next_size_grows_from_acceptance_and_at_most_doubles():
    assert next_size(50, 35, 15, 50) == 50  # 35 / 0.31 = 114, capped at the plan so far
    assert next_size(200, 10, 60, 200) == 34  # 10 / 0.30
    assert next_size(10, 40, 0, 10) == 40  # never less than what is still needed


def test_token_budget_stops_before_the_request_that_could_exceed_it(tmp_path):
    spec = project(tmp_path, SINGLE.format(extra="generations_per_topic: 40\nbudget: {tokens: 3000}"))
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    b = res.manifest["budget"]
    assert b["stopped_by"] == "tokens"
    tok = res.manifest["counts"]["tokens"]
    # written rows spent at most the limit plus the answers in flight when the gate closed; the
    # gate's own count (every answer, written or not) is what it checked
    assert b["spent"]["tokens"] <= 3000 + 30 * 2  # 30 tokens at most per call: prompt ~10, answer <= 16
    assert tok["prompt"] + tok["completion"] <= b["spent"]["tokens"]
    assert 0 < res.generated < 280 and b["spent"]["tokens"] >= 3000 - 30  # stops near the limit, not early
    # a resume with the same budget sends nothing more: earlier sessions' spending counts
    fake = FakeBackend(model="x")
    res2 = run(load_spec(spec), out=tmp_path / "a", executor=LocalExecutor(backend_factory=lambda c, **_: fake),
               score=False)
    assert res2.manifest["budget"]["stopped_by"] == "tokens" and len(fake.calls) <= 1


def test_money_budget_on_a_target(tmp_path):
    extra = ("models:\n  - name: m\n    price: {input_per_mtok: 1000, output_per_mtok: 3000}\n"
             f"target: {{accepted: 500, where: \"text < '{ACCEPT}'\"}}\nbudget: {{cost: 2.5}}")
    spec = project(tmp_path, SINGLE.format(extra=extra))
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    b = res.manifest["budget"]
    assert b["stopped_by"] in ("cost", "hopeless")
    assert b["spent"]["cost"] <= 2.5 + 0.06 * 8  # at most the calls in flight beyond (~0.06 a call)
    assert not res.manifest["target"]["reached"]


def test_calls_budget_is_never_exceeded(tmp_path):
    spec = project(tmp_path, SINGLE.format(extra="generations_per_topic: 10\nbudget: {calls: 25}"))
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    assert res.model_calls == 25 and res.manifest["budget"]["stopped_by"] == "calls"
    assert res.manifest["budget"]["left"]["calls"] == 0


def test_hopeless_target_stops_within_a_few_dozen_records(tmp_path, caplog):
    extra = "target: {accepted: 50, on_hopeless: stop}\nbudget: {tokens: 20000}"
    spec = project(tmp_path, PIPE.format(expr="solve.text == 'never'", extra=extra))
    events: list[tuple[str, dict]] = []
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False,
              progress=lambda e, d: events.append((e, d)))
    warnings = [d["line"] for e, d in events if e == "warning"]
    assert len(warnings) == 1
    assert "keep passed 0 of" in warnings[0] and "tokens needed" in warnings[0]
    assert res.manifest["budget"]["stopped_by"] == "hopeless"
    ended = [d for e, d in events if e == "target"][-1]["ended"]
    assert ended <= 60
    assert not res.manifest["target"]["reached"]


def test_hopeless_warn_goes_on(tmp_path):
    extra = "target: {accepted: 5, on_hopeless: warn}\nbudget: {records: 30}"
    spec = project(tmp_path, PIPE.format(expr="solve.text == 'never'", extra=extra))
    events: list[tuple[str, dict]] = []
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False,
              progress=lambda e, d: events.append((e, d)))
    assert sum(e == "warning" for e, _ in events) == 1
    assert res.planned == 30 and res.manifest["target"]["stopped_by"] == "records"


def test_gate_reserves_in_flight_and_wilson_bounds():
    g = Gate({"tokens": 100})
    r1 = g.allow("m", 40, 30)  # 10 + 30 reserved
    r2 = g.allow("m", 40, 30)
    assert r1 and r2 and g.allow("m", 40, 30) is None and g.closed is None  # waits: 80 in flight
    g.charge("m", r1, 5, 5)
    assert g.spent["tokens"] == 10 and g.in_flight["tokens"] == 40
    g.charge("m", r2, 40, 40)  # the mean answer (45 tokens) is now the estimate
    assert g.allow("m", 40, 30) is None and g.closed == "tokens"  # 90 + 45 > 100 with nothing in flight
    assert g.summary()["left"]["tokens"] == 10
    lo, hi = wilson(0, 30, 0.95)
    assert lo == 0 and 0.05 < hi < 0.1
    lo, hi = wilson(15, 50, 0.95)
    assert lo < 0.3 < hi
    t = Tally(["draft", "keep"])
    t.add({"status": "rejected", "final": True, "attempts": 1, "draft.attempt": 1, "keep.attempt": 1,
           "decided_by": "keep"})
    t.add({"status": "ok", "final": True, "attempts": 1, "draft.attempt": 1, "keep.attempt": 1,
           "decided_by": "keep"})
    assert t.worst_stage() == "keep passed 1 of 2" and t.accepted == 1 and t.ended == 2


def test_target_and_rounds_or_limit_refused(tmp_path):
    spec = project(tmp_path, SINGLE.format(extra="target: {accepted: 5}"))
    from generator.core.errors import RunFolderError

    with pytest.raises(RunFolderError, match="--limit and a target"):
        run(load_spec(spec), out=tmp_path / "a", limit=3, executor=fake_executor(), score=False)


def _landed(run_dir: Path) -> int:
    return len(list((run_dir / "generations").glob("*.parquet"))) if (run_dir / "generations").exists() else 0


def test_cli_target_kill_and_resume_same_fifty(tmp_path):
    """A real `synthgen run --target 50` killed mid-run, then the same command: the same 50 records
    as an uninterrupted run."""
    spec = project(tmp_path, PIPE.format(expr=f"solve.text < '{ACCEPT}'", extra=""))
    fake = str(ROOT / "tests" / "fake_synthgen.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHGEN_PUBLISH_SECONDS": "0.2",
           "SYNTHGEN_LOCAL_CACHE": str(tmp_path / "local-cache")}
    whole = subprocess.run([sys.executable, fake, "run", str(spec), "--out", str(tmp_path / "whole"),
                            "--target", "50"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "accepted 50 / 50" in whole.stderr + whole.stdout
    cmd = [sys.executable, fake, "run", str(spec), "--out", str(tmp_path / "cut"), "--target", "50"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "SYNTHGEN_TEST_FAKE_DELAY": "0.01"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    kill_when(proc, lambda: _landed(tmp_path / "cut") >= 9, tmp_path / "first.log", 200)
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert accepted_ids(tmp_path / "cut") == accepted_ids(tmp_path / "whole")
    assert len(accepted_ids(tmp_path / "whole")) == 50
    m = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert m["target"]["reached"] and m["target"]["accepted"] == 50


def test_rounds_loop_stops_at_a_calls_budget_and_resumes_the_round(tmp_path):
    spec = project(tmp_path, SINGLE.format(extra="rounds: {count: 3, budget: 60, embedder: hash}\n"
                                                 "budget: {calls: 25}"))
    res = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    assert res.model_calls == 25 and res.manifest["budget"]["stopped_by"] == "calls"
    assert res.manifest["rounds"]["finished"] < 3
    # a larger budget resumes the unfinished round and goes on
    spec.write_text(spec.read_text().replace("calls: 25", "calls: 1000"))
    more = run(load_spec(spec), out=tmp_path / "a", executor=fake_executor(), score=False)
    assert more.manifest["budget"]["stopped_by"] is None and more.manifest["rounds"]["finished"] == 3
