"""Plans are written and read a chunk at a time: the same plan as one built whole, appended to in
place when a count grows, refused when the spec changed what was planned."""
from __future__ import annotations

import polars as pl
import pytest

import generator.engine.runner as runner
from generator.config.spec import load_spec
from generator.core.errors import RunFolderError
from generator.engine.planner import plan_spec, plan_stream
from generator.engine.run_folder import RunFolder


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(runner, "PLAN_CHUNK", 5)  # many chunks, shards that straddle them


def test_streamed_plan_equals_the_plan_built_whole(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "7", "run.shard_size": "3"})
    folder = RunFolder(tmp_path / "run")
    folder.create()
    planned, new = runner.plan_into(folder, plan_stream(spec)[1], 3)
    _, records = plan_spec(spec)
    whole = runner.assign_shards(None, records, 3)
    got = pl.read_parquet(folder.plan_path)
    assert planned == new == len(records) == got.height
    assert got.select(whole.columns).equals(whole)
    # read back a slice at a time, the rows are the plan's, in order
    again = pl.concat(list(folder.plan_batches(rows=4)))
    assert again.equals(got.select(again.columns))


def test_a_grown_count_appends_and_changes_no_planned_row(proj, tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create()
    small = load_spec(proj / "spec.yaml", {"generations_per_topic": "2", "run.shard_size": "3"})
    runner.plan_into(folder, plan_stream(small)[1], 3)
    before = pl.read_parquet(folder.plan_path)
    big = load_spec(proj / "spec.yaml", {"generations_per_topic": "4", "run.shard_size": "3"})
    planned, new = runner.plan_into(folder, plan_stream(big)[1], 3)
    after = pl.read_parquet(folder.plan_path)
    assert planned == after.height == 2 * before.height and new == before.height
    assert after.head(before.height).equals(before)  # appended: old rows and their shards unchanged
    assert not set(after.tail(new)["shard"]) & set(before["shard"])  # new records in fresh shards
    assert sorted(after["id"]) == sorted(r.id for r in plan_spec(big)[1])
    assert not (folder.path / ".plan-new").exists()
    # the same spec again plans nothing new and rewrites nothing
    mtime = folder.plan_path.stat().st_mtime_ns
    assert runner.plan_into(folder, plan_stream(big)[1], 3) == (after.height, 0)
    assert folder.plan_path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("change, message", [
    ({"generations_per_topic": "1"}, "no longer plans"),
    ({"sampling.max_tokens": "65"}, "`max_tokens` changed"),
])
def test_a_changed_plan_is_refused_and_the_plan_kept(proj, tmp_path, change, message):
    folder = RunFolder(tmp_path / "run")
    folder.create()
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "2"})
    runner.plan_into(folder, plan_stream(spec)[1], 4)
    before = folder.plan_path.read_bytes()
    with pytest.raises(RunFolderError, match=message):
        runner.plan_into(folder, plan_stream(load_spec(proj / "spec.yaml", {"generations_per_topic": "2",
                                                                               **change}))[1], 4)
    assert folder.plan_path.read_bytes() == before
