"""Run-loop control flow on a scripted fake model: shards, statuses, retries, resume.

The real-model end to end test is tests/test_e2e_vllm.py; these check the bookkeeping fast."""
from __future__ import annotations

import json

import polars as pl
import pytest

from generator.testing.fake import FakeBackend
from generator.core.errors import RunFolderError
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.config.spec import load_spec
from generator.engine.run_folder import GENERATION_SCHEMA


def _executor(backend):
    return LocalExecutor(backend_factory=lambda cfg, **_: backend)


def test_run_writes_shards_plan_manifest_card(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml")
    fake = FakeBackend()
    res = run_spec(spec, out=tmp_path / "run", executor=_executor(fake))
    run = tmp_path / "run"
    assert res.planned == res.generated == 10 and res.model_calls == 10
    shards = sorted(p.name for p in (run / "generations").glob("*.parquet"))
    assert shards == ["part-001-00000.parquet", "part-001-00001.parquet", "part-001-00002.parquet"]
    df = pl.read_parquet(run / "generations" / "*.parquet")
    assert set(GENERATION_SCHEMA) <= set(df.columns)
    plan = pl.read_parquet(run / "plan.parquet")
    assert sorted(df["id"].to_list()) == sorted(plan["id"].to_list())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["planned"] == 10 and manifest["spec_hash"] == spec.hash()
    assert "synthgen" in manifest["versions"] and (run / "README.md").exists()
    cards = df.filter(pl.col("template") == "card")
    for text in cards["completion"]:  # structured answers are JSON
        assert set(json.loads(text)) == {"question", "answer"}


def test_rerun_is_a_noop(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml")
    run_spec(spec, out=tmp_path / "run", executor=_executor(FakeBackend()))
    again = FakeBackend()
    res = run_spec(spec, out=tmp_path / "run", executor=_executor(again))
    assert again.calls == [] and res.generated == 10


def test_append_extends_without_regenerating(proj, tmp_path):
    run_spec(load_spec(proj / "spec.yaml"), out=tmp_path / "run", executor=_executor(FakeBackend()))
    before = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    more = FakeBackend()
    res = run_spec(load_spec(proj / "spec.yaml", {"generations_per_topic": "3"}), out=tmp_path / "run",
                   executor=_executor(more))
    assert len(more.calls) == 5 and res.generated == 15
    after = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    kept = after.filter(pl.col("id").is_in(before["id"].to_list())).sort("id")
    assert kept.equals(before.sort("id"))


def test_changed_plan_refuses_to_resume(proj, tmp_path):
    run_spec(load_spec(proj / "spec.yaml"), out=tmp_path / "run", executor=_executor(FakeBackend()))
    with pytest.raises(RunFolderError, match="no longer plans .* start a new run with --out"):
        run_spec(load_spec(proj / "spec.yaml", {"seed": "99"}), out=tmp_path / "run",
                 executor=_executor(FakeBackend()))
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("two sentences", "three sentences"))
    with pytest.raises(RunFolderError, match="template 'qa' was edited"):
        run_spec(load_spec(proj / "spec.yaml"), out=tmp_path / "run", executor=_executor(FakeBackend()))


def test_malformed_json_retried_then_recorded(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml")
    from generator.engine.planner import plan_spec

    cards = [r.id for r in plan_spec(spec)[1] if r.template == "card"]
    fixed, broken = cards[0], cards[1]
    script = {f"{fixed}#1": ['{"question": "Q?", "answer": '],           # malformed, then fine
              f"{broken}#1": ["not json"], f"{broken}#2": ["{}}"], f"{broken}#3": [""]}
    fake = FakeBackend(script={k.split("#")[0] + "#" + k.split("#")[1]: v for k, v in script.items()})
    fake.script = {}
    orig = fake._answer

    def answer(r):
        if r.id in script and script[r.id]:
            return script[r.id].pop(0), "stop"
        return orig(r)

    fake._answer = answer
    run_spec(spec, out=tmp_path / "run", executor=_executor(fake))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    row = df.filter(pl.col("id") == fixed).row(0, named=True)
    assert row["status"] == "ok" and row["attempts"] == 2
    bad = df.filter(pl.col("id") == broken).row(0, named=True)
    assert bad["status"] == "empty" and bad["attempts"] == 3  # retries: 2 -> three attempts, kept and flagged
    assert df.height == 10  # nothing dropped


def test_truncated_and_empty_are_flagged(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"run.retries": "0"})
    fake = FakeBackend(script={"*": ["cut off here<truncated>", "   "]})
    run_spec(spec, out=tmp_path / "run", executor=_executor(fake))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    statuses = df.sort("id")["status"].to_list()
    assert statuses.count("truncated") == 1 and statuses.count("empty") == 1


@pytest.mark.parametrize("max_tokens,retried", [(200, True), (64, False)])
def test_a_cut_structured_answer_is_retried_when_its_schema_fits_the_budget(proj, tmp_path, max_tokens, retried):
    """The card schema's longest answer is ~430 characters: 200 tokens hold it, so an answer cut off
    there is a degenerate run worth another seed; 64 tokens do not, so a retry would be cut again.
    A cut free-text answer is never retried."""
    from generator.engine.planner import plan_spec

    spec = load_spec(proj / "spec.yaml", {"sampling.max_tokens": str(max_tokens)})
    records = plan_spec(spec)[1]
    card = next(r.id for r in records if r.template == "card")
    qa = next(r.id for r in records if r.template == "qa")
    fake = FakeBackend(script={f"{card}#1": ['{"question": "1 2 3 4 5 6 7 8 9 1 2 3 4<truncated>'],
                               f"{qa}#1": ["a long answer that ran out<truncated>"]})
    run_spec(spec, out=tmp_path / "run", executor=_executor(fake))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    row = df.filter(pl.col("id") == card).row(0, named=True)
    assert (row["status"], row["attempts"]) == (("ok", 2) if retried else ("truncated", 1))
    assert [c.id for c in fake.calls if c.id.startswith(card)] == [f"{card}#1"] + ([f"{card}#2"] if retried else [])
    free = df.filter(pl.col("id") == qa).row(0, named=True)
    assert (free["status"], free["attempts"]) == ("truncated", 1)


def test_backend_errors_are_recorded_not_raised(proj, tmp_path):
    from generator.engine.planner import plan_spec

    spec = load_spec(proj / "spec.yaml", {"run.retries": "1"})
    first = plan_spec(spec)[1][0].id
    fake = FakeBackend(fail={f"{first}#1", f"{first}#2"})
    run_spec(spec, out=tmp_path / "run", executor=_executor(fake))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    row = df.filter(pl.col("id") == first).row(0, named=True)
    assert row["status"] == "error" and row["error"] == "injected failure" and row["attempts"] == 2


def test_cache_replays_paid_answers(proj, tmp_path):
    """A shard lost before it landed is rebuilt from the request cache without model calls."""
    spec = load_spec(proj / "spec.yaml")
    run_spec(spec, out=tmp_path / "run", executor=_executor(FakeBackend()))
    (tmp_path / "run" / "generations" / "part-001-00001.parquet").unlink()
    again = FakeBackend()
    res = run_spec(spec, out=tmp_path / "run", executor=_executor(again))
    assert again.calls == [] and res.generated == 10
