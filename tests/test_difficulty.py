"""`kind: difficulty`: problems kept when their pass rate over k tries lies in a band (one solver),
or when a strong solver passes and a weak one's rate is in the band (two), on the scripted backend;
the band and the rates in the manifest and the card; one-line errors at the stage's line."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.core.errors import SpecError
from generator.engine.executors.local import LocalExecutor
from generator.engine.pipeline.execute import compile_spec
from generator.engine.planner import resolve_spec
from generator.export.dataset import ExportOptions, export_run
from generator.testing.fake import FakeBackend

TEMPLATES = {
    "gen.j2": "---\nname: gen\n---\nWrite a problem about {{ subtopic }}.",
    "solve.j2": "---\nname: solve\nvariables: [problem]\n---\nSolve: {{ problem.text }}",
}
SPEC = """name: d
seed: 5
topics:
  - items: [Fractions, Decimals, Ratios, Percentages, Areas]
generations_per_topic: 2
models:
  - {{name: strong}}
  - {{name: weak, share: 0.0001}}
sampling: {{max_tokens: 64}}
run: {{retries: 0}}
stages:
  - {{name: problem, kind: generate, template: gen, model: strong}}
  - name: hard
    kind: difficulty
    template: solve
    reference: "{{{{ problem.text }}}}"
    k: 6
    keep: [{lo}, {hi}]
{extra}"""


def project(tmp_path: Path, lo: float = 0.3, hi: float = 0.7, extra: str = "    solver: strong\n") -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(text)
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.format(lo=lo, hi=hi, extra=extra))
    return p


def right(model: str, seed: int) -> bool:
    """Whether a try is right: the strong model for 2 of 3 seeds, the weak one for 1 of 4."""
    return seed % 3 != 0 if model == "strong" else seed % 4 == 0


def run_fake(spec: Path, out: Path):
    made = []

    def factory(cfg, **_):
        def respond(r):
            if r.messages[-1]["content"].startswith("Solve"):
                return f"Final answer: {1 if right(cfg.name, r.sampling.seed) else 2}"
            return "A problem. Final answer: 1"

        made.append(FakeBackend(model=cfg.name, responder=respond))
        return made[-1]

    res = run(load_spec(spec), out=out, executor=LocalExecutor(backend_factory=factory), score=False)
    return res, [(b.model, c) for b in made for c in b.calls]


def rates_from_calls(calls, stage: str) -> dict[str, float]:
    """Each record's pass rate as the requests it sent make it: the share of right tries."""
    tries: dict[str, list[bool]] = {}
    for model, c in calls:
        rid, name, _, _ = c.id.split("#")[0].split("/")
        if name == stage:
            tries.setdefault(rid, []).append(right(model, c.sampling.seed))
    return {rid: round(sum(t) / len(t), 4) for rid, t in tries.items()}


def test_the_band_keeps_exactly_the_problems_whose_rate_is_in_it(tmp_path):
    res, calls = run_fake(project(tmp_path), tmp_path / "run")
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    finals = df.filter(pl.col("final"))
    want = rates_from_calls(calls, "hard_solve")
    assert len(want) == 10 and all(len([c for m, c in calls if f"/hard_solve/" in c.id and c.id.startswith(r)]) == 6
                                   for r in want)
    assert {m for m, c in calls if "/hard_solve/" in c.id} == {"strong"}
    inside = {r for r, x in want.items() if 0.3 <= x <= 0.7}
    assert 0 < len(inside) < 10  # the seeds put some problems in the band and some out
    for row in finals.iter_rows(named=True):
        assert row["hard.pass_rate"] == want[row["id"]]
        assert (row["status"] == "ok") == (row["id"] in inside), row
        if row["id"] not in inside:
            assert row["decided_by"] == "hard_band" and row["hard_band.passed"] is False
    # the rows of a kept problem are its correct tries (the output stage is the tries)
    ok = df.filter(pl.col("status") == "ok")
    assert set(ok["id"]) == inside and (ok["text"] == "Final answer: 1").all()
    section = res.manifest["pipeline"]["difficulty"]["hard"]
    assert section["band"] == [0.3, 0.7] and section["k"] == 6 and section["solvers"] == {"hard": "strong"}
    assert section["problems"] == 10 and section["in_band"] == len(inside)
    spread: dict[str, int] = {}
    for x in want.values():
        spread[f"{x:g}"] = spread.get(f"{x:g}", 0) + 1
    assert section["pass_rates"] == {"hard": spread}
    # the card says what was kept; the rl layout has one problem a row with its rate
    export_run(tmp_path / "run", tmp_path / "rl", ExportOptions(layout="rl", test_ratio=0.0))
    card = (tmp_path / "rl" / "README.md").read_text()
    assert f"kept when pass rate in [0.3, 0.7]: {len(inside)} of 10 problems" in card
    rl = pl.read_parquet(tmp_path / "rl" / "data" / "*.parquet") if (tmp_path / "rl" / "data").exists() else \
        pl.read_parquet(next((tmp_path / "rl").rglob("*.parquet")))
    assert sorted(rl["id"]) == sorted(inside) and rl["verifier"].unique().to_list() == ["hard:reference:number"]
    assert all(p[-1]["content"].startswith("Solve") for p in rl["prompt"].to_list())
    assert dict(zip(rl["id"], rl["pass_rate"])) == {r: want[r] for r in inside}


def test_two_solvers_keep_what_the_strong_passes_and_the_weak_mostly_fails(tmp_path):
    spec = project(tmp_path, 0.0, 0.2, "    solvers: [strong, weak]\n    strong_min: 0.6\n")
    res, calls = run_fake(spec, tmp_path / "run")
    strong, weak = rates_from_calls(calls, "hard_solve"), rates_from_calls(calls, "hard_weak_solve")
    assert {m for m, c in calls if "/hard_weak_solve/" in c.id} == {"weak"}
    keep = {r for r in strong if strong[r] >= 0.6 and 0.0 <= weak[r] <= 0.2}
    assert 0 < len(keep) < 10
    finals = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet").filter(pl.col("final"))
    for row in finals.iter_rows(named=True):
        assert row["hard.pass_rate"] == strong[row["id"]] and row["hard_weak.pass_rate"] == weak[row["id"]]
        assert (row["status"] == "ok") == (row["id"] in keep)
    section = res.manifest["pipeline"]["difficulty"]["hard"]
    assert section["solvers"] == {"hard": "strong", "hard_weak": "weak"} and section["strong_min"] == 0.6
    assert section["in_band"] == len(keep)


def test_the_filter_form_still_works_beside_it(tmp_path):
    """A verify stage with keep: and a filter on its pass_rate (the form before `kind: difficulty`)."""
    spec = tmp_path / "spec.yaml"
    project(tmp_path)
    spec.write_text(spec.read_text().split("  - name: hard")[0] + """  - {name: solve, kind: generate, template: solve, n: 6, model: strong}
  - {name: check, kind: verify, check: reference, target: solve, reference: "{{ problem.text }}", keep: all_correct,
     min_correct: 0}
  - {name: band, kind: filter, expr: "check.pass_rate >= 0.3 and check.pass_rate <= 0.7"}
""")
    _, calls = run_fake(spec, tmp_path / "run")
    want = rates_from_calls(calls, "solve")
    finals = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet").filter(pl.col("final"))
    assert {r["id"] for r in finals.iter_rows(named=True) if r["status"] == "ok"} == \
        {r for r, x in want.items() if 0.3 <= x <= 0.7}
    assert finals.filter(pl.col("check.pass_rate") == 0)["decided_by"].to_list() == \
        ["band"] * sum(x == 0 for x in want.values())  # min_correct: 0: none correct is the filter's to reject


def line_of(spec: Path, text: str) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("lo,hi,extra,where,match", [
    (0.8, 0.2, "", "keep:", r"`keep: \[0.8, 0.2\]` is no band of pass rates"),
    (0.2, 0.8, "    solver: nobody\n", "solver:", "model 'nobody' is not in `models:`"),
    (0.2, 0.8, "    solvers: [strong, nobody]\n", "solvers:", "model 'nobody' is not in `models:`"),
    (0.2, 0.8, "    solver: strong\n    solvers: [strong, weak]\n", "- name: hard", "`solver:` or `solvers: "),
    (0.2, 0.8, "  - {name: hard_band, kind: filter, expr: 'true'}\n", "name: hard_band",
     "stage name 'hard_band'.* is used twice"),
    (0.2, 0.8, "    check: reasoning_gym\n", "check: reasoning_gym", "the spec has none; add `- seeds: "),
])
def test_errors_are_one_line_at_the_stage(tmp_path, lo, hi, extra, where, match):
    spec = project(tmp_path, lo, hi, extra)
    with pytest.raises(SpecError, match=match) as err:
        compile_spec(resolve_spec(load_spec(spec)))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{spec}:{line_of(spec, where)}:"), text


def test_the_shipped_rl_math_compiles_to_tries_check_and_band():
    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "rl_math.yaml")
    p = compile_spec(resolve_spec(spec))
    assert p.order == ["problem", "difficulty_solve", "difficulty", "difficulty_band"]
    assert p.nodes["difficulty_solve"].cfg.n == 8 and p.output == "difficulty_solve"
    assert p.nodes["difficulty_band"].cfg.expr == "difficulty.pass_rate >= 0.2 and difficulty.pass_rate <= 0.8"
