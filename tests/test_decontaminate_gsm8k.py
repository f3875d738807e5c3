"""Decontamination against the real GSM8K test split (shared data folder): 20 test items planted in a
scripted run's answers (verbatim, reworded, inside longer text) are every one found, naming the
right item, and GSM8K train items that share no 13-gram with the test split are not flagged.

The control set is computed here with a plain-Python normaliser and sets of word tuples, not with
the matcher under test. Under CI=true a missing data folder fails the test instead of skipping it.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import unicodedata
from pathlib import Path

import polars as pl

from generator import run
from generator.config.spec import load_spec
from generator.engine.executors.local import LocalExecutor
from generator.engine.planner import plan_spec
from generator.testing.fake import FakeBackend
from helpers import skip_or_fail

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
N = 13
PLANTED = 20


def need_data() -> None:
    if not (GSM8K / "test.jsonl").is_file() or not (GSM8K / "train.jsonl").is_file():
        skip_or_fail(f"{GSM8K}/test.jsonl and train.jsonl not found")


def _words(text: str) -> list[str]:
    """Letters and digits, NFKC, lowercase: the documented normalisation, written independently."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).lower())


def _grams(text: str) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i:i + N]) for i in range(len(w) - N + 1)}


def _reworded(text: str) -> str:
    return text.upper().replace(",", " ;").replace("?", " ?!").replace("$", "USD ")


def test_planted_gsm8k_test_items_found_and_clean_train_items_not(proj, tmp_path, monkeypatch):
    need_data()
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    test = [json.loads(x) for x in (GSM8K / "test.jsonl").read_text().splitlines() if x.strip()]
    train = [json.loads(x) for x in (GSM8K / "train.jsonl").read_text().splitlines() if x.strip()]
    (proj / "bench").mkdir()
    shutil.copy(GSM8K / "test.jsonl", proj / "bench" / "gsm8k-test.jsonl")
    spec_path = proj / "spec.yaml"
    base = spec_path.read_text().replace("  - template: card\n", "").replace("generations_per_topic: 2",
                                                                              "generations_per_topic: 8")
    spec_path.write_text(base + "decontaminate:\n  benchmarks:\n"
                         "    - {name: gsm8k, path: bench/gsm8k-test.jsonl, fields: [question, answer]}\n")

    # planted: test items whose question alone has a 13-gram, in three shapes
    rng = random.Random(29)
    picks = rng.sample([i for i, r in enumerate(test) if len(_words(r["question"])) >= N], PLANTED)
    shapes = ["verbatim", "reworded", "inside", "with answer"]
    planted = {}
    for k, i in enumerate(picks):
        q, shape = test[i]["question"], shapes[k % len(shapes)]
        planted[i] = {"verbatim": q, "reworded": _reworded(q),
                      "inside": f"Here is a problem I made up for practice. {q} Take it one step at a time.",
                      "with answer": f"{q}\n{test[i]['answer']}"}[shape]
    # control: train items sharing no 13-gram with any test question or answer
    test_grams = set().union(*(_grams(r["question"]) | _grams(r["answer"]) for r in test))
    control = [r for r in train[:400] if not (_grams(r["question"]) | _grams(r["answer"])) & test_grams]
    assert len(control) >= 20

    spec = load_spec(spec_path)
    ids = [r.id for r in plan_spec(spec)[1]]
    assert len(ids) >= PLANTED + 20
    answers = dict(zip(ids, [*planted.values(), *(f"{r['question']}\n{r['answer']}" for r in control)]))
    item_of = dict(zip(ids, [f"gsm8k-test.jsonl:{i}" for i in planted]))

    def respond(r):
        return answers.get(r.id.split("#")[0], "Nothing to see here.")

    res = run(spec, out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend(
        responder=respond)), score=False)
    frame = pl.read_parquet(sorted((tmp_path / "run" / "generations").glob("*.parquet")))
    hits = {r["id"]: json.loads(r["contamination"]) for r in frame.iter_rows(named=True) if r["contamination"]}
    missed = [rid for rid in item_of if rid not in hits]
    assert not missed, f"planted GSM8K test items not found: {missed}"
    for rid, item in item_of.items():
        assert item in {h["item_id"] for h in hits[rid]}, (rid, item, hits[rid])
        assert all(h["benchmark"] == "gsm8k" and len(h["ngram"].split()) == N for h in hits[rid])
    flagged_controls = sorted(set(hits) - set(item_of))
    assert not flagged_controls, f"clean GSM8K train items flagged: {flagged_controls}"
    counts = res.manifest["decontamination"]
    assert counts["hits"]["benchmarks"]["gsm8k"]["rows"] == PLANTED
    assert counts["final"]["contaminated"] == PLANTED
