"""`synthgen mix --decontaminate FILE --contaminated drop|refuse`, end to end through the CLI:
benchmark items planted in a real file and a synthetic run (verbatim, inside longer text,
reworded) are exactly the documents dropped and counted, or the mix is refused in one line.

Real text is GSM8K train (shared data folder); the benchmark is a small file of long questions
that GSM8K does not contain, so every hit is a planted one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from generator.cli.main import main as cli
from generator.core.ngram_index import Item, NgramIndex
from generator.mix import MANIFEST_NAME, load_shard_rows
from helpers import skip_or_fail

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
TOKENIZER = Path(__file__).resolve().parent / "fixtures" / "mix" / "tokenizer.json"
BENCH = {
    "q1": "A farmer has seventeen sheep and all but nine run away through a hole in the fence, so how "
          "many sheep does the farmer have left at the end of the day?",
    "q2": "A lighthouse keeper climbs one hundred and twelve steps four times every night and twice more "
          "on foggy nights; how many steps does the keeper climb in a week with three foggy nights?",
    "q3": "A train leaves the station at nine in the morning travelling sixty miles per hour and arrives "
          "at its destination at one in the afternoon; how far did the train travel?",
    "q4": "An orchard has twelve rows of apple trees with fifteen trees in each row, and each tree gives "
          "forty apples; how many apples does the orchard give in all?",   # never planted
}
REAL_PLANTED = {10: BENCH["q1"], 200: f"Before we start, a warm-up. {BENCH['q2']} Show your work."}
SYN_PLANTED = {5: BENCH["q3"].upper().replace(",", "").replace(";", " -")}   # reworded: case, punctuation


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def proj(tmp_path) -> Path:
    """qa.jsonl (300 GSM8K train rows, 2 planted), run/ (120 rows, 1 planted), bench/, decon.yaml, mix.yaml."""
    if not (GSM8K / "train.jsonl").is_file():
        skip_or_fail(f"{GSM8K}/train.jsonl not found")
    train = [json.loads(x) for x in (GSM8K / "train.jsonl").read_text().splitlines()[:420]]
    real = [{"question": r["question"], "answer": r["answer"]} for r in train[:300]]
    for i, text in REAL_PLANTED.items():
        real[i]["question"] = text
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in real))
    syn = [{"id": f"syn-{j:05d}", "topic": f"t{j % 3}", "status": "ok",
            "text": f"Problem: {r['question']}\nSolution: {r['answer']}",
            "messages": [{"role": "user", "content": r["question"]}], "completion": r["answer"]}
           for j, r in enumerate(train[300:])]
    for j, text in SYN_PLANTED.items():
        syn[j]["text"] = f"Problem: {text}\nSolution: 42"
    (tmp_path / "run" / "generations").mkdir(parents=True)
    pl.DataFrame(syn).write_parquet(tmp_path / "run" / "generations" / "part-00000.parquet")
    (tmp_path / "tok").mkdir()
    shutil.copy(TOKENIZER, tmp_path / "tok" / "tokenizer.json")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "mini.jsonl").write_text(
        "".join(json.dumps({"id": k, "question": q}) + "\n" for k, q in BENCH.items()))
    (tmp_path / "decon.yaml").write_text(
        "benchmarks:\n  - {name: mini, path: bench/mini.jsonl, fields: [question], id_field: id}\n")
    (tmp_path / "mix.yaml").write_text(
        "real:\n  - {path: qa.jsonl, name: qa, text_template: \"{question}\\n{answer}\"}\n"
        "synthetic:\n  - {run: run, name: syn}\n"
        "ratio: \"1:1\"\ntokenizer: tok\nformat: jsonl\nseed: 3\n")
    return tmp_path


def _mix(proj: Path, out: str, *extra: str):
    return CliRunner().invoke(cli, ["mix", str(proj / "mix.yaml"), "--out", str(proj / out), "-q", *extra])


def test_drop_removes_exactly_the_planted_documents(proj):
    plain = _mix(proj, "plain")
    assert plain.exit_code == 0, plain.output
    res = _mix(proj, "clean", "--decontaminate", str(proj / "decon.yaml"), "--contaminated", "drop")
    assert res.exit_code == 0, res.output
    before = json.loads((proj / "plain" / MANIFEST_NAME).read_text())
    after = json.loads((proj / "clean" / MANIFEST_NAME).read_text())

    report = after["decontamination"]
    assert {n: (r["documents"], r["contaminated"]) for n, r in report.items()} == {"qa": (300, 2), "syn": (120, 1)}
    assert {(e["id"], e["item_id"]) for e in report["qa"]["examples"]} == {("qa:10", "q1"), ("qa:200", "q2")}
    assert [(e["id"], e["item_id"]) for e in report["syn"]["examples"]] == [("syn-00005", "q3")]
    assert all(e["benchmark"] == "mini" for r in report.values() for e in r["examples"])
    assert report["qa"]["examples"][0]["file"] == str((proj / "qa.jsonl").resolve())

    src_before = {s["name"]: s for s in before["sources"]}
    src_after = {s["name"]: s for s in after["sources"]}
    for name, planted in (("qa", 2), ("syn", 1)):
        assert src_after[name]["skipped_rows"].get("contaminated") == planted
        assert "contaminated" not in src_before[name]["skipped_rows"]
        assert src_before[name]["available_docs"] - src_after[name]["available_docs"] == planted
        assert src_after[name]["available_tokens"] < src_before[name]["available_tokens"]

    # what was written repeats no benchmark item, and the dropped documents are nowhere in it
    index = NgramIndex.build([Item("mini", k, (q,)) for k, q in BENCH.items()], 13)
    texts = [r["text"] for f in sorted((proj / "clean").rglob("part-*.jsonl")) for r in load_shard_rows(f)]
    assert texts and not any(index.match_many(texts))
    kept = [r["text"] for f in sorted((proj / "plain").rglob("part-*.jsonl")) for r in load_shard_rows(f)]
    assert any(index.match_many(kept))  # without --decontaminate the planted documents can be selected


def test_refuse_is_one_line_naming_source_file_and_item(proj):
    res = _mix(proj, "out", "--decontaminate", str(proj / "decon.yaml"))  # refuse is the default
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    line = errors[0]
    assert "mix source 'qa'" in line and str((proj / "qa.jsonl").resolve()) in line
    assert "2 of 300 documents" in line and "mini item q1" in line and "qa:10" in line
    assert not (proj / "out" / MANIFEST_NAME).exists()
    again = _mix(proj, "out2", "--decontaminate", str(proj / "decon.yaml"), "--contaminated", "refuse")
    assert again.exit_code == 2 and again.output == res.output.replace(str(proj / "out"), str(proj / "out2"))
