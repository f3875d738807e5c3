"""Readers of a run folder outside the engine (mix, preference, probe, view) list and read its
shards through generator.core.run_layout: one naming of the files, one error for a missing run."""
from __future__ import annotations

import json

import polars as pl
import pytest

from generator.core.errors import RunFolderError
from generator.core.run_layout import (GENERATIONS, MANIFEST, generation_files, require_generation_files,
                                       shard_name)
from generator.config.mix import SyntheticSource
from generator.mix.preference import preference_rows
from generator.mix.synthetic import run_files
from generator.view.data import load_run, manifest


def _run(tmp_path, shards: int = 2, stray: bool = True):
    run = tmp_path / "run"
    (run / GENERATIONS).mkdir(parents=True)
    for k in range(shards):
        rows = [{"id": f"r{k}-{i}", "text": f"text {k} {i}", "status": "ok", "final": i % 2 == 0,
                 "a.prompt": f"prompt {k} {i}", "j.chosen": "yes", "j.rejected": "no", "round": 1}
                for i in range(3)]
        pl.DataFrame(rows).write_parquet(run / GENERATIONS / shard_name(1, k))
    if stray:  # an unfinished atomic write: no reader may take it for a shard
        pl.DataFrame({"id": ["ghost"]}).write_parquet(run / GENERATIONS / "tmp-part-001-00009.parquet")
    spec = {"stages": [{"name": "a"}, {"name": "b"}, {"name": "j", "kind": "judge", "compare": ["a", "b"]}]}
    (run / MANIFEST).write_text(json.dumps({"name": "run", "spec": spec}))
    return run


def test_shard_files_only_and_one_line_errors(tmp_path):
    run = _run(tmp_path)
    files = generation_files(run)
    assert [f.name for f in files] == [shard_name(1, 0), shard_name(1, 1)]
    assert require_generation_files(run) == files
    with pytest.raises(RunFolderError, match=r"missing: run folder not found; give the folder"):
        require_generation_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError) as exc:
        require_generation_files(tmp_path / "empty", " (synthetic source 'x')")
    msg = str(exc.value)
    assert "\n" not in msg and "no part-*.parquet files (synthetic source 'x')" in msg and "synthgen run" in msg


def test_mix_and_preference_read_the_shards(tmp_path):
    run = _run(tmp_path)
    assert run_files(SyntheticSource(run=run, name="syn")) == generation_files(run)
    with pytest.raises(RunFolderError, match="synthetic source 'gone'"):
        run_files(SyntheticSource(run=tmp_path / "nope", name="gone"))
    rows, skipped = preference_rows(run)
    assert sorted(rows["id"].to_list()) == ["r0-0", "r0-2", "r1-0", "r1-2"]  # final rows of both shards, no ghost
    assert skipped == {"not final (a rejected attempt)": 2}
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / MANIFEST).write_text((run / MANIFEST).read_text())
    with pytest.raises(RunFolderError, match="no part-"):
        preference_rows(tmp_path / "bare")


def test_view_reads_shards_and_tolerates_a_damaged_manifest(tmp_path):
    run = _run(tmp_path)
    df = load_run(run)
    assert sorted(df["id"].to_list()) == sorted(f"r{k}-{i}" for k in range(2) for i in range(3))
    assert manifest(run)["name"] == "run"
    (run / MANIFEST).write_text("{not json")
    assert manifest(run) == {}
