"""The rounds loop end to end: fake backend (fast) and one slow run on the embedded model."""
from __future__ import annotations

import json
import random

import polars as pl
import pytest
from click.testing import CliRunner

from generator.testing.fake import FakeBackend
from generator.core.errors import RunFolderError
from generator.engine.executors.local import LocalExecutor
from generator.feedback.rounds import load_rounds, run_rounds
from generator import run as run_spec
from generator.config.spec import load_spec
from generator.feedback.yields import is_refusal, row_flags
from generator.cli.main import main

WORDS = ("apple river stone cloud seven music garden bridge number engine planet silver window forest ocean "
         "candle mirror rabbit violin tower harbor lantern meadow copper falcon pepper quartz saddle thunder "
         "velvet walnut yellow zebra anchor basket cactus dragon").split()
REPEAT = "The same sentence about shapes is repeated here every single time without any change at all."


def responder(r) -> str:
    """Geometry cells repeat one sentence; Subtraction refuses; the rest vary with the request seed."""
    p = r.messages[-1]["content"]
    if "Triangles" in p or "Circles" in p:
        return REPEAT
    if "Subtraction" in p:
        return "I'm sorry, but I cannot help with that request."
    rng = random.Random(r.sampling.seed)
    return " ".join(rng.choice(WORDS) for _ in range(24))


def executor(fake):
    return LocalExecutor(backend_factory=lambda cfg, **_: fake)


def rounds_spec(proj, rounds: str, **over):
    return load_spec(proj / "spec.yaml", {"rounds": rounds, "templates": "[{template: qa}]", **over})


def test_loop_moves_budget_away_from_repetitive_and_flagged_cells(proj, tmp_path):
    spec = rounds_spec(proj, "{count: 4, budget: 60, first_round_share: 0.25}")
    res = run_spec(spec, out=tmp_path / "run", executor=executor(FakeBackend(responder=responder)))
    assert res.planned == res.generated == 60  # budget spent exactly
    rounds = load_rounds(tmp_path / "run")
    assert [h["round"] for h in rounds] == [1, 2, 3, 4]
    assert sum(h["spent"] for h in rounds) == 60 and rounds[0]["spent"] == 15
    assert rounds[0]["allocation"] == {c: 3 for c in rounds[0]["active"]}  # round 1: by weight
    bad = ("Geometry / Triangles", "Geometry / Circles", "Arithmetic / Subtraction")
    good = ("Arithmetic / Addition", "Arithmetic / Multiplication")
    later = [h["allocation"] for h in rounds[1:]]
    assert sum(a[c] for a in later for c in good) > 3 * sum(a[c] for a in later for c in bad)
    y1 = rounds[0]["yields"]
    assert y1["cells"]["Arithmetic / Subtraction"]["flags"] == {"refused": 3}
    assert y1["cells"]["Arithmetic / Subtraction"]["yield_sum"] == 0.0
    assert y1["cells"]["Geometry / Circles"]["near_dup"] >= 2
    assert y1["flags"]["refused"] == 3 and set(y1["by"]) == {"template", "model", "persona"}
    caps = [d for h in rounds for d in h["decisions"] if d["action"] == "cap"]
    assert {d["cell"] for d in caps} >= {"Geometry / Triangles", "Geometry / Circles"}
    for h in rounds:
        for d in h["decisions"]:
            assert set(d) == {"round", "cell", "action", "amount", "reason"}
    # the manifest and plan say the same
    plan = pl.read_parquet(tmp_path / "run" / "plan.parquet")
    for h in rounds:
        got = dict(plan.filter(pl.col("round") == h["round"]).group_by("topic_id").len().iter_rows())
        assert got == {c: n for c, n in h["allocation"].items() if n}
    assert res.manifest["rounds"]["finished"] == 4 and res.manifest["rounds"]["spent"] == 60


def test_generation_indices_continue_and_earlier_records_stay(proj, tmp_path):
    spec = rounds_spec(proj, "{count: 3, budget: 30}")
    run_rounds(spec, out=tmp_path / "run", executor=executor(FakeBackend(responder=responder)))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    for (cell,), g in df.group_by(["topic_id"]):
        gens = sorted(g["generation"].to_list())
        assert gens == list(range(len(gens))), cell
    assert df["id"].n_unique() == 30


def test_resume_continues_from_last_finished_round(proj, tmp_path):
    spec = rounds_spec(proj, "{count: 3, budget: 30}", **{"run.shard_size": "2"})
    run = tmp_path / "run"
    run_rounds(spec, out=run, executor=executor(FakeBackend(responder=responder)))
    before = load_rounds(run)
    # interrupt round 3: its JSON and one of its shards are gone
    (run / "rounds" / "round-003.json").unlink()
    shard = sorted((run / "generations").glob("part-003-*.parquet"))[0]
    lost = pl.read_parquet(shard)
    shard.unlink()
    fake = FakeBackend(responder=responder)
    res = run_rounds(spec, out=run, executor=executor(fake))
    # only the lost shard is regenerated (its answers replay from the request cache: no model call)
    assert fake.calls == [] and res.generated == 30
    assert pl.read_parquet(shard).select("id", "text").equals(lost.select("id", "text"))
    after = load_rounds(run)
    assert [h["allocation"] for h in after] == [h["allocation"] for h in before]
    # a finished run resumes as a no-op
    again = FakeBackend(responder=responder)
    run_rounds(spec, out=run, executor=executor(again))
    assert again.calls == []
    # re-deriving a round from scratch (no allocation file) gives the same allocation
    for p in (run / "rounds").glob("round-003*"):
        p.unlink()
    for p in (run / "generations").glob("part-003-*.parquet"):
        p.unlink()
    run_rounds(spec, out=run, executor=executor(FakeBackend(responder=responder)))
    assert load_rounds(run)[2]["allocation"] == before[2]["allocation"]
    with pytest.raises(RunFolderError, match="different spec"):
        run_rounds(rounds_spec(proj, "{count: 3, budget: 31}", **{"run.shard_size": "2"}), out=run,
                   executor=executor(FakeBackend(responder=responder)))


def test_pool_grows_on_stall_then_stops(proj, tmp_path):
    (proj / "spec.yaml").write_text((proj / "spec.yaml").read_text().replace("  - tree: mini\n",
                                                                             "  - tree: mini\n    sample: 3\n"))
    spec = rounds_spec(proj, "{count: 4, budget: 40, min_gain: 1000, allocator: {grow_by: 2}}")
    run = tmp_path / "run"
    run_rounds(spec, out=run, executor=executor(FakeBackend(responder=responder)))
    rounds = load_rounds(run)
    assert len(rounds[0]["active"]) == 3 and len(rounds[1]["active"]) == 5
    assert set(rounds[0]["active"]) < set(rounds[1]["active"])  # stable: the first cells stay
    grow = [d for d in rounds[1]["decisions"] if d["action"] == "grow_topics"]
    assert grow and grow[0]["amount"] == 2 and "stall" in grow[0]["reason"]
    assert rounds[1]["pool"]["topic_samples"]["0"] == [5, 5]
    new_cells = set(rounds[1]["active"]) - set(rounds[0]["active"])
    assert all(rounds[1]["allocation"][c] > 0 for c in new_cells)
    # nothing left to grow (mini has 5 leaves, personas are not sampled): the stalled loop stops
    assert len(rounds) == 2
    stop = json.loads((run / "rounds" / "stop.json").read_text())
    assert [d["action"] for d in stop["decisions"]] == ["needs_topics_expand", "stop"]


def test_target_stops_the_loop(proj, tmp_path):
    spec = rounds_spec(proj, "{count: 4, budget: 40, target: 0.5}")
    res = run_rounds(spec, out=tmp_path / "run", executor=executor(FakeBackend(responder=responder)))
    assert res.manifest["rounds"]["finished"] == 1 and res.generated < 40
    assert res.manifest["rounds"]["stopped"][0]["action"] == "stop"


def test_uniform_rule_spreads_by_weight(proj, tmp_path):
    spec = rounds_spec(proj, "{count: 3, budget: 30, allocator: {rule: uniform}}")
    run_rounds(spec, out=tmp_path / "run", executor=executor(FakeBackend(responder=responder)))
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert set(dict(df.group_by("topic_id").len().iter_rows()).values()) == {6}


def test_report_cli_and_html(proj, tmp_path):
    from generator.cli.report import report

    spec = rounds_spec(proj, "{count: 3, budget: 30}")
    run_rounds(spec, out=tmp_path / "run", executor=executor(FakeBackend(responder=responder)))
    out = tmp_path / "report.html"
    res = CliRunner().invoke(report, [str(tmp_path / "run"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "trajectory" in res.output and "Arithmetic / Addition" in res.output
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 4 and "Decisions" in page  # 3 rounds charts + the data map
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(report, [str(empty)])
    assert res.exit_code != 0 and "no finished rounds" in res.output


def test_refusal_and_flags():
    assert is_refusal("I'm sorry, but I can't do that.") and is_refusal("As an AI, I cannot")
    assert not is_refusal("Sorry Sam has 3 apples.") and not is_refusal("Maria said: I can't wait!")
    frame = pl.DataFrame({"status": ["ok", "truncated", "ok", "ok"],
                          "text": ["fine text", "cut", "I cannot help with that.", "  "]})
    assert row_flags(frame) == ["ok", "truncated", "refused", "empty"]


@pytest.mark.slow
def test_rounds_on_the_embedded_model(shared_backend_factory, tmp_path):
    spec = load_spec("specs/tiny.yaml", {"rounds": "{count: 2, budget: 12, first_round_share: 0.5}",
                                         "sampling.max_tokens": "64"})
    res = run_spec(spec, out=tmp_path / "run", executor=LocalExecutor(backend_factory=shared_backend_factory))
    # mechanics only: what the 135M model writes (and so how many rows are usable) is not asserted
    assert res.planned == res.generated == 12
    assert sum(res.statuses.values()) == 12
    rounds = load_rounds(tmp_path / "run")
    assert [h["spent"] for h in rounds] == [6, 6]
    frame = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    assert frame.height == 12 and sorted(frame["round"].unique().to_list()) == [1, 2]
    cells = rounds[1]["yields"]["cells"]
    assert set(cells) == {"Arithmetic / Adding two-digit numbers", "Money / Making change",
                          "Measurement / Telling time"}
    for y in cells.values():
        assert 0.0 <= y["yield_mean"] <= 1.0 and y["total"] >= 1
    assert all(d["reason"] for d in rounds[1]["decisions"])


def card_responder(r) -> str:
    """The structured `card` template answers with varied JSON; the plain `qa` template always refuses."""
    rng = random.Random(r.sampling.seed)
    if r.json_schema is not None:
        return json.dumps({"question": " ".join(rng.choice(WORDS) for _ in range(12)),
                           "answer": " ".join(rng.choice(WORDS) for _ in range(12))})
    return "I'm sorry, but I cannot help with that request."


def test_template_mix_follows_usable_rate_and_is_recorded(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"rounds": "{count: 3, budget: 60, first_round_share: 0.4}"})
    run_rounds(spec, out=tmp_path / "run", executor=executor(FakeBackend(responder=card_responder)))
    rounds = load_rounds(tmp_path / "run")
    assert rounds[0]["template_weights"] is None  # round 1: the spec mix (qa 2 : card 1)
    for h in rounds[1:]:
        w = h["template_weights"]
        alloc = json.loads((tmp_path / "run" / "rounds" / f"round-{h['round']:03d}.alloc.json").read_text())
        assert alloc["template_weights"] == w
        assert w["card"] > 1 / 3 and w["qa"] >= 0.25 * 2 / 3 - 1e-9
        assert sum(w.values()) == pytest.approx(1.0)
        assert [d for d in h["decisions"] if d["action"] == "template_weight"]
    df = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    share = {r: df.filter(pl.col("round") == r)["template"].to_list() for r in (1, 2, 3)}
    assert share[1].count("card") / len(share[1]) < sum(share[r].count("card") for r in (2, 3)) / 36


def test_resume_replans_template_weighted_rounds_identically(proj, tmp_path):
    spec = load_spec(proj / "spec.yaml", {"rounds": "{count: 3, budget: 45, first_round_share: 0.4}",
                                          "run.shard_size": "3"})
    run = tmp_path / "run"
    run_rounds(spec, out=run, executor=executor(FakeBackend(responder=card_responder)))
    before = load_rounds(run)
    plan = pl.read_parquet(run / "plan.parquet").sort("id")
    assert before[1]["template_weights"] is not None
    # drop rounds 2 and 3 entirely (results, allocations, shards): they are re-derived from round 1's file
    for r in (2, 3):
        for p in (run / "rounds").glob(f"round-{r:03d}*"):
            p.unlink()
        for p in (run / "generations").glob(f"part-{r:03d}-*.parquet"):
            p.unlink()
    run_rounds(spec, out=run, executor=executor(FakeBackend(responder=card_responder)))
    after = load_rounds(run)
    assert [h["template_weights"] for h in after] == [h["template_weights"] for h in before]
    assert [h["allocation"] for h in after] == [h["allocation"] for h in before]
    assert pl.read_parquet(run / "plan.parquet").sort("id").equals(plan)
    # a fresh run of the same spec plans the same records
    run_rounds(spec, out=tmp_path / "again", executor=executor(FakeBackend(responder=card_responder)))
    assert pl.read_parquet(tmp_path / "again" / "plan.parquet").sort("id")["id"].equals(plan["id"])


def test_expand_template_weights_change_only_new_indices(proj):
    from generator.engine.planner import expand, resolve_spec

    resolved = resolve_spec(load_spec(proj / "spec.yaml"))
    cells = {c.id: 2 for c in resolved.cells}
    base = expand(resolved, counts=cells)
    only_card = expand(resolved, counts=cells, start=cells, round=2, template_weights={"card": 1.0})
    assert {r.template for r in only_card} == {"card"}
    assert [r.id for r in expand(resolved, counts=cells)] == [r.id for r in base]  # earlier ones unchanged
    same = expand(resolved, counts=cells, template_weights={"qa": 2.0, "card": 1.0})
    assert [r.id for r in same] == [r.id for r in base]  # the spec weights, given explicitly
    with pytest.raises(ValueError, match="unknown"):
        expand(resolved, counts=cells, template_weights={"nope": 1.0})


def test_an_edited_template_is_refused_with_the_single_pass_line(proj, tmp_path, monkeypatch):
    monkeypatch.setattr("generator.engine.executors.local.make_backend",
                        lambda cfg, **_: FakeBackend(responder=responder))

    def cli(out, *sets):
        args = ["run", str(proj / "spec.yaml"), "--out", str(out), "--set", "templates=[{template: qa}]"]
        for s in sets:
            args += ["--set", s]
        return CliRunner().invoke(main, args)

    rounds = "rounds={count: 3, budget: 30}"
    assert cli(tmp_path / "single").exit_code == 0
    assert cli(tmp_path / "rounds", rounds).exit_code == 0
    # the third round is lost: the rerun would plan it, after re-planning the first two
    for p in [*(tmp_path / "rounds" / "rounds").glob("round-003*"),
              *(tmp_path / "rounds" / "generations").glob("part-003-*.parquet")]:
        p.unlink()
    plan = (tmp_path / "rounds" / "plan.parquet").read_bytes()
    tpl = proj / "templates" / "qa.j2"
    tpl.write_text(tpl.read_text().replace("two sentences", "three sentences"))
    single, looped = cli(tmp_path / "single"), cli(tmp_path / "rounds", rounds)
    assert single.exit_code == looped.exit_code == 2
    line = ": template 'qa' was edited since this run was planned"
    assert line in single.output and single.output.strip().count("\n") == 0
    assert looped.output.replace(str(tmp_path / "rounds"), "RUN") == single.output.replace(str(tmp_path / "single"),
                                                                                        "RUN")
    assert (tmp_path / "rounds" / "plan.parquet").read_bytes() == plan
    assert not (tmp_path / "rounds" / "rounds" / "round-003.alloc.json").exists()
