"""Pipeline runs on the fake backend (control flow only): rejection sampling keeps every attempt,
each record ends exactly once, per-stage seeds are deterministic, several models stream at once,
and a run killed after any number of answers resumes paying only for answers never received."""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from generator import run
from generator.config.spec import load_spec
from generator.testing.fake import FakeBackend
from generator.engine.executors.local import LocalExecutor
from helpers import cache_keys

TEMPLATES = {
    "gen.j2": "Write one short problem about {{ subtopic }}.\n",
    "solve.j2": "Solve and end with 'Final answer: N'.\n\n{{ problem.text }}\n",
}
SPEC = """name: p
seed: {seed}
topics:
  - items: [Fractions, Decimals, Percentages, Ratios]
generations_per_topic: 2
models:
  - name: m1
  - name: m2
    share: 0.0001
sampling: {{max_tokens: 32}}
run: {{shard_size: 3, retries: 1}}
stages:
  - {{name: problem, kind: generate, template: gen}}
  - {{name: solution, kind: generate, template: solve, output: true}}
  - {{name: resolve, kind: generate, template: solve, n: 3, model: m2}}
  - name: check
    kind: verify
    check: agreement
    target: solution
    against: resolve
    min_agree: 2
    on_reject: {{regenerate: problem, max_attempts: {attempts}}}
  - name: quality
    kind: judge
    target: solution
    criteria:
      - {{name: correct, description: right answer}}
      - {{name: clear, description: easy to follow}}
  - {{name: keep, kind: filter, expr: "quality.correct >= 3 or check.agree == 3"}}
"""


def answer(req) -> str:
    """Deterministic: solves answer by the seed's parity, the judge scores by the seed."""
    if req.json_schema is not None:
        s = req.sampling.seed
        return json.dumps({"correct": {"reason": "r", "score": 1 + s % 5}, "clear": {"reason": "r", "score": 4}})
    text = req.messages[-1]["content"]
    if text.startswith("Solve"):
        return f"Working.\nFinal answer: {req.sampling.seed % 2}"
    return f"Problem {req.sampling.seed % 97} about {text[31:45]}"


def project(tmp_path: Path, seed: int = 3, attempts: int = 3) -> Path:
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name, text in TEMPLATES.items():
        (tmp_path / "templates" / name).write_text(text)
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.format(seed=seed, attempts=attempts))
    return p


class Fakes:
    def __init__(self, cls=FakeBackend, **kw):
        self.made: dict[str, FakeBackend] = {}
        self.cls, self.kw = cls, kw

    def __call__(self, cfg, **_):
        self.made[cfg.name] = self.cls(model=cfg.name, responder=answer, **self.kw)
        return self.made[cfg.name]

    def calls(self) -> list:
        return [r for b in self.made.values() for r in b.calls]


def run_once(spec_path: Path, out: Path, fakes: Fakes | None = None):
    fakes = fakes or Fakes()
    res = run(load_spec(spec_path), out=out, executor=LocalExecutor(backend_factory=fakes), score=False)
    return res, fakes


def generations(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "generations" / "*.parquet")


def test_every_attempt_is_kept_and_every_record_ends_once(tmp_path):
    res, fakes = run_once(project(tmp_path), tmp_path / "run")
    df = generations(tmp_path / "run")
    plan = pl.read_parquet(tmp_path / "run" / "plan.parquet")
    finals = df.filter(pl.col("final"))
    assert sorted(finals["id"].to_list()) == sorted(plan["id"].to_list())  # exactly once each
    assert res.generated == plan.height == 8
    for rid, rows in df.group_by("id"):
        rows = rows.sort("attempts")
        n = rows.height
        assert rows["attempts"].to_list() == list(range(1, n + 1))  # no attempt lost
        assert rows["final"].to_list() == [False] * (n - 1) + [True]
        assert set(rows["status"][:-1]) <= {"rejected"}
        for r in rows.head(n - 1).iter_rows(named=True):
            assert r["decided_by"] == "check" and "re-solves agree" in r["reason"]
            assert r["check.passed"] is False and r["check.agree"] < 2
        last = rows.row(n - 1, named=True)
        if last["status"] == "ok":
            assert last["check.agree"] >= 2 and last["decided_by"] == "keep"
            assert last["text"] == last["solution.text"] and last["quality.correct"] is not None
        else:
            assert last["status"] == "rejected" and last["text"] == ""
            assert n == 3 or last["decided_by"] == "keep"
    # a regeneration re-runs `problem` and everything after it with fresh seeds
    multi = df.filter(pl.col("attempts") == 2)
    assert multi.height, "the seeds chosen should force some rejections"
    first = df.filter(pl.col("attempts") == 1).select("id", pl.col("problem.seed").alias("s1"))
    joined = multi.join(first, on="id")
    assert (joined["problem.seed"] != joined["s1"]).all()
    assert (joined["problem.attempt"] == 2).all()
    # manifest accounting agrees with the rows
    m = res.manifest
    assert m["counts"]["generated"] == 8 and sum(m["counts"]["status"].values()) == 8
    stages = m["pipeline"]["stages"]
    assert stages["check"]["ran"] == df.height - df.filter(pl.col("check.status").is_null()).height
    assert stages["check"]["rejected"] == df.filter((pl.col("decided_by") == "check") &
                                                    (pl.col("status") == "rejected")).height
    assert stages["problem"]["ran"] == df.height and stages["problem"]["pass_rate"] == 1.0
    assert m["pipeline"]["rows"] == df.height
    # model calls: one per request, none repeated
    calls = fakes.calls()
    assert res.model_calls == len(calls) == len({c.id for c in calls})
    assert {c.id.split("/")[1] for c in fakes.made["m2"].calls} == {"resolve"}


def test_requests_are_deterministic_per_stage(tmp_path):
    p = project(tmp_path)
    _, a = run_once(p, tmp_path / "a")
    _, b = run_once(p, tmp_path / "b")
    key = lambda r: (r.id, r.sampling.seed, tuple(m["content"] for m in r.messages))  # noqa: E731
    assert sorted(map(key, a.calls())) == sorted(map(key, b.calls()))
    assert generations(tmp_path / "a").sort("id", "attempts").drop("^.*tokens$").equals(
        generations(tmp_path / "b").sort("id", "attempts").drop("^.*tokens$"))
    seeds = [r.sampling.seed for r in a.calls()]
    assert len(set(seeds)) == len(seeds)  # every request its own seed (samples, attempts, stages)
    other = tmp_path / "other"
    other.mkdir()
    _, c = run_once(project(other, seed=4), other / "run")
    assert {r.sampling.seed for r in c.calls()} != set(seeds)


def test_max_attempts_one_rejects_without_regenerating(tmp_path):
    res, fakes = run_once(project(tmp_path, attempts=1), tmp_path / "run")
    df = generations(tmp_path / "run")
    assert df.height == 8 and df["final"].all() and (df["attempts"] == 1).all()
    assert res.statuses.get("rejected", 0) == df.filter(pl.col("status") == "rejected").height > 0


def test_failed_generation_after_retries_ends_the_record(tmp_path):
    p = project(tmp_path)
    plan_ids = None

    class Broken(FakeBackend):
        def _answer(self, r):
            if "/solution/" in r.id and plan_ids and r.id.split("/")[0] == plan_ids[0]:
                return "   ", "stop"  # always empty: retried, then the record ends `empty`
            return super()._answer(r)

    from generator import plan as plan_records

    plan_ids = [r.id for r in plan_records(load_spec(p))]
    res, fakes = run_once(p, tmp_path / "run", Fakes(cls=Broken))
    df = generations(tmp_path / "run")
    row = df.filter(pl.col("id") == plan_ids[0]).row(0, named=True)
    assert row["final"] and row["status"] == "empty" and row["decided_by"] == "solution"
    assert row["solution.tries"] == 2  # run.retries: 1
    assert row["check.status"] is None and row["quality.status"] is None  # nothing that reads it ran
    tried = [c for c in fakes.calls() if c.id.startswith(f"{plan_ids[0]}/solution/")]
    assert [c.id.rsplit("#", 1)[1] for c in tried] == ["1", "2"]
    assert tried[0].sampling.seed + 1 == tried[1].sampling.seed


class Killed(BaseException):
    """Stands in for SIGKILL."""


def dying(after: int):
    answered = []  # over both models: the process dies after `after` answers in all

    class Dying(FakeBackend):
        def _one(self, r, on_result):
            if len(answered) >= after:
                raise Killed()
            answered.append(r.id)
            return super()._one(r, on_result)
    return Dying


@pytest.mark.parametrize("after", [0, 1, 5, 13, 29, 44, 60])
def test_killed_run_resumes_paying_only_for_unanswered_requests(tmp_path, after):
    p = project(tmp_path)
    _, full = run_once(p, tmp_path / "ref")
    needed = {r.payload_hash(m): r for m, b in full.made.items() for r in b.calls}
    assert len(needed) > 60
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_once(p, out, Fakes(cls=dying(after)))
    cached = cache_keys(out)
    assert cached <= set(needed)
    res, again = run_once(p, out)
    paid = [r.payload_hash(m) for m, b in again.made.items() for r in b.calls]
    assert sorted(paid) == sorted(set(needed) - cached)  # exactly the answers never received
    assert res.model_calls == len(paid)
    df, ref = generations(out), generations(tmp_path / "ref")
    assert df.filter(pl.col("final")).height == 8 and df.filter(pl.col("final"))["id"].n_unique() == 8
    cols = [c for c in ref.columns if not re.search(r"tokens$", c)]
    assert df.sort("id", "attempts").select(cols).equals(ref.sort("id", "attempts").select(cols))


def test_rerun_of_a_finished_pipeline_calls_nothing(tmp_path):
    p = project(tmp_path)
    run_once(p, tmp_path / "run")
    res, fakes = run_once(p, tmp_path / "run")
    assert res.model_calls == 0 and not fakes.made
    assert res.generated == 8


def test_compare_judge_picks_chosen_and_rejected(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "gen.j2").write_text("Ask about {{ subtopic }}.\n")
    (tmp_path / "templates" / "answer.j2").write_text("{{ instruction.text }}\n")
    p = tmp_path / "pref.yaml"
    p.write_text("""name: pref
topics:
  - items: [Fractions, Decimals, Percentages]
stages:
  - {name: instruction, kind: generate, template: gen}
  - {name: a, kind: generate, template: answer, sampling: {temperature: 0.2}}
  - {name: b, kind: generate, template: answer, sampling: {temperature: 1.2}}
  - {name: pick, kind: judge, compare: [a, b]}
""")

    def pick(req):
        if req.json_schema is not None:
            return json.dumps({"reason": "shorter", "better": "AB"[req.sampling.seed % 2]})
        return f"reply {req.sampling.temperature} {req.sampling.seed}"

    fake = FakeBackend(model="smollm2-135m", responder=pick)
    run(load_spec(p), out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **k: fake), score=False)
    df = generations(tmp_path / "run")
    assert df.height == 3 and (df["status"] == "ok").all()
    for r in df.iter_rows(named=True):
        assert {r["pick.chosen"], r["pick.rejected"]} == {r["a.text"], r["b.text"]}
        assert r["pick.chosen"] == r[f"{r['pick.winner']}.text"]
        assert r["a.prompt"] == r["instruction.text"]
    from generator.mix.preference import write_preference

    m = write_preference([tmp_path / "run"], tmp_path / "mix")
    rows = [json.loads(x) for x in (tmp_path / "mix" / "preference.jsonl").read_text().splitlines()]
    assert m["rows"] == len(rows) == 3
    assert all(set(r) == {"id", "prompt", "chosen", "rejected", "run"} for r in rows)


def test_a_stage_that_cannot_render_ends_the_record_not_the_run(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "q.j2").write_text(
        "---\noutput_schema:\n  type: object\n  properties: {question: {type: string}}\n  required: [question]\n"
        "---\nA question about {{ subtopic }} as JSON.\n")
    (tmp_path / "templates" / "a.j2").write_text("Answer: {{ problem.json.question }}\n")
    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntopics:\n  - items: [Fractions, Decimals]\nrun: {retries: 0}\nstages:\n"
                 "  - {name: problem, kind: generate, template: q}\n"
                 "  - {name: answer, kind: generate, template: a}\n")
    # valid JSON without the key the next template reads (a backend without structured decoding)
    fake = FakeBackend(responder=lambda r: '{"other": 1}' if r.json_schema else "fine")
    res = run(load_spec(p), out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **_: fake),
              score=False)
    df = generations(tmp_path / "run")
    assert res.generated == 2 and (df["status"] == "error").all() and (df["decided_by"] == "answer").all()
    assert df["reason"].str.contains("cannot render").all()


@pytest.mark.parametrize("max_tokens,tries", [(200, 2), (40, 1)])
def test_a_cut_structured_stage_answer_is_retried_when_its_schema_fits_the_budget(tmp_path, max_tokens, tries):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "q.j2").write_text(
        "---\noutput_schema:\n  type: object\n  additionalProperties: false\n"
        "  properties: {question: {type: string, maxLength: 200}}\n  required: [question]\n"
        "---\nA question about {{ subtopic }} as JSON.\n")
    p = tmp_path / "s.yaml"
    p.write_text(f"name: s\ntopics:\n  - items: [Fractions]\nsampling: {{max_tokens: {max_tokens}}}\n"
                 "run: {retries: 2}\nstages:\n  - {name: problem, kind: generate, template: q}\n")

    class Cut(FakeBackend):
        def _answer(self, r):  # the first try runs into a loop of digits and is cut off
            return ('{"question": "1 1 1 1 1 1 1<truncated>', "length") if r.id.endswith("#1") else super()._answer(r)

    fake = Cut()
    run(load_spec(p), out=tmp_path / "run", executor=LocalExecutor(backend_factory=lambda c, **_: fake), score=False)
    row = generations(tmp_path / "run").row(0, named=True)
    assert row["problem.tries"] == tries and len(fake.calls) == tries
    assert row["status"] == ("ok" if tries == 2 else "truncated")


def test_usage_ledger_counts_every_call_per_stage_and_model(tmp_path):
    from generator.export.usage import compute_usage

    res, fakes = run_once(project(tmp_path), tmp_path / "run")
    u = compute_usage(tmp_path / "run")
    want: dict[tuple[str, str], int] = {}
    for model, b in fakes.made.items():
        for r in b.calls:
            key = (model, r.id.split("/")[1])
            want[key] = want.get(key, 0) + 1
    got = {(r["model"], r["stage"]): r["requests"] for r in u["by"]["stage"] if r["requests"]}
    assert got == want and u["total"]["requests"] == res.model_calls == len(fakes.calls())
    # a rerun of the finished run calls nothing and replays nothing: no second session appears
    run_once(project(tmp_path), tmp_path / "run")
    assert len(compute_usage(tmp_path / "run")["sessions"]) == 1


