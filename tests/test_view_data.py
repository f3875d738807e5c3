"""The viewer's server-side query layer on a run folder written by the engine (fake backend)."""
from __future__ import annotations

import polars as pl
import pytest

from generator.view import data
from view_runs import SCRIPT, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("vd") / "run", per_topic=4)


def test_filters_search_and_paging_match_polars_on_the_files(run):
    df = data.load_run(run)
    raw = pl.read_parquet(run / "generations" / "*.parquet")
    assert df.height == raw.height
    got = data.query(df, {"persona": "t1", "template": "qa", "size": "3"})
    want = raw.filter(pl.col("persona_ids").list.contains("t1") & (pl.col("template") == "qa"))
    assert got["total"] == want.height and got["pages"] == -(-want.height // 3)
    pages = [data.query(df, {"persona": "t1", "template": "qa", "size": "3", "page": str(p)})["records"]
             for p in range(1, got["pages"] + 1)]
    assert sorted(r["id"] for p in pages for r in p) == sorted(want["id"])
    hit = data.query(df, {"q": "<script>"})
    assert {r["id"] for r in hit["records"]} == set(raw.filter(pl.col("completion").str.contains(SCRIPT, literal=True))["id"])
    assert data.query(df, {"round": "1"})["total"] == raw.height
    assert data.query(df, {"round": "2"})["total"] == 0
    with pytest.raises(data.RunError):
        data.query(df, {"round": "two"})


def test_pending_records_and_extra_columns_are_shown(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shards = sorted((copy / "generations").glob("*.parquet"))
    lost = pl.read_parquet(shards[0])
    shards[0].unlink()  # an unfinished shard: its records are planned, not generated
    keep = pl.read_parquet(shards[1])
    keep.with_columns(pl.lit(0.75).alias("judge_score"), pl.lit("draft").alias("stage")).write_parquet(shards[1])
    df = data.load_run(copy)
    assert data.query(df, {"status": "pending"})["total"] == lost.height
    assert data.facets(df)["stage"] == [["draft", keep.height]]
    assert data.query(df, {"stage": "draft"})["total"] == keep.height
    rec = data.record(df, keep["id"][0])
    assert rec["extra"] == {"judge_score": 0.75, "stage": "draft"}
    assert rec["system"] == keep["messages"][0][0]["content"] and rec["user"] == keep["messages"][0][-1]["content"]
    assert rec["lineage"]["template_hash"] == keep["template_hash"][0]
    assert data.record(df, "no-such-id") is None


def test_not_a_run_folder(tmp_path):
    with pytest.raises(data.RunError, match="no plan.parquet"):
        data.load_run(tmp_path)


def test_decontamination_counts_per_benchmark(proj, tmp_path, monkeypatch):
    """A scripted run with planted benchmark items: the viewer shows the manifest's per-benchmark
    counts, offers a `benchmark` filter with them, and counts from the rows while there is no manifest."""
    import json

    from generator.view.app import Run
    from test_decontaminate import run_planted, write_spec

    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    res, frame, kinds = run_planted(write_spec(proj), tmp_path / "run")
    info = Run(tmp_path / "run").info()
    dc = info["decontamination"]
    assert dc["from"] == "manifest" and dc["benchmarks"] == {"mini": {"rows": 3, "items": 3}}
    assert (dc["contaminated"], dc["rejected"], dc["records"]) == (3, 0, frame.height)
    assert (dc["ngram"], dc["action"]) == (13, "flag")
    assert info["facets"]["benchmark"] == [["mini", 3]]
    df = data.load_run(tmp_path / "run")
    got = data.query(df, {"benchmark": "mini", "size": "50"})
    assert sorted(r["id"] for r in got["records"]) == sorted(kinds)
    assert data.record(df, sorted(kinds)[0])["extra"]["contamination"]  # the hits themselves, on the record

    (tmp_path / "run" / "manifest.json").unlink()  # as while the run is still generating
    live = Run(tmp_path / "run").info()["decontamination"]
    assert live["from"] == "rows" and live["benchmarks"] == dc["benchmarks"] and live["records"] is None
    clean = tmp_path / "clean"
    make_run(clean, per_topic=1)
    assert Run(clean).info()["decontamination"] is None and "benchmark" not in data.facets(data.load_run(clean))
    assert json.loads(frame["contamination"].drop_nulls()[0])[0]["benchmark"] == "mini"
