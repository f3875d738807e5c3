"""Resume that loses nothing: a run killed at any moment, rerun with the same command, ends with
exactly the planned records (none lost, none doubled), and pays only for answers it never got.

Fast: an in-process fake model that "dies" after k answers, for every k. Slow: the real CLI on the
embedded model, SIGKILLed once a shard has landed, then rerun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator.engine.planner import plan_spec
from generator.runs import run_spec
from generator.engine.requests import make_request
from generator.config.spec import load_spec
from helpers import cache_keys, kill_when, salvaged_keys, small_spec

ROOT = Path(__file__).resolve().parents[1]
SYNTHGEN = Path(sys.executable).with_name("synthgen")


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way up handles it."""


class DyingFake(FakeBackend):
    window = 2

    def __init__(self, die_after: int):
        super().__init__()
        self.die_after = die_after

    def generate(self, requests, on_result=None):
        for res in super().generate(requests, on_result):
            if len(self.calls) > self.die_after:
                raise Killed()
            yield res


def landed_ids(run: Path) -> set[str]:
    files = sorted((run / "generations").glob("part-*.parquet"))
    return set(pl.concat([pl.read_parquet(f) for f in files])["id"].to_list()) if files else set()


def expected_calls(run: Path, schemas: dict, landed: set[str], cached: set[str]) -> int:
    """Requests the resumed session must send: every attempt of every record not in a landed
    shard whose answer is not in the cache."""
    df = pl.read_parquet(run / "generations" / "*.parquet")
    calls = 0
    for row in df.iter_rows(named=True):
        if row["id"] in landed:
            continue
        for attempt in range(1, row["attempts"] + 1):
            if make_request(row, attempt, schemas).payload_hash(row["model"]) not in cached:
                calls += 1
    return calls


def check_complete(run: Path) -> pl.DataFrame:
    df = pl.read_parquet(run / "generations" / "*.parquet")
    plan = pl.read_parquet(run / "plan.parquet")
    ids = df["id"].to_list()
    assert len(ids) == len(set(ids)), "duplicated records"
    assert sorted(ids) == sorted(plan["id"].to_list()), "lost or unplanned records"
    assert not list((run / "generations").glob(".*.tmp")), "a half-written shard was left behind"
    return df


@pytest.mark.parametrize("die_after", list(range(0, 11)))
def test_killed_at_any_answer_resumes_exactly(proj, tmp_path, die_after):
    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2"})
    schemas = {n: t.output_schema for n, t in plan_spec(spec)[0].template_by_name.items()}
    run = tmp_path / "run"
    dying = DyingFake(die_after)
    try:
        run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: dying))
        finished_first = True
    except Killed:
        finished_first = False
    assert finished_first == (die_after >= 10)
    landed, cached = landed_ids(run), cache_keys(run)
    again = FakeBackend()
    res = run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: again))
    df = check_complete(run)
    assert df.height == 10 and res.generated == 10
    want = expected_calls(run, schemas, landed, cached)
    assert res.model_calls == len(again.calls) == want
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["timings"][-1]["model_calls"] == want
    # the window in flight is all a crash may cost: at most 2 answers were paid for and lost
    assert want <= 10 - die_after + 2 if die_after < 10 else want == 0
    # the usage ledger adds up over the killed and the resumed session: every answer received,
    # once, in the session that paid for it; the resumed session's replays are its cache hits
    from generator.export.usage import compute_usage

    u = compute_usage(run)
    assert u["source"] == "ledger"
    delivered = len(dying.calls) - (0 if finished_first else 1)  # the call that "died" never answered
    replay = sum(r["attempts"] for r in df.iter_rows(named=True) if r["id"] not in landed) - want
    # a session that received nothing and replayed nothing leaves no usage
    sessions = [s["total"] for s in u["sessions"]]
    expect = [t for t in ({"requests": delivered, "cache_hits": 0}, {"requests": want, "cache_hits": replay})
              if t["requests"] or t["cache_hits"]]
    assert [{k: t[k] for k in ("requests", "cache_hits")} for t in sessions] == expect
    assert delivered == len(cached)
    assert u["total"]["requests"] == delivered + want


def test_disk_answers_of_a_landed_shard_are_never_regenerated(proj, tmp_path):
    """Landed shards are final: their rows are byte-identical after a resume."""
    spec = load_spec(proj / "spec.yaml", {"run.shard_size": "2"})
    run = tmp_path / "run"
    with pytest.raises(Killed):
        run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: DyingFake(5)))
    before = {p.name: p.read_bytes() for p in (run / "generations").glob("part-*.parquet")}
    assert before
    run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend()))
    for name, data in before.items():
        assert (run / "generations" / name).read_bytes() == data


SPEC = small_spec("resume-small", 21, max_tokens=48, run="{shard_size: 2, window: 2}")


def test_sigkill_then_same_command_finishes_exactly(tmp_path):
    """A real `synthgen run` process killed with SIGKILL mid-run, then the same command: control flow
    only, so the CLI runs on the fake backend (tests/fake_synthgen.py), each answer held 0.1 s."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC)
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tests" / "fake_synthgen.py"), "run", str(spec_path), "--out", str(run)]
    env = {**os.environ, "SYNTHGEN_TEST_FAKE_DELAY": "0.1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    kill_when(proc, lambda: bool(landed_ids(run)) and bool(cache_keys(run)), tmp_path / "first.log", 400, 0.2)
    landed, cached = landed_ids(run), cache_keys(run)
    assert 0 < len(landed) < 12

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr
    df = check_complete(run)
    assert df.height == 12
    spec = load_spec(spec_path)
    schemas = {n: t.output_schema for n, t in plan_spec(spec)[0].template_by_name.items()}
    manifest = json.loads((run / "manifest.json").read_text())
    # answered before the kill: published then, or salvaged from the killed process's local copy now
    before = cached | salvaged_keys(run)
    assert manifest["timings"][-1]["model_calls"] == expected_calls(run, schemas, landed, before)
    answered = len(landed | {r for r in df["id"].to_list()
                             if make_request(df.filter(pl.col("id") == r).row(0, named=True), 1, schemas)
                             .payload_hash("smollm2-135m") in before})
    assert manifest["timings"][-1]["model_calls"] >= 12 - answered  # retries only add calls
