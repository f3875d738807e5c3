"""The allocator on synthetic yield streams: pure, fast, no model and no embeddings."""
from __future__ import annotations

import random

import pytest

from generator.core.apportion import apportion
from generator.feedback.allocator import Allocator, grow_samples, round_slices
from generator.config.spec import RoundsConfig


def cfg(**kw) -> RoundsConfig:
    alloc = kw.pop("allocator", {})
    kw.setdefault("budget", 120)
    kw.setdefault("count", 5)
    return RoundsConfig.model_validate({**kw, "allocator": alloc})


def fake_round(r: int, counts: dict[str, int], history: list[dict], true_yield: dict[str, float],
               within_growth: dict[str, float], rng: random.Random, noise: float = 0.05) -> dict:
    """One round's history entry as `generator.feedback.rounds` writes it, from per-cell true yields.

    Within-cell Vendi grows by `within_growth[c]` per generation (0: saturated from the start)."""
    prev = history[-1]["yields"]["cells"] if history else {}
    cells = {}
    for c, n in counts.items():
        before_total = prev.get(c, {}).get("total", 0)
        ys = [max(0.0, true_yield[c] + rng.gauss(0, noise)) for _ in range(n)]
        wb = prev.get(c, {}).get("within_vendi", 0.0)
        wa = wb + within_growth.get(c, 1.0) * n if before_total else (1.0 + within_growth.get(c, 1.0) * (n - 1) if n else 0.0)
        cells[c] = {"n": n, "ok": n, "total": before_total + n, "total_ok": before_total + n,
                    "yield_sum": sum(ys), "yield_sq": sum(y * y for y in ys),
                    "yield_mean": sum(ys) / n if n else 0.0, "within_vendi_before": wb, "within_vendi": wa}
    for c, v in prev.items():  # cells that got nothing keep their totals
        if c not in cells:
            cells[c] = {**v, "n": 0, "ok": 0, "yield_sum": 0.0, "yield_sq": 0.0, "yield_mean": 0.0,
                        "within_vendi_before": v["within_vendi"]}
    tracked = (history[-1]["tracked"] if history else 0.0) + sum(c["yield_sum"] for c in cells.values())
    return {"round": r, "allocation": counts, "active": list(counts), "yields": {"cells": cells},
            "tracked": tracked, "gain": tracked - (history[-1]["tracked"] if history else 0.0)}


def simulate(rc: RoundsConfig, true_yield: dict[str, float], within_growth: dict[str, float] | None = None,
             seed: int = 0, noise: float = 0.05):
    alloc = Allocator(rc, seed)
    cells = [(c, 1.0) for c in true_yield]
    slices = round_slices(rc.budget, rc.count, rc.first_round_share)
    history: list[dict] = []
    decisions: list[dict] = []
    rng = random.Random(seed)
    spent = 0
    for r in range(1, len(slices) + 1):
        left = rc.budget - spent - sum(slices[r:])
        p = alloc.allocate(r, left, cells, history)
        assert all(v >= 0 for v in p.counts.values())
        decisions += p.decisions
        spent += sum(p.counts.values())
        history.append(fake_round(r, p.counts, history, true_yield, within_growth or {}, rng, noise))
    return history, decisions


def totals(history) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in history:
        for c, n in h["allocation"].items():
            out[c] = out.get(c, 0) + n
    return out


# ---------------------------------------------------------------- budget arithmetic

@pytest.mark.parametrize("budget,count,share", [(120, 5, 0.34), (7, 3, 0.5), (100, 1, 0.2), (13, 4, 0.9),
                                                (1000, 7, 0.1)])
def test_round_slices_sum_to_budget(budget, count, share):
    s = round_slices(budget, count, share)
    assert sum(s) == budget and len(s) == count and all(x >= 0 for x in s)
    assert s[0] == (budget if count == 1 else min(budget, max(1, round(budget * share))))


def test_apportion_is_exact_and_proportional_over_time():
    assert sum(apportion(10, [1, 1, 1])) == 10
    assert apportion(10, [3, 1]) == [8, 2] or apportion(10, [3, 1]) == [7, 3]
    given = [0, 0, 0]
    for _ in range(10):  # 1 unit at a time still ends proportional (cumulative largest remainder)
        step = apportion(1, [1, 1, 1], given)
        given = [g + s for g, s in zip(given, step)]
    assert sorted(given) == [3, 3, 4]


@pytest.mark.parametrize("rule", ["ucb", "thompson", "uniform"])
@pytest.mark.parametrize("budget", [17, 60, 121])
def test_budget_respected_exactly(rule, budget):
    rc = cfg(budget=budget, count=4, allocator={"rule": rule, "min_per_cell": 1})
    history, _ = simulate(rc, {"a": 0.4, "b": 0.1, "c": 0.2, "d": 0.0, "e": 0.3})
    assert sum(totals(history).values()) == budget
    first = round_slices(budget, 4, rc.first_round_share)[0]
    assert sum(history[0]["allocation"].values()) == first


def test_round_one_by_weight():
    rc = cfg(budget=40, count=2, first_round_share=0.5)
    p = Allocator(rc).allocate(1, 20, [("a", 3.0), ("b", 1.0)], [])
    assert p.counts == {"a": 15, "b": 5}
    assert all(d["reason"].startswith("round 1") for d in p.decisions)


# ---------------------------------------------------------------- behaviour

@pytest.mark.parametrize("rule", ["ucb", "thompson"])
def test_shifts_budget_to_productive_cells(rule):
    rc = cfg(budget=200, count=5, allocator={"rule": rule, "min_per_cell": 1, "saturation": False})
    true = {"rich1": 0.5, "rich2": 0.45, "poor1": 0.05, "poor2": 0.02}
    history, _ = simulate(rc, true, seed=3)
    t = totals(history)
    assert t["rich1"] + t["rich2"] > 2.5 * (t["poor1"] + t["poor2"])
    last = history[-1]["allocation"]
    assert min(last["rich1"], last["rich2"]) > max(last["poor1"], last["poor2"])
    uni, _ = simulate(cfg(budget=200, count=5, allocator={"rule": "uniform"}), true, seed=3)
    yield_of = lambda h: sum(c["yield_sum"] for r in h for c in r["yields"]["cells"].values())  # noqa: E731
    assert yield_of(history) > 1.3 * yield_of(uni)


def test_uniform_ignores_yield():
    rc = cfg(budget=100, count=5, first_round_share=0.2, allocator={"rule": "uniform"})
    history, _ = simulate(rc, {"a": 0.9, "b": 0.0, "c": 0.0, "d": 0.0})
    assert set(totals(history).values()) == {25}


def test_no_cell_starves_forever():
    # min_per_cell 0 and a cell that looks useless in round 1 (true yield low at first draw)
    rc = cfg(budget=300, count=8, first_round_share=0.1,
             allocator={"rule": "ucb", "min_per_cell": 0, "exploration": 0.1, "saturation": False})
    history, decisions = simulate(rc, {"a": 0.6, "b": 0.55, "c": 0.01, "d": 0.5}, seed=1)
    for cell in "abcd":
        got = [h["allocation"].get(cell, 0) > 0 for h in history]
        gaps = "".join("x" if g else "." for g in got)
        assert "..." not in gaps, f"{cell} starved: {gaps}"
    assert any(d["cell"] == "c" and "re-explore" in d["reason"] for d in decisions)


def test_short_slice_gives_min_to_best_then_reexplores():
    rc = cfg(budget=30, count=6, first_round_share=0.34, allocator={"rule": "ucb", "min_per_cell": 1})
    history, _ = simulate(rc, {f"c{i}": 0.1 * i for i in range(8)}, seed=0)
    for h in history[1:]:
        assert sum(h["allocation"].values()) <= 8
    assert all(v > 0 for v in totals(history).values())


def test_caps_saturated_cells_and_max_per_cell():
    rc = cfg(budget=150, count=5, allocator={"rule": "ucb", "min_per_cell": 2, "max_per_cell": 40})
    growth = {"flat": 0.0, "grows": 0.8, "grows2": 0.8}
    history, decisions = simulate(rc, {"flat": 0.4, "grows": 0.3, "grows2": 0.3}, growth)
    caps = [d for d in decisions if d["action"] == "cap" and d["cell"] == "flat"]
    assert caps and "saturated" in caps[0]["reason"]
    assert history[1]["allocation"]["flat"] > 0 or history[2]["allocation"]["flat"] == 0
    assert any(h["allocation"]["flat"] == 0 for h in history[1:])
    t = totals(history)
    assert all(v <= 40 for v in t.values())
    # re-explored after two rounds without generations, then capped again
    seq = [h["allocation"]["flat"] for h in history]
    assert any(a == 0 and b == 0 and c > 0 for a, b, c in zip(seq, seq[1:], seq[2:]))


def test_all_saturated_falls_back_rather_than_leaving_budget():
    rc = cfg(budget=60, count=3, allocator={"rule": "ucb", "grow_topics": False})
    history, decisions = simulate(rc, {"a": 0.3, "b": 0.2}, {"a": 0.0, "b": 0.0})
    assert sum(totals(history).values()) == 60
    assert any("saturated cells take the rest" in d["reason"] for d in decisions)


def test_max_per_cell_leaves_budget_unspent():
    rc = cfg(budget=100, count=2, allocator={"max_per_cell": 10, "saturation": False})
    history, decisions = simulate(rc, {"a": 0.3, "b": 0.2})
    assert totals(history) == {"a": 10, "b": 10}
    assert any(d["action"] == "unspent" for d in decisions)


def test_stops_at_target():
    rc = cfg(target=5.0)
    history, _ = simulate(cfg(budget=60, count=3), {"a": 0.5, "b": 0.5})
    history[-1]["tracked"] = 5.2
    p = Allocator(rc).before_round(4, history, [("a", 1.0), ("b", 1.0)], 3, 0)
    assert p.stop and p.decisions[0]["action"] == "stop" and "target" in p.decisions[0]["reason"]
    history[-1]["tracked"] = 4.9
    assert not Allocator(rc).before_round(4, history, [("a", 1.0), ("b", 1.0)], 3, 0).stop


def test_grows_pool_on_stall_and_says_when_it_cannot():
    rc = cfg(min_gain=1.0, allocator={"grow_by": 3, "grow_personas_by": 5})
    history, _ = simulate(cfg(budget=60, count=3), {"a": 0.5, "b": 0.5})
    history[-1]["gain"] = 0.2
    cells = [("a", 1.0), ("b", 1.0)]
    p = Allocator(rc).before_round(4, history, cells, growable_topics=10, growable_personas=100)
    assert (p.grow_topics, p.grow_personas, p.stop) == (3, 5, False)
    assert {d["action"] for d in p.decisions} == {"grow_topics", "grow_personas"}
    p = Allocator(rc).before_round(4, history, cells, growable_topics=0, growable_personas=0)
    assert p.stop and [d["action"] for d in p.decisions] == ["needs_topics_expand", "stop"]
    assert "synthgen topics expand" in p.decisions[0]["reason"]
    history[-1]["gain"] = 2.0
    assert not Allocator(rc).before_round(4, history, cells, 10, 10).decisions
    # the uniform baseline never grows: it stops on a stall
    history[-1]["gain"] = 0.2
    p = Allocator(cfg(min_gain=1.0, allocator={"rule": "uniform"})).before_round(4, history, cells, 10, 10)
    assert p.stop and p.grow_topics == 0


def test_grow_samples_round_robin():
    assert grow_samples([(3, 10), (5, 6)], 4) == [6, 6]
    assert grow_samples([(3, 3)], 4) == [3]


@pytest.mark.parametrize("rule", ["ucb", "thompson"])
def test_same_seed_same_decisions(rule):
    rc = cfg(budget=150, count=5, allocator={"rule": rule})
    true = {"a": 0.3, "b": 0.25, "c": 0.2, "d": 0.1}
    h1, d1 = simulate(rc, true, seed=5)
    h2, d2 = simulate(rc, true, seed=5)
    assert d1 == d2 and [h["allocation"] for h in h1] == [h["allocation"] for h in h2]
    for d in d1:
        assert set(d) == {"round", "cell", "action", "amount", "reason"} and d["reason"]


def test_noise_alone_does_not_concentrate_the_budget():
    """Equal cells, a yield that is zero for 70% of generations at random (like truncation): the empirical
    Bayes shrinkage sees no between-cell signal, so one lucky round does not pull the budget."""
    cells = {f"c{i}": 0.1 for i in range(12)}
    rc = cfg(budget=72, count=4, allocator={"rule": "ucb", "min_per_cell": 0, "saturation": False})
    alloc = Allocator(rc, 0)
    rng = random.Random(4)
    history = []
    for r, n in enumerate(round_slices(72, 4, rc.first_round_share), start=1):
        p = alloc.allocate(r, n, [(c, 1.0) for c in cells], history)
        h = fake_round(r, p.counts, history, cells, {}, rng, noise=0.0)
        for c, y in h["yields"]["cells"].items():  # 70% of generations flagged -> zero yield
            ys = [0.3 if rng.random() < 0.3 else 0.0 for _ in range(y["n"])]
            y.update(yield_sum=sum(ys), yield_sq=sum(v * v for v in ys), yield_mean=sum(ys) / y["n"] if ys else 0.0)
        history.append(h)
        if r > 1:
            assert max(p.counts.values()) - min(p.counts.values()) <= 2, p.counts
    fixed = Allocator(cfg(budget=72, count=4, allocator={"rule": "ucb", "min_per_cell": 0, "saturation": False,
                                                         "prior_weight": 1.0}), 0)
    p = fixed.allocate(2, 16, [(c, 1.0) for c in cells], history[:1])
    assert max(p.counts.values()) - min(p.counts.values()) > 2  # a weak fixed prior chases the noise


# ---------------------------------------------------------------- template re-weighting

def template_round(r: int, stats: dict[str, tuple[int, int, float]]) -> dict:
    """A history entry with only per-template yields: {name: (generations, usable, novelty per usable)}."""
    by = {t: {"n": n, "ok": ok, "near_dup": 0, "yield_sum": ok * nov, "yield_sq": ok * nov * nov,
              "yield_mean": ok * nov / n if n else 0.0} for t, (n, ok, nov) in stats.items()}
    return {"round": r, "allocation": {}, "active": [], "yields": {"cells": {}, "by": {"template": by}}}


TEMPLATES = [("word_problem", 1.0), ("common_mistake", 1.0)]


def test_template_weights_shift_toward_the_higher_usable_rate():
    a = Allocator(cfg(), seed=3)
    hist = [template_round(1, {"word_problem": (12, 8, 0.3), "common_mistake": (12, 1, 0.3)})]
    w, decs = a.template_weights(2, hist, TEMPLATES)
    assert w is not None and abs(sum(w.values()) - 1.0) < 1e-9
    assert w["word_problem"] > 0.65 > 0.35 > w["common_mistake"] >= 0.25 * 0.5
    assert [d["action"] for d in decs] == ["template_weight", "template_weight"]
    assert all(d["cell"] is None and "expected yield" in d["reason"] for d in decs)
    # more evidence for the same difference moves the mix further
    hist.append(template_round(2, {"word_problem": (20, 14, 0.3), "common_mistake": (4, 0, 0.3)}))
    w3, _ = a.template_weights(3, hist, TEMPLATES)
    assert w3["word_problem"] >= w["word_problem"]


def test_template_weights_never_below_the_floor():
    a = Allocator(cfg(allocator={"template_floor": 0.4, "template_power": 3.0, "template_prior": 0.5}), seed=0)
    hist = [template_round(1, {"word_problem": (30, 25, 0.4), "common_mistake": (30, 0, 0.0)})]
    w, _ = a.template_weights(2, hist, [("word_problem", 3.0), ("common_mistake", 1.0)])
    assert w["common_mistake"] == pytest.approx(0.4 * 0.25)  # floor x spec share
    assert w["word_problem"] == pytest.approx(1 - 0.1)
    # three templates, two starved: each held at its own floor, the rest to the productive one
    three = [("a", 1.0), ("b", 1.0), ("c", 2.0)]
    hist = [template_round(1, {"a": (20, 18, 0.5), "b": (20, 0, 0.0), "c": (40, 1, 0.1)})]
    w, _ = a.template_weights(2, hist, three)
    assert w["b"] == pytest.approx(0.4 * 0.25) and w["c"] == pytest.approx(0.4 * 0.5)
    assert sum(w.values()) == pytest.approx(1.0)


def test_template_weights_deterministic_and_off_when_they_should_be():
    hist = [template_round(1, {"word_problem": (12, 6, 0.3), "common_mistake": (12, 3, 0.35)})]
    first = Allocator(cfg(), seed=5).template_weights(2, hist, TEMPLATES)
    assert first == Allocator(cfg(), seed=5).template_weights(2, hist, TEMPLATES)
    assert first == Allocator(cfg(allocator={"rule": "thompson"}), seed=5).template_weights(2, hist, TEMPLATES)
    assert Allocator(cfg(), seed=5).template_weights(1, [], TEMPLATES) == (None, [])
    assert Allocator(cfg(allocator={"rule": "uniform"}), 5).template_weights(2, hist, TEMPLATES) == (None, [])
    assert Allocator(cfg(allocator={"adapt_templates": False}), 5).template_weights(2, hist, TEMPLATES) == (None, [])
    assert Allocator(cfg(), 5).template_weights(2, hist, TEMPLATES[:1]) == (None, [])
    # equal templates: the spec mix; a difference within noise: the spec mix under empirical Bayes
    same = [template_round(1, {"word_problem": (12, 4, 0.3), "common_mistake": (12, 4, 0.3)})]
    w, _ = Allocator(cfg(), 5).template_weights(2, same, TEMPLATES)
    assert w == pytest.approx({"word_problem": 0.5, "common_mistake": 0.5})
    close = [template_round(1, {"word_problem": (12, 5, 0.3), "common_mistake": (12, 4, 0.3)})]
    w, _ = Allocator(cfg(allocator={"template_prior": None}), 5).template_weights(2, close, TEMPLATES)
    assert w == pytest.approx({"word_problem": 0.5, "common_mistake": 0.5}, abs=1e-5)
    w, _ = Allocator(cfg(), 5).template_weights(2, close, TEMPLATES)  # the fixed prior acts on it, mildly
    assert 0.5 < w["word_problem"] < 0.62
    # power 0 keeps the spec weights whatever the yields say
    w, _ = Allocator(cfg(allocator={"template_power": 0.0}), 5).template_weights(
        2, hist, [("word_problem", 3.0), ("common_mistake", 1.0)])
    assert w == pytest.approx({"word_problem": 0.75, "common_mistake": 0.25})
