"""reasoning-gym problems as seed rows (deterministic for a task, size, seed and config) and
`check: reasoning_gym` (the task's own scorer), on the scripted backend; one-line errors; the
missing extra named in one line."""
from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.core.errors import MissingExtra, SpecError
from generator.engine.executors.local import LocalExecutor
from generator.engine.pipeline.checks import gym_check
from generator.engine.pipeline.execute import compile_spec
from generator.engine.planner import resolve_spec
from generator.export.dataset import ExportOptions, export_run
from generator.testing.fake import FakeBackend
from helpers import importorskip_ci

rg = importorskip_ci("reasoning_gym")

SPEC = """name: g
seed: 3
topics:
  - seeds:
      reasoning_gym:
        task: {task}
        size: 40
        seed: {seed}
        config: {{min_terms: 2, max_terms: 3}}
    sample: 8
models:
  - {{name: m}}
sampling: {{max_tokens: 64}}
run: {{retries: 0}}
stages:
  - name: hard
    kind: difficulty
    template: solve
    check: reasoning_gym
    k: 4
    keep: [0.25, 0.75]
"""
SOLVE = "---\nname: solve\nvariables: [question]\n---\nSolve: {{ question }}"


def project(tmp_path: Path, task: str = "basic_arithmetic", seed: int = 1) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    (tmp_path / "templates" / "solve.j2").write_text(SOLVE)
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.format(task=task, seed=seed))
    return p


def problems(seed: int) -> list[dict]:
    ds = rg.create_dataset("basic_arithmetic", size=40, seed=seed, min_terms=2, max_terms=3)
    return [ds[i] for i in range(40)]


def test_seed_rows_are_the_tasks_problems_and_deterministic_for_a_seed(tmp_path):
    cells = resolve_spec(load_spec(project(tmp_path))).cells
    again = resolve_spec(load_spec(project(tmp_path))).cells
    (tmp_path / "other").mkdir()
    other = resolve_spec(load_spec(project(tmp_path / "other", seed=2))).cells
    rows = [dict(c.row) for c in cells]
    assert len(rows) == 8 and rows == [dict(c.row) for c in again]
    assert [r["question"] for r in rows] != [dict(c.row)["question"] for c in other]
    truth = problems(1)
    for c, r in zip(cells, rows):
        i = int(c.seed_id.rsplit(":", 1)[1])
        assert c.seed_id == f"basic_arithmetic:1:{i}" and c.topic == "basic_arithmetic"
        assert r["question"] == truth[i]["question"] and r["answer"] == truth[i]["answer"]
        assert r["metadata"]["source_index"] == i and set(r) == {"question", "answer", "metadata"}


def test_the_check_scores_a_right_and_a_wrong_answer(tmp_path):
    cell = resolve_spec(load_spec(project(tmp_path))).cells[0]
    answer = dict(cell.row)["answer"]
    good = gym_check(f"Let me see.\n<answer>{answer}</answer>", cell, "answer", 1.0)
    assert good.passed and good.answer == answer and good.reference == answer
    bad = gym_check(f"<answer>{int(answer) + 7}</answer>", cell, "answer", 1.0)
    assert not bad.passed and bad.reference == answer and "score 0" in bad.reason
    assert gym_check(f"Final answer: {answer}", cell, "answer", 1.0).passed  # the last line, its label dropped
    assert not gym_check("", cell, "answer", 1.0).passed


def test_a_run_keeps_the_problems_in_the_band_and_exports_their_answers(tmp_path):
    answers = {p["question"]: p["answer"] for p in problems(1)}
    made = []

    def respond(r):  # right for seeds not divisible by 3
        q = r.messages[-1]["content"].removeprefix("Solve: ")
        return f"<answer>{answers[q] if r.sampling.seed % 3 else 'nine'}</answer>"

    def factory(cfg, **_):
        made.append(FakeBackend(model=cfg.name, responder=respond))
        return made[-1]

    res = run(load_spec(project(tmp_path)), out=tmp_path / "run", executor=LocalExecutor(backend_factory=factory),
              score=False)
    tries: dict[str, list[bool]] = {}
    for c in (c for b in made for c in b.calls):
        tries.setdefault(c.id.split("/")[0], []).append(c.sampling.seed % 3 != 0)
    want = {rid: sum(t) / len(t) for rid, t in tries.items()}
    finals = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet").filter(pl.col("final"))
    assert finals.height == 8
    for row in finals.iter_rows(named=True):
        assert row["hard.pass_rate"] == want[row["id"]]
        assert (row["status"] == "ok") == (0.25 <= want[row["id"]] <= 0.75)
    prov = res.manifest["provenance"]["seed_data"][0]
    assert prov["reasoning_gym"]["task"] == "basic_arithmetic" and prov["reasoning_gym"]["seed"] == 1
    assert prov["reasoning_gym"]["version"]
    kept = finals.filter(pl.col("status") == "ok")
    assert 0 < kept.height < 8  # the seeds put some problems in the band and some out
    export_run(tmp_path / "run", tmp_path / "rl", ExportOptions(layout="rl", test_ratio=0.0))
    rl = pl.read_parquet(next((tmp_path / "rl").rglob("*.parquet")))
    assert sorted(rl["id"]) == sorted(kept["id"])
    for row in rl.iter_rows(named=True):
        q = row["prompt"][-1]["content"].removeprefix("Solve: ")
        assert row["reward_model"]["ground_truth"] == answers[q] and row["verifier"] == "hard:reasoning_gym:answer"


def line_of(spec: Path, text: str) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if text in line)


def test_an_unknown_task_is_one_line_at_the_source(tmp_path):
    spec = project(tmp_path, task="basic_arithmetc")
    with pytest.raises(SpecError, match="reasoning_gym has no task 'basic_arithmetc' .did you mean basic_arithmetic"):
        compile_spec(resolve_spec(load_spec(spec)))
    spec = project(tmp_path)
    spec.write_text(spec.read_text().replace("min_terms: 2", "min_termz: 2"))
    with pytest.raises(SpecError, match="refuses config") as err:
        resolve_spec(load_spec(spec))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{spec}:{line_of(spec, 'reasoning_gym:')}:")


def test_without_the_package_one_line_names_the_extra(tmp_path, monkeypatch):
    from generator.library import reasoning_gym

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # importing it now fails as if not installed
    reasoning_gym.dataset.cache_clear()  # no dataset built earlier in this process answers for it
    with pytest.raises(MissingExtra, match=r"needs the 'reasoning_gym' package, part of synthgen's `reasoning` "
                                           r"extra; install it with pip install 'synthgen\[reasoning\]'"):
        resolve_spec(load_spec(project(tmp_path)))
