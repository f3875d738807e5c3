"""Allocation by value per token: per-cell cost in the round files, `allocator.value: per_token`,
and the value columns of `synthgen report` and the viewer's rounds data (fake backend)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from generator import run as run_spec
from generator.config.spec import load_spec
from generator.engine.executors.local import LocalExecutor
from generator.feedback.rounds import load_rounds
from generator.testing.fake import FakeBackend

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("apple river stone cloud seven music garden bridge number engine planet silver window forest ocean "
         "candle mirror rabbit violin tower harbor lantern meadow copper falcon pepper quartz saddle thunder "
         "velvet walnut yellow zebra anchor basket cactus dragon").split()
LONG = ("Triangles", "Circles")  # the Geometry cells
PRICE = "{input_per_mtok: 1000, output_per_mtok: 3000}"


def is_geometry(text: str) -> bool:
    return any(w in text for w in LONG)


def wordy(r) -> str:
    """Every answer is new text; Geometry answers are eight times as long (the same words eight
    times over, so they are as novel per generation as the others)."""
    rng = random.Random(r.sampling.seed)
    text = " ".join(rng.choice(WORDS) for _ in range(20))
    return " ".join([text] * 8) if is_geometry(r.messages[-1]["content"]) else text


def run(proj, tmp_path, name: str, responder, value: str = "per_generation", stages: str | None = None,
        budget: int = 60, price: bool = False):
    over = {"templates": "[{template: qa}]",
            "rounds": f"{{count: 4, budget: {budget}, first_round_share: 0.25, embedder: hash, "
                      f"allocator: {{value: {value}, min_per_cell: 0, saturation: false, grow_topics: false, grow_personas: false}}}}"}
    if stages:
        over.update({"templates": "[]", "stages": stages})
    if price:
        over["models"] = f"[{{name: smollm2-135m, price: {PRICE}}}]"
    spec = load_spec(proj / "spec.yaml", over)
    fake = FakeBackend(responder=responder)
    out = tmp_path / name
    run_spec(spec, out=out, executor=LocalExecutor(backend_factory=lambda c, **_: fake))
    return out


def shard_tokens(out) -> pl.DataFrame:
    df = pl.read_parquet(out / "generations" / "*.parquet")
    return (df.group_by("round", "topic_id")
            .agg(pl.len().alias("attempts"), pl.col("id").n_unique().alias("records"),
                 (pl.col("prompt_tokens") + pl.col("completion_tokens")).sum().alias("tokens"),
                 pl.col("prompt_tokens").sum().alias("prompt"), pl.col("completion_tokens").sum().alias("completion")))


def check_costs_match_shards(out, price: bool) -> list[dict]:
    rounds = load_rounds(out)
    want = {(r["round"], r["topic_id"]): r for r in shard_tokens(out).iter_rows(named=True)}
    got = {(h["round"], c): v for h in rounds for c, v in h["costs"]["cells"].items()}
    assert set(got) == set(want)
    for key, v in got.items():
        w = want[key]
        assert (v["tokens"], v["prompt_tokens"], v["completion_tokens"], v["attempts"], v["records"]) == \
            (w["tokens"], w["prompt"], w["completion"], w["attempts"], w["records"]), key
        if price:  # the model's price: 1000 per million prompt tokens, 3000 per million completion tokens
            assert v["cost"] == pytest.approx((w["prompt"] * 1000 + w["completion"] * 3000) / 1e6)
        else:
            assert v["cost"] is None
    for h in rounds:
        assert h["costs"]["total"]["tokens"] == sum(v["tokens"] for v in h["costs"]["cells"].values())
        assert sum(v["tokens"] for v in h["costs"]["by"]["template"].values()) == h["costs"]["total"]["tokens"]
    return rounds


def test_round_costs_match_the_shards(proj, tmp_path):
    out = run(proj, tmp_path, "single", wordy, price=True)
    rounds = check_costs_match_shards(out, price=True)
    geo = [c for c in rounds[0]["costs"]["cells"] if c.startswith("Geometry")]
    rest = [c for c in rounds[0]["costs"]["cells"] if not c.startswith("Geometry")]
    per = {c: rounds[0]["costs"]["cells"][c]["completion_tokens"] / rounds[0]["costs"]["cells"][c]["records"]
           for c in geo + rest}
    assert min(per[c] for c in geo) > 4 * max(per[c] for c in rest)


STAGES = ("[{name: answer, kind: generate, template: qa}, "
          "{name: quality, kind: judge, target: answer, criteria: [{name: good, description: useful}]}, "
          "{name: keep, kind: filter, expr: 'quality.good >= 3', on_reject: {regenerate: answer, max_attempts: 4}}]")


def picky(r) -> str:
    """The judge fails most Geometry answers (by the answer's seed) and passes the rest."""
    rng = random.Random(r.sampling.seed)
    content = r.messages[-1]["content"]
    if r.json_schema is not None:
        low = is_geometry(content) and rng.random() < 0.6
        return json.dumps({"good": {"reason": "r", "score": 1 if low else 5}})
    return " ".join(rng.choice(WORDS) for _ in range(20))


def test_pipeline_costs_count_every_attempt_and_stage(proj, tmp_path):
    out = run(proj, tmp_path, "pipe", picky, stages=STAGES, budget=36)
    rounds = check_costs_match_shards(out, price=False)
    df = pl.read_parquet(out / "generations" / "*.parquet")
    assert (~df["final"]).sum() > 0  # rejected attempts were written, and counted above
    geo = [v for h in rounds for c, v in h["costs"]["cells"].items() if c.startswith("Geometry")]
    assert sum(v["attempts"] for v in geo) > sum(v["records"] for v in geo)
    # the judge's tokens are in the row's tokens: more than the answer stage's alone
    assert df["prompt_tokens"].sum() > df["answer.prompt_tokens"].fill_null(0).sum()


def later_share(out, cells) -> float:
    """The share of rounds 2+ that went to `cells`."""
    later = [h["allocation"] for h in load_rounds(out)[1:]]
    return sum(a.get(c, 0) for a in later for c in cells) / sum(sum(a.values()) for a in later)


def geometry(out) -> list[str]:
    return [c for c in load_rounds(out)[0]["active"] if c.startswith("Geometry")]


def test_long_answers_get_fewer_generations_per_token(proj, tmp_path):
    gen = run(proj, tmp_path, "gen", wordy, "per_generation")
    tok = run(proj, tmp_path, "tok", wordy, "per_token")
    assert load_rounds(gen)[0]["allocation"] == load_rounds(tok)[0]["allocation"]  # round 1: by weight
    g = geometry(tok)
    assert later_share(tok, g) < 0.6 * later_share(gen, g)
    why = [d["reason"] for h in load_rounds(tok)[1:] for d in h["decisions"] if d["action"] == "allocate"]
    assert why and all("value per token x" in w and "tokens per record" in w for w in why)
    assert not any("value per token" in d["reason"] for h in load_rounds(gen) for d in h["decisions"])


def test_low_acceptance_gets_fewer_generations_per_token(proj, tmp_path):
    gen = run(proj, tmp_path, "gen", picky, "per_generation", stages=STAGES, budget=48)
    tok = run(proj, tmp_path, "tok", picky, "per_token", stages=STAGES, budget=48)
    g = geometry(tok)
    # both see Geometry's low acceptance; per token also sees the attempts its records needed
    assert later_share(tok, g) < 0.5 * later_share(gen, g)


def test_report_and_view_show_value_per_topic_and_template(proj, tmp_path):
    from generator.cli.report import report
    from generator.feedback.rounds_report import value_rows
    from generator.view.app import View

    out = run(proj, tmp_path, "single", wordy, "per_token", price=True)
    rounds = load_rounds(out)
    df = pl.read_parquet(out / "generations" / "*.parquet")
    rows = {r["cell"]: r for r in value_rows(rounds, "cell")}
    assert set(rows) == set(df["topic_id"].unique())
    for (cell,), g in df.group_by(["topic_id"]):
        r = rows[cell]
        ok = int((g["status"] == "ok").sum())
        tokens = int((g["prompt_tokens"] + g["completion_tokens"]).sum())
        assert (r["records"], r["accepted"], r["tokens"]) == (g.height, ok, tokens)
        assert r["acceptance"] == pytest.approx(ok / g.height)
        assert r["tokens_per_accepted"] == pytest.approx(tokens / ok)
        money = (g["prompt_tokens"].sum() * 1000 + g["completion_tokens"].sum() * 3000) / 1e6
        assert r["cost_per_accepted"] == pytest.approx(money / ok)
        ysum = sum(h["yields"]["cells"].get(cell, {}).get("yield_sum", 0.0) for h in rounds)
        assert r["diversity"] == pytest.approx(ysum)
        assert r["diversity_per_1k_tokens"] == pytest.approx(1000 * ysum / tokens)
    assert sum(r["diversity_share"] for r in rows.values()) == pytest.approx(1.0)
    # Geometry's answers are 8x as long: it buys less diversity per token than any other cell
    geo = [r["diversity_per_1k_tokens"] for c, r in rows.items() if c.startswith("Geometry")]
    assert max(geo) < min(r["diversity_per_1k_tokens"] for c, r in rows.items() if not c.startswith("Geometry"))
    tpl = value_rows(rounds, "template")
    assert [r["template"] for r in tpl] == ["qa"] and tpl[0]["records"] == df.height

    res = CliRunner().invoke(report, [str(out)], terminal_width=250)
    assert res.exit_code == 0, res.output
    for col in ("value per topic cell", "value per template", "acceptance", "tokens/accepted", "money/accepted",
                "diversity/1k tok"):
        assert col in res.output
    best = value_rows(rounds, "cell")[0]
    assert f"{best['tokens_per_accepted']:.4g}" in res.output

    data = View(out).rounds({})
    kinds = {(v["kind"], v["name"]): v for v in data["value"]}
    assert {n for k, n in kinds if k == "topic"} == set(rows) and ("template", "qa") in kinds
    for c, r in rows.items():
        assert kinds[("topic", c)]["tokens_per_accepted"] == pytest.approx(r["tokens_per_accepted"])
        assert kinds[("topic", c)]["cost_per_accepted"] == pytest.approx(r["cost_per_accepted"])


def test_rounds_without_costs_allocate_per_generation():
    """Round files written before costs were recorded: per_token falls back to value per generation."""
    from generator.config.spec import RoundsConfig
    from generator.feedback.allocator import Allocator

    ycell = {"n": 4, "ok": 4, "near_dup": 0, "yield_sum": 2.0, "yield_sq": 1.0, "total": 4}
    hist = [{"round": 1, "allocation": {"a": 4, "b": 4}, "active": ["a", "b"],
             "yields": {"cells": {"a": dict(ycell), "b": dict(ycell)}}}]
    counts = {}
    for value in ("per_generation", "per_token"):
        rc = RoundsConfig(budget=20, allocator={"value": value, "saturation": False})
        counts[value] = Allocator(rc, 1).allocate(2, 8, [("a", 1.0), ("b", 1.0)], hist).counts
    assert counts["per_token"] == counts["per_generation"]
    hist[0]["costs"] = {"cells": {"a": {"records": 4, "tokens": 400}, "b": {"records": 4, "tokens": 4000}}}
    rc = RoundsConfig(budget=20, allocator={"value": "per_token", "saturation": False, "min_per_cell": 0})
    got = Allocator(rc, 1).allocate(2, 8, [("a", 1.0), ("b", 1.0)], hist).counts
    assert got["a"] > got["b"]


def test_value_keeps_the_spec_hash_of_existing_rounds_runs():
    """A rounds run started before `value:` existed resumes: the default is not in the hash."""
    spec = load_spec(ROOT / "specs" / "math_rounds.yaml")
    assert "value" not in json.loads(spec.canonical_json())["rounds"]["allocator"]
    tok = load_spec(ROOT / "specs" / "math_rounds.yaml", {"rounds.allocator.value": "per_token"})
    assert tok.rounds.allocator.value == "per_token" and tok.hash() != spec.hash()
