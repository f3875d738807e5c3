"""Every shipped spec validates, renders every template it uses, and runs on the embedded model."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from generator.engine.executors.local import LocalExecutor
from generator.library.catalog import builtin_root
from generator.engine.planner import expand, plan_spec, resolve_spec, validate
from generator import run as run_spec
from generator.config.spec import load_spec

SPECS = sorted(p for p in builtin_root("specs").glob("*.yaml"))


def test_there_are_shipped_specs():
    names = {p.stem for p in SPECS}
    assert {"math", "tiny", "textbook", "instruct", "ladder_topic", "ladder_topic_style",
            "ladder_topic_style_persona", "ladder_multi_topic_style_persona"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_validates_and_every_template_renders(path: Path):
    spec = load_spec(path)
    resolved = resolve_spec(spec)
    validate(resolved)
    # render enough records that every template of the spec is used at least once, on real cells
    records = expand(resolved, counts={c.id: max(4, spec.generations_per_topic) for c in resolved.cells})
    used = {r.template for r in records}
    assert used == {t.name for t, _ in resolved.templates}, "some template was never drawn"
    for r in records:
        assert r.messages[-1]["content"].strip() and "{{" not in r.prompt and "{%" not in r.prompt


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_plan_is_deterministic(path: Path):
    a = [r.to_row() for r in plan_spec(load_spec(path))[1]]
    b = [r.to_row() for r in plan_spec(load_spec(path))[1]]
    assert a == b and len({r["id"] for r in a}) == len(a)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SPECS if "\nstages:" not in p.read_text()],  # pipelines:
                         ids=lambda p: p.stem)                                        # test_pipeline_e2e
def test_spec_runs_end_to_end_with_limit(path: Path, shared_backend_factory, tmp_path):
    spec = load_spec(path, {"sampling.max_tokens": "48"})
    for m in spec.models:
        m.sampling.max_tokens = None  # the override applies to every model of the spec
    spec.scoring = None
    res = run_spec(spec, out=tmp_path / "run", limit=2, executor=LocalExecutor(backend_factory=shared_backend_factory))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert res.generated == df.height == 2
    assert set(df["status"].unique()) <= {"ok", "truncated", "empty", "invalid_json", "error"}
    assert (df["completion_tokens"] > 0).any()
