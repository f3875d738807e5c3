"""The Python API and CLI: loading runs and files, score/compare, dedup marking, the HTML report."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from scoring.api import compare, dedup_run, groups_for, load_texts, score, write_report
from generator.cli.scoring import cli
from helpers import importorskip_ci

LEX = "distinct_n,compression_ratio,exact_dup_rate,near_dup_rate"
BASE = " ".join(f"alpha{i}" for i in range(150))


def _rows(start: int, texts: list[str], status: list[str]) -> list[dict]:
    return [{"id": f"g{start + i:04d}", "round": 0, "topic_id": f"t{(start + i) % 2}", "topic": "x",
             "persona_ids": [f"p{(start + i) % 3}", "other"], "template": "tpl", "model": "m",
             "text": t, "status": s} for i, (t, s) in enumerate(zip(texts, status))]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "generations").mkdir(parents=True)
    a = [BASE, "a quick brown fox jumps high", "some other text entirely here", "failed one"]
    b = ["A QUICK   brown fox jumps high", BASE.replace("alpha30", "beta"), "fresh words and more words", ""]
    pl.DataFrame(_rows(0, a, ["ok", "ok", "ok", "error"])).write_parquet(run / "generations" / "part-0000.parquet")
    pl.DataFrame(_rows(4, b, ["ok", "ok", "ok", "empty"])).write_parquet(run / "generations" / "part-0001.parquet")
    return run


def test_load_texts_from_run_and_files(run_dir, tmp_path):
    texts, df = load_texts(run_dir)
    assert len(texts) == 6 and "failed one" not in texts
    assert groups_for(df, "persona")[:3] == ["p0", "p1", "p2"]
    assert groups_for(df, "topic")[:2] == ["t0", "t1"]
    zst = importorskip_ci("zstandard")
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    raw = "\n".join(json.dumps(r) for r in rows).encode()
    (tmp_path / "d.jsonl.zst").write_bytes(zst.ZstdCompressor().compress(raw))
    (tmp_path / "d.jsonl").write_bytes(raw)
    t1, _ = load_texts(tmp_path / "d.jsonl.zst", text_column="question+answer")
    t2, _ = load_texts(tmp_path / "d.jsonl", text_column="question+answer", sample=3, seed=1)
    assert t1[0] == "q0\na0" and len(t2) == 3 and set(t2) <= set(t1)
    pl.DataFrame(rows).write_parquet(tmp_path / "d.parquet")
    assert load_texts(tmp_path / "d.parquet", text_column="answer")[0] == [f"a{i}" for i in range(5)]
    with pytest.raises(KeyError, match="no column"):
        load_texts(tmp_path / "d.parquet")


def test_dedup_marks_without_dropping(run_dir):
    stats = dedup_run(run_dir, threshold=0.8)
    assert stats["rows"] == 8 and stats["ok_rows"] == 6
    assert stats["exact"] == 1 and stats["near"] == 1 and stats["duplicates"] == 2
    a = pl.read_parquet(run_dir / "generations" / "part-0000.parquet")
    b = pl.read_parquet(run_dir / "generations" / "part-0001.parquet")
    assert a.height == 4 and b.height == 4
    assert a["duplicate_of"].to_list() == [None, None, None, None]
    assert b["duplicate_of"].to_list() == ["g0001", "g0000", None, None]
    assert not list((run_dir / "generations").glob(".*tmp*"))
    assert len(load_texts(run_dir)[0]) == 4  # loaders skip marked rows
    assert dedup_run(run_dir)["duplicates"] == 2  # idempotent


def test_score_is_json_and_groups(run_dir):
    res = score(run_dir, metrics=LEX, by="topic")
    json.dumps(res)
    ds = res["datasets"][str(run_dir)]
    assert ds["n_texts"] == 6 and set(ds["groups"]) == {"t0", "t1"}
    assert set(ds["metrics"]["distinct_n"]["per_group"]) == {"t0", "t1"}
    assert ds["metrics"]["exact_dup_rate"]["value"] == pytest.approx(1 / 6)


def test_compare_and_report(tmp_path):
    rep = [{"text": "the same thing said over and over again"} for _ in range(30)]
    div = [{"text": f"topic {i} " + " ".join(f"w{i * 7 + j}" for j in range(8))} for i in range(30)]
    pa, pb = tmp_path / "rep.jsonl", tmp_path / "div.jsonl"
    pa.write_text("\n".join(json.dumps(r) for r in rep))
    pb.write_text("\n".join(json.dumps(r) for r in div))
    res = compare([pa, pb], metrics="distinct_n,compression_ratio,vendi", embedder="hash", bootstrap=5,
                  with_map=True)
    json.dumps(res)
    rows = {r["metric"]: r for r in res["table"]}
    d = rows["distinct_n"]["diffs"][str(pb)]
    assert d["diff"] > 0 and d["significant"]
    assert rows["compression_ratio"]["diffs"][str(pb)]["diff"] < 0
    assert rows["vendi"]["diffs"][str(pb)]["significant"]
    out = write_report(res, tmp_path / "r.html")
    html = out.read_text()
    assert "<html" in html and ("data:image/png;base64" in html or "<svg" in html)


def test_cli_score_compare_dedup(run_dir, tmp_path):
    r = CliRunner().invoke(cli, ["score", str(run_dir), "--metrics", LEX, "--by", "persona",
                                 "--out", str(tmp_path / "s.json"), "--report", str(tmp_path / "s.html"),
                                 "--embedder", "hash"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["by"] == "persona" and (tmp_path / "s.html").exists()
    r = CliRunner().invoke(cli, ["compare", str(run_dir), str(run_dir), "--metrics", "distinct_n"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["dedup", str(run_dir), "--threshold", "0.8"])
    assert r.exit_code == 0, r.output
    assert "duplicates" in r.output
