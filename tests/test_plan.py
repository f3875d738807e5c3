"""The plan is deterministic and append-stable."""
from __future__ import annotations

import pytest

from generator.engine import resolution
from generator.engine.planner import expand, plan_spec, records_frame, resolve_spec, with_samples
from generator.config.spec import load_spec


def _plan(proj, **sets):
    spec = load_spec(proj / "spec.yaml", {k: str(v) for k, v in sets.items()})
    return plan_spec(spec)[1]


def test_same_spec_same_plan_byte_for_byte(proj, tmp_path):
    a, b = _plan(proj), _plan(proj)
    pa, pb = tmp_path / "a.parquet", tmp_path / "b.parquet"
    records_frame(a).write_parquet(pa)
    records_frame(b).write_parquet(pb)
    assert pa.read_bytes() == pb.read_bytes()


def test_raising_generations_appends_only(proj):
    small = _plan(proj, generations_per_topic=2)
    big = _plan(proj, generations_per_topic=5)
    by_id = {r.id: r for r in big}
    assert len(big) == 5 * len({r.topic_id for r in big})
    for r in small:  # every planned record survives unchanged, with the same prompt and seed
        assert by_id[r.id] == r


def test_larger_topic_sample_keeps_earlier_cells(proj):
    spec = load_spec(proj / "spec.yaml")
    spec.topics[0].sample = 2
    two = {c.id for c in resolve_spec(spec).cells}
    spec.topics[0].sample = 4
    four = {c.id for c in resolve_spec(spec).cells}
    assert len(two) == 2 and len(four) == 4 and two <= four


def test_other_samples_are_drawn_without_reading_files_and_plan_as_resolving_does(proj, monkeypatch):
    """What the rounds loop relies on to grow its pool: `with_samples` gives the cells, personas and
    records of resolving the spec with those `sample:` sizes, from what was loaded once."""
    spec = load_spec(proj / "spec.yaml", {"topics": "[{tree: mini, sample: 2}]", "personas": "{file: mini, sample: 1}"})
    wanted = {}
    for k in range(1, 6):
        for p in range(1, 4):
            spec.topics[0].sample, spec.personas.sample = k, p
            r = resolve_spec(spec)
            wanted[k, p] = ([c.id for c in r.cells], [x["id"] for x in r.personas], expand(r))
    spec.topics[0].sample, spec.personas.sample = 2, 1
    base = resolve_spec(spec)

    def no_read(*a, **k):
        raise AssertionError("a library file was read again")

    monkeypatch.setattr(resolution, "load_topic_tree", no_read)  # where resolve_spec reads them
    monkeypatch.setattr(resolution, "load_personas", no_read)
    for (k, p), (cells, personas, records) in wanted.items():
        r = with_samples(base, {0: k}, p)
        assert [c.id for c in r.cells] == cells and [x["id"] for x in r.personas] == personas
        assert expand(r) == records
        assert r.spec.topics[0].sample == k and base.spec.topics[0].sample == 2  # the base is unchanged
    with pytest.raises(ValueError, match="not drawable"):
        with_samples(base, {0: 6})


def test_seed_changes_plan(proj):
    a = _plan(proj, seed=1)
    b = _plan(proj, seed=2)
    assert [r.seed for r in a] != [r.seed for r in b]


def test_ids_unique_and_lineage_complete(proj):
    records = _plan(proj, generations_per_topic=4)
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert r.template in ("qa", "card") and len(r.template_hash) == 16
        assert r.persona_ids and r.model == "smollm2-135m" and r.messages[-1]["role"] == "user"
        assert r.max_tokens == 64 and r.temperature == 0.7


def test_template_weights_respected(proj):
    records = _plan(proj, generations_per_topic=60)
    share = sum(r.template == "qa" for r in records) / len(records)
    assert 0.58 < share < 0.75  # weight 2:1


def test_choices_recorded(proj):
    records = _plan(proj, generations_per_topic=10)
    tones = {r.template_vars for r in records if r.template == "qa"}
    assert tones == {'{"tone": "plain"}', '{"tone": "playful"}'}


def test_round_extension_continues_generation_index(proj):
    resolved = resolve_spec(load_spec(proj / "spec.yaml"))
    first = expand(resolved, counts={c.id: 2 for c in resolved.cells})
    more = expand(resolved, counts={c.id: 1 for c in resolved.cells}, start={c.id: 2 for c in resolved.cells},
                  round=2)
    again = expand(resolved, counts={c.id: 3 for c in resolved.cells})
    assert {r.id for r in first} | {r.id for r in more} == {r.id for r in again}
    assert all(r.round == 2 and r.generation == 2 for r in more)


def test_limit_spreads_over_topics(proj):
    spec = load_spec(proj / "spec.yaml")
    _, records = plan_spec(spec, limit=5)
    assert len(records) == 5 and len({r.topic_id for r in records}) == 5
