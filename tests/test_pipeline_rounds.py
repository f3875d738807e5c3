"""The feedback loop over a pipeline (a judge's scores as each cell's quality signal), and a
rounds run's throughput counting each engine's load time once (executor reports)."""
from __future__ import annotations

import json
import random
import time

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.core.errors import RunFolderError, SpecError
from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from generator.feedback.rounds import load_rounds

WORDS = "apple river stone cloud seven music garden bridge number engine planet silver window forest".split()
STAGES = ("[{name: answer, kind: generate, template: qa}, "
          "{name: quality, kind: judge, target: answer, criteria: [{name: good, description: useful}]}]")


def judged(r) -> str:
    """Geometry answers get a 1 from the judge, the rest a 5; every answer is new text."""
    rng = random.Random(r.sampling.seed)
    if r.json_schema is not None:
        low = "Geometry" in r.messages[-1]["content"] or "Triangles" in r.messages[-1]["content"] \
            or "Circles" in r.messages[-1]["content"]
        return json.dumps({"good": {"reason": "r", "score": 1 if low else 5}})
    return " ".join(rng.choice(WORDS) for _ in range(20))


def pipeline_rounds_spec(proj, signal: str):
    return load_spec(proj / "spec.yaml", {"templates": "[]", "stages": STAGES,
                                          "rounds": "{count: 3, budget: 36, first_round_share: 0.34, "
                                                    f"embedder: hash, {signal}}}"})


def test_judge_scores_steer_the_rounds(proj, tmp_path):
    spec = pipeline_rounds_spec(proj, "signal: judge, signal_column: quality.good")
    fake = FakeBackend(responder=judged)
    res = run(spec, out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **_: fake))
    assert res.planned == res.generated == 36
    rounds = load_rounds(tmp_path / "run")
    cells = rounds[0]["yields"]["cells"]
    geo = [c for c in cells if c.startswith("Geometry")]
    other = [c for c in cells if not c.startswith("Geometry")]
    assert geo and other
    assert all(cells[c]["yield_sum"] == 0.0 for c in geo)  # a judge score of 1 yields nothing
    assert all(cells[c]["yield_sum"] > 0.0 for c in other)
    later = [h["allocation"] for h in rounds[1:]]
    per_geo = sum(a.get(c, 0) for a in later for c in geo) / len(geo)
    per_other = sum(a.get(c, 0) for a in later for c in other) / len(other)
    assert per_other > 1.5 * per_geo
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert df["final"].all() and df["quality.good"].is_not_null().all()
    assert res.manifest["pipeline"]["stages"]["quality"]["ran"] == 36


def test_signal_settings_are_checked(proj):
    with pytest.raises(SpecError, match="needs `signal_column:`"):
        pipeline_rounds_spec(proj, "signal: judge")
    spec = pipeline_rounds_spec(proj, "signal: judge, signal_column: quality.nope")
    with pytest.raises(SpecError, match=r"'quality.nope' is no judge score column; choose from quality.good"):
        run(spec, executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend()))
    with pytest.raises(SpecError, match="needs `stages:`"):
        load_spec(proj / "spec.yaml", {"rounds": "{budget: 4, signal: judge, signal_column: q.x}"})


class SlowLoad(FakeBackend):
    """A model that takes LOAD seconds to load and 10 ms per answer."""

    LOAD = 0.6

    def __init__(self):
        time.sleep(self.LOAD)
        super().__init__(responder=lambda r: " ".join(random.Random(r.sampling.seed).choice(WORDS) for _ in range(20)))
        self.load_seconds = self.LOAD

    def _one(self, r, on_result):
        time.sleep(0.01)
        return super()._one(r, on_result)


def test_rounds_throughput_counts_each_load_once(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"templates": "[{template: qa}]",
                                          "rounds": "{count: 4, budget: 40, embedder: hash}"})
    made = []
    ex = LocalExecutor(backend_factory=lambda c, **_: made.append(1) or SlowLoad())
    res = run(spec, out=tmp_path / "run", executor=ex)
    assert len(made) == 1 and res.model_calls == 40
    t = res.manifest["timings"][-1]
    assert SlowLoad.LOAD <= t["model_load_s"] < 2 * SlowLoad.LOAD  # once, not once per round
    decode = t["generate_s"] - t["model_load_s"]
    assert decode >= 40 * 0.01 * 0.9
    tokens = res.manifest["counts"]["tokens"]["completion"]
    assert t["completion_tokens_per_s"] == pytest.approx(tokens / decode, rel=0.05)
    assert t["completion_tokens_per_s"] <= tokens / (40 * 0.01) * 1.05  # at most what 10 ms per answer allows


def test_a_rounds_run_is_one_pass_of_the_core_per_round(proj, tmp_path):
    """Every stage's templates are in the manifest; the entry template edited after the rounds is
    refused as a single pass refuses it, before anything is planned or written."""
    (proj / "templates" / "review.j2").write_text("Improve this answer.\n\n{{ answer.text }}\n")
    stages = ("[{name: answer, kind: generate, template: qa}, {name: review, kind: generate, template: review}, "
              "{name: quality, kind: judge, target: review, criteria: [{name: good, description: useful}]}]")
    spec = load_spec(proj / "spec.yaml", {"templates": "[]", "stages": stages,
                                          "rounds": "{count: 2, budget: 12, embedder: hash}"})
    ex = LocalExecutor(backend_factory=lambda c, **_: FakeBackend(responder=judged))
    res = run(spec, out=tmp_path / "run", executor=ex)
    assert set(res.manifest["templates"]) == {"qa", "review"}
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["templates"] == res.manifest["templates"]
    plan = (tmp_path / "run" / "plan.parquet").read_bytes()
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("two sentences", "three sentences"))
    with pytest.raises(RunFolderError, match="template 'qa' was edited"):
        run(load_spec(proj / "spec.yaml", {"templates": "[]", "stages": stages,
                                           "rounds": "{count: 2, budget: 12, embedder: hash}"}),
            out=tmp_path / "run", executor=ex)
    assert (tmp_path / "run" / "plan.parquet").read_bytes() == plan


@pytest.mark.parametrize("rounds", [True, False])
def test_a_later_stage_template_edited_mid_run_is_refused(proj, tmp_path, rounds):
    """Only the entry stage's prompts are in the plan; a later stage's template is held to the
    hash the manifest keeps, in a single pass and in the rounds loop alike, before anything is written."""
    (proj / "templates" / "review.j2").write_text("Improve this answer.\n\n{{ answer.text }}\n")
    stages = ("[{name: answer, kind: generate, template: qa}, {name: review, kind: generate, template: review}]")
    sets = {"templates": "[]", "stages": stages, **({"rounds": "{count: 2, budget: 12, embedder: hash}"} if rounds else {})}
    ex = LocalExecutor(backend_factory=lambda c, **_: FakeBackend(responder=judged))
    run(load_spec(proj / "spec.yaml", sets), out=tmp_path / "run", executor=ex, limit=None if rounds else 6)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*.parquet")}
    (proj / "templates" / "review.j2").write_text("Improve this answer a lot.\n\n{{ answer.text }}\n")
    with pytest.raises(RunFolderError, match="template 'review' was edited since this run was planned"):
        run(load_spec(proj / "spec.yaml", sets), out=tmp_path / "run", executor=ex, limit=None if rounds else 8)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*.parquet")} == before
