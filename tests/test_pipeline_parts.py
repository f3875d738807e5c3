"""The pieces of a pipeline: the filter expression language (edge values, what it refuses),
verifiers (answer extraction, agreement, JSON schema, regex, user functions with a timeout),
and seed data (formats, deterministic sampling, stratification, replacement, lineage)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest

from generator.config.seed_data import SeedTopics
from generator.engine.pipeline import expressions as ex
from generator.engine.pipeline import verify
from generator.library.seed_data import read_rows, sample_rows, seed_cells

ENV = {"check": {"agree": 2, "passed": True, "answer": "18"}, "quality": {"correctness": 4.0, "clarity": None},
       "problem": {"text": "abc", "json": {"n": 3, "tags": ["x"]}}, "topic": "Fractions", "attempt": 1}


@pytest.mark.parametrize("expr, want", [
    ("check.agree >= 2", True),
    ("check.agree > 2", False),
    ("check.agree >= 2 and quality.correctness >= 4", True),
    ("quality.correctness >= 4.0001", False),
    ("quality.clarity >= 1", False),            # missing score: never passes a threshold
    ("quality.clarity < 1", False),
    ("quality.clarity == None", True),
    ("quality.clarity is None", True),
    ("not quality.clarity", True),
    ("quality.missing >= 0", False),            # unknown key reads as None
    ("check.agree / 0 > 1", False),             # division by zero is None
    ("(check.agree + 1) * 2 == 6", True),
    ("-check.agree < 0", True),
    ("check.agree % 2 == 0 and check.agree // 2 == 1", True),
    ("topic in ['Fractions', 'Decimals']", True),
    ("topic not in ('Fractions',)", False),
    ("check.answer == '18'", True),
    ("check.answer > 3", False),                # str vs int: not true, no crash
    ("1 < check.agree < 3", True),
    ("1 < check.agree < 2", False),
    ("problem.json.n >= 3 or False", True),
    ("'x' in problem.json.tags", True),
    ("'y' in problem.text", False),
    ("attempt == 1", True),
    ("check.passed", True),
])
def test_expressions_on_edge_values(expr, want):
    assert ex.parse(expr).passes(ENV) is want


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "check.agree.__class__", "problem.text[0]", "len(problem.text)",
    "lambda: 1", "[x for x in 'ab']", "check.agree if True else 0", "{'a': 1}", "x := 1", "f'{check}'",
    "check.agree; 1", "",
])
def test_expressions_refuse_everything_else(expr):
    with pytest.raises(ex.ExpressionError):
        ex.parse(expr)


def test_expression_refs_are_dotted_paths():
    e = ex.parse("check.agree >= 2 and quality.correctness >= 4 or topic == 'x'")
    assert e.refs == (("check", "agree"), ("quality", "correctness"), ("topic",))


@pytest.mark.parametrize("text, how, want", [
    ("So 9 * 2 = 18.\n#### 18", "number", "18"),
    ("The answer is $1,250.00 dollars", "number", "1250"),
    ("x = 3, then y = 4.50\nFinal answer: 4.5", "number", "4.5"),
    ("We get \\boxed{42} at the end, or 7", "number", "42"),
    ("first 3 then 5 then -2", "number", "-2"),
    ("no digits here", "number", None),
    ("", "number", None),
    (None, "number", None),
    ("a\n\\boxed{x+1}", "boxed", "x+1"),
    ("line one\n  Final   Line ", "last_line", "final line"),
    ("Hello   World", "text", "hello world"),
])
def test_answer_extraction(text, how, want):
    assert verify.extract_answer(text, how) == want


def test_agreement_counts_and_majority():
    v = verify.agreement("... Final answer: 12", ["12", "twelve", "12.0", "13"], "number", 2)
    assert v.passed and v.agree == 2 and v.answer == "12" and v.majority == "12"
    v = verify.agreement("answer: 5", ["7", "7", "5"], "number", 2)
    assert not v.passed and v.agree == 1 and v.majority == "7" and "only 1 of 3" in v.reason
    v = verify.agreement("no answer", ["1"], "number", 1)
    assert not v.passed and v.agree == 0 and v.answer is None


def test_json_schema_and_regex_checks():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}
    assert verify.json_schema_check('{"n": 2}', schema).passed
    bad = verify.json_schema_check('{"n": 0}', schema)
    assert not bad.passed and "n" in bad.reason
    assert "not JSON" in verify.json_schema_check("{", schema).reason
    assert verify.regex_check("Final answer: 3", r"Final answer: \d+").passed
    assert not verify.regex_check(None, r"\d").passed


def test_user_function_runs_in_a_worker_with_a_timeout(tmp_path):
    (tmp_path / "checks.py").write_text(
        "import time\n"
        "def short(row):\n    return len(row['solution']['text']) < 10, 'length'\n"
        "def boom(row):\n    raise ValueError('bad row')\n"
        "def slow(row):\n    time.sleep(30)\n    return True\n"
        "def plain(row):\n    return row['attempt'] == 1\n")
    runner = verify.FunctionRunner(tmp_path)
    try:
        row = {"solution": {"text": "short"}, "attempt": 1}
        v = runner("checks:short", row, 20)
        assert v.passed and v.reason == "length"
        assert not runner("checks:short", {"solution": {"text": "x" * 20}}, 20).passed
        v = runner("checks:boom", row, 20)
        assert not v.passed and "ValueError: bad row" in v.reason
        t0 = time.time()
        v = runner("checks:slow", row, 1.0)
        assert not v.passed and "timeout" in v.reason and time.time() - t0 < 15
        assert runner("checks:plain", row, 20).passed  # a fresh worker after the timeout
    finally:
        runner.close()


# ---------------------------------------------------------------- seed data

ROWS = [{"id": f"r{i}", "question": f"q{i}", "grade": "a" if i < 6 else "b"} for i in range(9)]


def write_formats(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(ROWS)
    paths = {"jsonl": root / "rows.jsonl", "csv": root / "rows.csv", "parquet": root / "rows.parquet"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    frame.write_csv(paths["csv"])
    frame.write_parquet(paths["parquet"])
    folder = root / "folder"
    folder.mkdir()
    pl.DataFrame(ROWS[:4]).write_parquet(folder / "a.parquet")
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[4:]))
    paths["folder"] = folder
    return paths


def test_seed_files_and_folders_read_the_same_rows(tmp_path):
    for kind, path in write_formats(tmp_path).items():
        rows = read_rows(path)
        assert [r["question"] for _, r in rows] == [r["question"] for r in ROWS], kind
        assert len({rid for rid, _ in rows}) == 9


def test_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds")
    assert [r["id"] for _, r in rows] == [r["id"] for r in ROWS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:5]),
                          "test": datasets.Dataset.from_list(ROWS[5:])}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_rows(tmp_path / "dd")) == 9


def test_sampling_is_deterministic_and_stable_as_it_grows():
    rows = [(r["id"], r) for r in ROWS]
    a = sample_rows(rows, 4, False, None, seed=1, salt="s")
    assert a == sample_rows(rows, 4, False, None, seed=1, salt="s")
    assert {x[0] for x in a} < {x[0] for x in sample_rows(rows, 6, False, None, seed=1, salt="s")}
    assert a != sample_rows(rows, 4, False, None, seed=2, salt="s")
    assert len({x[0] for x in a}) == 4


def test_stratified_and_with_replacement():
    rows = [(r["id"], r) for r in ROWS]
    strat = sample_rows(rows, 4, False, "grade", seed=1, salt="s")
    assert sorted(r["grade"] for _, r in strat) == ["a", "a", "b", "b"]
    small = sample_rows(rows, 8, False, "grade", seed=1, salt="s")  # b has 3 rows: a fills the rest
    assert sorted(r["grade"] for _, r in small).count("b") == 3 and len(small) == 8
    rep = sample_rows(rows, 20, True, None, seed=1, salt="s")
    assert len(rep) == 20 and len({x[0] for x in rep}) < 20
    assert rep == sample_rows(rows, 20, True, None, seed=1, salt="s")


def test_seed_cells_carry_columns_and_ids(tmp_path):
    path = write_formats(tmp_path)["jsonl"]
    src = SeedTopics(seeds=str(path), sample=12, replace=True, id_column="id", stratify="grade")
    cells = seed_cells(src, path, seed=0, salt="t")
    assert len(cells) == len({c.id for c in cells}) == 12  # repeated rows get distinct cells
    c = cells[0]
    v = c.as_vars()
    assert v["question"] == v["seed"]["question"] and c.id.startswith(f"seed:{c.seed_id}")
    assert c.topic in ("a", "b") and v["topic"] == c.topic
    with pytest.raises(Exception, match="no column 'nope'"):
        seed_cells(SeedTopics(seeds=str(path), stratify="nope"), path, 0, "t")


def test_plan_schema_is_derived_from_the_record():
    import dataclasses

    from generator.engine.record import Record, plan_schema
    from generator.engine.run_folder import GENERATION_SCHEMA, PLAN_SCHEMA

    assert list(PLAN_SCHEMA) == [f.name for f in dataclasses.fields(Record)]
    assert list(GENERATION_SCHEMA)[:len(PLAN_SCHEMA)] == list(PLAN_SCHEMA)
    assert PLAN_SCHEMA["round"] == pl.Int32 and PLAN_SCHEMA["seed"] == pl.Int64
    assert PLAN_SCHEMA["level"] == pl.Utf8 and PLAN_SCHEMA["keywords"] == pl.List(pl.Utf8)
    assert plan_schema()["messages"] == pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
