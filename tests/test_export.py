"""`synthgen export` and `synthgen usage`: dataset folders that `datasets` and polars load, Hub card
front matter, seeded topic-stratified splits, the three layouts, filters, usage and cost, and a
push to an unreachable Hub endpoint failing as one line. Run folders are generated with the fake
backend (control flow only); a slow test exports a real-engine run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator.export import ExportError, ExportOptions, Filters, export_run
from generator.export.rows import Preference, split
from generator.export.usage import compute_usage
from generator.runs import run_spec
from generator.config.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PRICE = {"models.0.price.input_per_mtok": "2.5", "models.0.price.output_per_mtok": "10"}


def _datasets():
    try:
        import datasets
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("the datasets package is required under CI")
        pytest.skip("datasets is not installed")
    return datasets


def _run(proj: Path, out: Path, fake: FakeBackend | None = None, **sets: str) -> Path:
    spec = load_spec(proj / "spec.yaml", {"generations_per_topic": "6", **sets})
    backend = fake or FakeBackend()
    run_spec(spec, out=out, executor=LocalExecutor(backend_factory=lambda c, **_: backend), score=False)
    return out


def _front(readme: Path) -> tuple[dict, str]:
    text = readme.read_text()
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "generator.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=120)


def test_text_export_loads_with_datasets_and_polars(proj, tmp_path):
    datasets = _datasets()
    run = _run(proj, tmp_path / "run")
    res = export_run(run, tmp_path / "ds", ExportOptions(test_ratio=0.25))
    gens = pl.read_parquet(run / "generations" / "*.parquet")
    ok = gens.filter(pl.col("status") == "ok")
    assert res.splits == {"train": ok.height - round(ok.height * 0.25), "test": round(ok.height * 0.25)}
    ds = datasets.load_dataset(str(tmp_path / "ds"))
    assert set(ds) == {"train", "test"} and ds["train"].num_rows == res.splits["train"]
    assert ds["train"].column_names == ["text", "id", "topic", "template", "model"]
    train = pl.read_parquet(tmp_path / "ds" / "data" / "train-*.parquet")
    test = pl.read_parquet(tmp_path / "ds" / "data" / "test-*.parquet")
    assert set(train["id"]).isdisjoint(test["id"]) and set(train["id"]) | set(test["id"]) == set(ok["id"])
    by_id = dict(zip(ok["id"], ok["text"]))
    assert all(by_id[i] == t for i, t in zip(train["id"], train["text"]))


def test_split_is_seeded_and_topic_stratified():
    ids = [f"r{i}" for i in range(60)]
    topics = ["a"] * 30 + ["b"] * 20 + ["c"] * 10
    frame = pl.DataFrame({"id": ids, "topic_id": topics})
    s1 = split(frame, 0.2, seed=1)
    assert s1.to_list() == split(frame, 0.2, seed=1).to_list()
    assert s1.to_list() != split(frame, 0.2, seed=2).to_list()
    per = frame.with_columns(s1).filter(pl.col("split") == "test").group_by("topic_id").len()
    assert dict(per.iter_rows()) == {"a": 6, "b": 4, "c": 2}
    # the same rows in another order get the same labels
    shuffled = frame.reverse()
    again = dict(zip(shuffled["id"], split(shuffled, 0.2, seed=1)))
    assert again == dict(zip(frame["id"], s1))


def test_card_front_matter_has_the_hub_fields_and_the_body_the_run(proj, tmp_path):
    run = _run(proj, tmp_path / "run", **PRICE)
    (run / "scores.json").write_text(json.dumps({"datasets": {"run": {"metrics": {
        "vendi": {"value": 3.25, "per_group": {"qa": 2.5}}}}}}))
    export_run(run, tmp_path / "ds", ExportOptions(layout="messages", license="apache-2.0", languages=("en", "de")))
    meta, body = _front(tmp_path / "ds" / "README.md")
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "de"]
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert {"synthetic", "sft"} <= set(meta["tags"])
    [config] = meta["configs"]
    assert config["config_name"] == "default" and [f["split"] for f in config["data_files"]] == ["train", "test"]
    for f in config["data_files"]:  # each pattern names exactly its split's files
        assert [p.name for p in (tmp_path / "ds").glob(f["path"])] == [p.name for p in (tmp_path / "ds" / "data").glob(
            f"{f['split']}-*.parquet")] != []
    manifest = json.loads((run / "manifest.json").read_text())
    assert "tiny-test" in body and "smollm2-135m" in body and manifest["spec_hash"] in body
    assert "| vendi | 3.25 | qa 2.5 |" in body and manifest["versions"]["polars"] in body
    assert "## Usage and cost" in body and "(no price)" not in body
    assert json.dumps(manifest["counts"]["status"], sort_keys=True) in body


def test_messages_layout_appends_the_generation_as_assistant_turn(proj, tmp_path):
    run = _run(proj, tmp_path / "run")
    export_run(run, tmp_path / "ds", ExportOptions(layout="messages", test_ratio=0))
    ds = pl.read_parquet(tmp_path / "ds" / "data" / "*.parquet")
    gens = pl.read_parquet(run / "generations" / "*.parquet").filter(pl.col("status") == "ok")
    assert not list((tmp_path / "ds" / "data").glob("test-*"))
    row = ds.row(0, named=True)
    src = gens.filter(pl.col("id") == row["id"]).row(0, named=True)
    msgs = [json.loads(m) for m in row["messages"]]  # Parquet JSON: polars reads each message as its text
    assert msgs[:-1] == [{**m, "train": False} for m in src["messages"]]
    assert msgs[-1] == {"role": "assistant", "content": src["text"], "train": True}


def _with_judge_columns(run: Path) -> None:
    """Add what a judge stage will add: two responses, a choice, a score (written as real shards)."""
    for path in sorted((run / "generations").glob("part-*.parquet")):
        df = pl.read_parquet(path)
        n = df.height
        df = df.with_columns(
            pl.Series("response_a", [f"A{i}-{r}" for i, r in enumerate(df["id"])]),
            pl.Series("response_b", [f"B{i}-{r}" for i, r in enumerate(df["id"])]),
            pl.Series("judge_choice", [["a", "B", "tie"][i % 3] for i in range(n)]),
            pl.Series("judge_score", [float(i % 5 + 1) for i in range(n)]),
            pl.Series("verify_passed", [i % 4 != 0 for i in range(n)]))
        df.write_parquet(path)


def test_preference_layout_round_trips_chosen_and_rejected(proj, tmp_path):
    datasets = _datasets()
    run = _run(proj, tmp_path / "run")
    _with_judge_columns(run)
    gens = pl.read_parquet(run / "generations" / "*.parquet").filter(pl.col("status") == "ok")
    res = export_run(run, tmp_path / "ds", ExportOptions(layout="preference", test_ratio=0.2,
                                                         preference=Preference(choice="judge_choice")))
    ds = datasets.load_dataset(str(tmp_path / "ds"))
    rows = [*ds["train"], *ds["test"]]
    src = {r["id"]: r for r in gens.iter_rows(named=True)}
    decided = [r for r in src.values() if r["judge_choice"] != "tie"]
    assert len(rows) == len(decided) and res.dropped["preference: no choice of a or b"] == gens.height - len(decided)
    for r in rows:
        s = src[r["id"]]
        better, worse = (s["response_a"], s["response_b"]) if s["judge_choice"] == "a" else (s["response_b"], s["response_a"])
        assert (r["prompt"], r["chosen"], r["rejected"]) == (s["prompt"], better, worse)
    meta, body = _front(tmp_path / "ds" / "README.md")
    assert "preference" in meta["tags"] and "| verify_passed |" in body
    with pytest.raises(ExportError, match="--choice-column choice: the run has no such column"):
        export_run(run, tmp_path / "ds2", ExportOptions(layout="preference"))


def test_filters_template_round_and_thresholds(proj, tmp_path):
    run = _run(proj, tmp_path / "run")
    _with_judge_columns(run)
    gens = pl.read_parquet(run / "generations" / "*.parquet")
    res = export_run(run, tmp_path / "a", ExportOptions(test_ratio=0, filters=Filters(
        templates=("qa",), rounds=(1,), where=("judge_score>=3", "verify_passed==true"))))
    want = gens.filter((pl.col("status") == "ok") & (pl.col("template") == "qa") & (pl.col("round") == 1)
                       & (pl.col("judge_score") >= 3) & pl.col("verify_passed"))
    assert 0 < res.splits["train"] == want.height < gens.height
    assert set(pl.read_parquet(tmp_path / "a" / "data" / "*.parquet")["id"]) == set(want["id"])
    with pytest.raises(ExportError, match="--where 'nope>1': the run has no column 'nope'"):
        export_run(run, tmp_path / "b", ExportOptions(filters=Filters(where=("nope>1",))))
    with pytest.raises(ExportError, match="not COLUMN OP VALUE"):
        export_run(run, tmp_path / "c", ExportOptions(filters=Filters(where=("judge_score",))))
    with pytest.raises(ExportError, match="no rows left"):
        export_run(run, tmp_path / "d", ExportOptions(filters=Filters(where=("judge_score>99",))))
    with pytest.raises(ExportError, match="--where 'judge_score>=high': cannot compare"):
        export_run(run, tmp_path / "e", ExportOptions(filters=Filters(where=("judge_score>=high",))))


def test_cli_errors_are_one_line_and_existing_folders_are_kept(proj, tmp_path):
    run = _run(proj, tmp_path / "run")
    r = _cli("export", str(run), "--to", str(tmp_path / "ds"), "--where", "missing>=1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --where 'missing>=1': the run has no column 'missing'; columns: ")
    assert _cli("export", str(run), "--to", str(tmp_path / "ds")).returncode == 0
    again = _cli("export", str(run), "--to", str(tmp_path / "ds"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _cli("export", str(run), "--to", str(tmp_path / "ds"), "--overwrite", "--test-ratio", "0").returncode == 0
    [only] = [p.name for p in (tmp_path / "ds" / "data").iterdir()]
    assert only.startswith("train-") and only.endswith("-00000-of-00001.parquet")


def test_push_to_hub_without_network_is_one_line_exit_2(proj, tmp_path):
    pytest.importorskip("huggingface_hub") if os.environ.get("CI") != "true" else None
    run = _run(proj, tmp_path / "run")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "hf_synthgenTestToken0123456789"
    r = _cli("export", str(run), "--to", str(tmp_path / "ds"), "--push-to-hub", "someone/tiny",
             env={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": secret, "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "--push-to-hub someone/tiny" in r.stderr and f"127.0.0.1:{port}" in r.stderr
    assert secret not in r.stderr + r.stdout
    assert (tmp_path / "ds" / "README.md").exists()  # the folder was written before the upload


def test_usage_cost_is_tokens_times_price_and_counts_retries(proj, tmp_path):
    first_ids: list[str] = []

    def responder(req):
        if req.id.endswith("#1") and len(first_ids) < 3 and req.json_schema is None:
            first_ids.append(req.id)
            return ""  # empty: retried with attempt 2, both answers paid
        if req.json_schema is not None:
            return json.dumps({"question": f"q {req.id}", "answer": "a"})
        return f"fine answer for {req.id}"

    fake = FakeBackend(responder=responder)
    run = _run(proj, tmp_path / "run", fake=fake, **PRICE)
    u = compute_usage(run)
    gens = pl.read_parquet(run / "generations" / "*.parquet")
    [m] = u["models"]
    assert u["source"] == "ledger" and m["requests"] == len(fake.calls) == gens.height + 3
    assert m["cache_hits"] == 0 and m["errors"] == 0 and m["busy_s"] > 0 and m["completion_tokens_per_s"] > 0
    [session] = u["sessions"]
    assert session["total"] == u["total"] and u["progress"] is None  # one session, finished
    assert sum(r["requests"] for r in u["by"]["stage"]) == m["requests"]
    assert m["prompt_tokens"] == sum(sum(len(x["content"].split()) for x in r.messages) for r in fake.calls)
    assert m["completion_tokens"] == sum(gens["completion_tokens"])  # the empty answers had none
    assert m["cost"] == pytest.approx(m["prompt_tokens"] * 2.5 / 1e6 + m["completion_tokens"] * 10 / 1e6)
    assert u["total"]["cost"] == pytest.approx(m["cost"])
    by_t = {r["template"]: r for r in u["by"]["template"]}
    assert sum(r["requests"] for r in by_t.values()) == m["requests"]
    assert by_t["qa"]["cost"] == pytest.approx(by_t["qa"]["prompt_tokens"] * 2.5e-6 + by_t["qa"]["completion_tokens"] * 1e-5)
    r = _cli("usage", str(run), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == u["total"]
    table = _cli("usage", str(run))
    assert table.returncode == 0 and "smollm2-135m" in table.stdout and "template=qa" in table.stdout


def test_usage_without_price_has_no_cost_and_price_is_strict(proj, tmp_path):
    run = _run(proj, tmp_path / "run")
    u = compute_usage(run)
    assert u["models"][0]["cost"] is None and u["total"]["cost"] is None
    from generator.core.errors import SpecError

    with pytest.raises(SpecError, match="unknown key 'per_mtok'"):
        load_spec(proj / "spec.yaml", {"models.0.price.per_mtok": "1"})
    with pytest.raises(SpecError, match="input_per_mtok"):
        load_spec(proj / "spec.yaml", {"models.0.price.output_per_mtok": "1"})


def test_run_folder_card_has_hub_fields_and_usage(proj, tmp_path):
    run = _run(proj, tmp_path / "run", **PRICE)
    meta, body = _front(run / "README.md")
    # the only input with a licence is the embedded model (the project's own topics and personas state none)
    assert meta["license"] == "apache-2.0" and "synthetic" in meta["tags"] and "configs" not in meta
    assert "## Usage and cost" in body and "Personas in the pool" in body and "| smollm2-135m |" in body


def test_reexport_is_not_served_stale_by_the_datasets_cache(proj, tmp_path):
    datasets = _datasets()
    run = _run(proj, tmp_path / "run")
    export_run(run, tmp_path / "ds", ExportOptions(test_ratio=0))
    first = datasets.load_dataset(str(tmp_path / "ds"))["train"].num_rows
    export_run(run, tmp_path / "ds", ExportOptions(test_ratio=0, overwrite=True,
                                                    filters=Filters(templates=("qa",))))
    second = datasets.load_dataset(str(tmp_path / "ds"))["train"].num_rows
    qa = pl.read_parquet(run / "generations" / "*.parquet").filter((pl.col("template") == "qa")
                                                                   & (pl.col("status") == "ok")).height
    assert second == qa < first
