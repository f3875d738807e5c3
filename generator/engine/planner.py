"""Spec -> plan: a deterministic list of prompt records with their full lineage.

Every random choice for a record (template, model, style, persona set, companion topics) is
drawn from an RNG seeded by (spec seed, topic cell, generation index) alone. So the same spec
gives the same plan byte for byte, and raising a count (more generations per topic, a larger
topic sample, another round) appends records without changing any already planned.

Here: checking a resolved spec (`validate`, `budget_notes`) and expanding it into records. The
spec's files are loaded by `resolution`; the seeded draws come from `stable_draws`.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Iterable, Iterator

from generator.library.catalog import TopicCell
from generator.config.spec import Spec
from generator.library.prompt_template import Template
from generator.engine.record import Record
from generator.engine.resolution import Resolved, resolve_spec, spec_error, with_samples
from generator.engine.stable_draws import hash64

# Record, Resolved, resolve_spec, with_samples, spec_error and hash64 live in `record`, `resolution`
# and `stable_draws`; they are importable from here as before
__all__ = ["Record", "Resolved", "expand", "expand_stream", "hash64", "plan_spec", "resolve_spec", "spec_error",
           "validate", "with_samples"]


def available_variables(resolved: Resolved, template: Template) -> set[str]:
    names = {"topic", "subtopic", "keywords", "level", "topic_path", "topics"}
    if resolved.personas is not None:
        names |= {"persona", "personas"}
    if any(c.source == "seeds" for c in resolved.cells):  # a seed row's columns are variables
        names |= {k for c in resolved.cells if c.source == "seeds" for k in c.as_vars()}
    return names | set(template.choices) | set(resolved.spec.vars)


def validate(resolved: Resolved) -> None:
    """Check every template against what the plan provides, then render one record each."""
    spec = resolved.spec
    for i, (tpl, _) in enumerate(resolved.templates):
        tpl.check_variables(available_variables(resolved, tpl),
                            where=f" (used by {spec.file.name if spec.file else 'the spec'}, "
                                  f"{'stages[0]' if spec.stages else f'templates[{i}]'})")
        if tpl.personas_per_prompt > 1 and resolved.personas is not None \
                and tpl.personas_per_prompt > len(resolved.personas):
            raise spec_error(spec, ("personas", "sample"), f"template '{tpl.name}' shows "
                              f"{tpl.personas_per_prompt} personas per prompt but the pool has "
                              f"{len(resolved.personas)}; raise `sample:`")
        # a real render with StrictUndefined catches attribute typos static analysis cannot see
        cell = resolved.cells[0]
        rng = random.Random(0)
        _render(resolved, tpl, cell, rng)


def budget_notes(resolved: Resolved) -> list[str]:
    """One line per structured template whose longest answer may not fit a model's max_tokens.

    Not an error: a small model often writes far less than its schema allows. But an answer that
    needs more room is cut off and lost, and such a cut answer is not retried."""
    from generator.library.schema_bounds import MIN_CHARS_PER_TOKEN, fits, sized, unbounded

    notes = []
    for tpl, _ in resolved.templates:
        schema = tpl.output_schema
        if not isinstance(schema, dict):
            continue
        chars = sized(schema)
        if chars is None:
            why = (unbounded(schema) or ["a bound it cannot read"])[0]
            notes.append(f"template '{tpl.name}': its output schema has no length bound it can size ({why}); "
                         "a small model may write until max_tokens cuts the answer off: add maxLength/maxItems")
            continue
        for model in resolved.models:
            budget = resolved.sampling_for(model).max_tokens
            if not fits(schema, budget):
                notes.append(f"template '{tpl.name}' on {model.name}: its longest answer is about "
                             f"{chars / MIN_CHARS_PER_TOKEN:.0f} "
                             f"tokens ({MIN_CHARS_PER_TOKEN} characters per token), more than max_tokens {budget}; "
                             "raise sampling.max_tokens or lower the schema's maxLength/maxItems")
    return notes


def _render(resolved: Resolved, tpl: Template, cell: TopicCell, rng: random.Random
            ) -> tuple[list[dict], dict, list[str], list[str]]:
    choices = {k: rng.choice(v) for k, v in sorted(tpl.choices.items())}
    persona_ids: list[str] = []
    ctx: dict[str, Any] = dict(resolved.spec.vars)
    ctx.update(cell.as_vars())
    companions: list[TopicCell] = []
    if tpl.topics_per_prompt > 1:
        others = [c for c in resolved.cells if c.id != cell.id]
        companions = rng.sample(others, min(len(others), tpl.topics_per_prompt - 1))
    ctx["topics"] = [cell.as_vars()] + [c.as_vars() for c in companions]
    if resolved.personas is not None:
        k = min(max(1, tpl.personas_per_prompt), len(resolved.personas))
        chosen = rng.sample(resolved.personas, k)
        ctx["persona"] = chosen[0]
        ctx["personas"] = chosen
        persona_ids = [p["id"] for p in chosen]
    ctx.update(choices)
    return tpl.render_messages(ctx), choices, persona_ids, [c.id for c in companions]


def default_counts(resolved: Resolved) -> dict[str, int]:
    return {c.id: resolved.spec.generations_per_topic for c in resolved.cells}


def expand(resolved: Resolved, counts: dict[str, int] | None = None, start: dict[str, int] | None = None,
           round: int = 1, template_weights: dict[str, float] | None = None) -> list[Record]:
    """`expand_stream`'s records, all in a list."""
    return list(expand_stream(resolved, counts, start, round, template_weights))


def expand_stream(resolved: Resolved, counts: dict[str, int] | None = None, start: dict[str, int] | None = None,
                  round: int = 1, template_weights: dict[str, float] | None = None) -> Iterator[Record]:
    """Records for generations [start, start+count) of each cell, in cell order then index.

    `template_weights` (template name -> weight, missing names weigh 0) replaces the spec's template
    weights for the records planned by this call; the rounds loop passes the mix its allocator chose
    for the round. It changes only which template each *new* generation index draws: the per-record
    RNG and the number of draws are the same, and records planned earlier are not re-planned (they
    already exist, with the weights of their own round). So a run stays append-stable as long as the
    weights of each round are kept with the round and passed again when it is re-planned."""
    counts = default_counts(resolved) if counts is None else counts
    start = start or {}
    tpl_list = [t for t, _ in resolved.templates]
    tpl_weights = [w for _, w in resolved.templates]
    if template_weights is not None:
        unknown = sorted(set(template_weights) - {t.name for t in tpl_list})
        if unknown:
            raise ValueError(f"template_weights names unknown templates: {', '.join(unknown)}")
        tpl_weights = [float(template_weights.get(t.name, 0.0)) for t in tpl_list]
        if not sum(tpl_weights) > 0 or min(tpl_weights) < 0:
            raise ValueError("template_weights must be non-negative with a positive sum")
    pairs = ((cell, g) for cell in resolved.cells
             for g in range(start.get(cell.id, 0), start.get(cell.id, 0) + counts.get(cell.id, 0)))
    return render_pairs(resolved, pairs, tpl_list, tpl_weights, round)


def render_pairs(resolved: Resolved, pairs: Iterable[tuple[TopicCell, int]], tpl_list: list[Template],
                 tpl_weights: list[float], round: int = 1) -> Iterator[Record]:
    """The record of each (cell, generation index), rendered only when the iterator gets to it."""
    spec = resolved.spec
    model_weights = [m.share for m in resolved.models]
    samplings: dict[str, Any] = {}
    for cell, g in pairs:
        rng = random.Random(hash64(spec.seed, "record", cell.id, g))
        tpl = rng.choices(tpl_list, weights=tpl_weights)[0]
        model = rng.choices(resolved.models, weights=model_weights)[0]
        messages, choices, persona_ids, companions = _render(resolved, tpl, cell, rng)
        coords = [cell.id, g, tpl.name, model.name, persona_ids, companions, choices]
        rid = hashlib.sha256(json.dumps(coords, sort_keys=True).encode()).hexdigest()[:16]
        sampling = samplings.get(model.name)
        if sampling is None:
            sampling = samplings[model.name] = resolved.sampling_for(model)
        yield Record(
            id=rid, round=round, topic_id=cell.id, topic=cell.topic, subtopic=cell.subtopic,
            keywords=list(cell.keywords), level=cell.level, persona_ids=persona_ids,
            template=tpl.name, template_hash=tpl.hash, template_vars=json.dumps(choices, sort_keys=True),
            model=model.name, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_tokens, seed=hash64(spec.seed, "seed", rid) % (2**31 - 1),
            generation=g, messages=messages, prompt=messages[-1]["content"],
            structured=tpl.output_schema is not None, companion_topics=companions,
            repetition_penalty=sampling.repetition_penalty)


def first_pairs(resolved: Resolved, limit: int) -> list[tuple[TopicCell, int]]:
    """The (cell, generation) pairs of the first `limit` records, spread over topics (round-robin by
    generation index), in plan order; nothing beyond them is built."""
    counts = default_counts(resolved)
    picked: list[tuple[int, int]] = []
    g = 0
    while len(picked) < limit and any(n > g for n in counts.values()):
        for i, cell in enumerate(resolved.cells):
            if len(picked) >= limit:
                break
            if counts[cell.id] > g:
                picked.append((i, g))
        g += 1
    return [(resolved.cells[i], g) for i, g in sorted(picked)]


def plan_spec(spec: Spec, limit: int | None = None) -> tuple[Resolved, list[Record]]:
    resolved, records = plan_stream(spec, limit)
    return resolved, list(records)


def plan_stream(spec: Spec, limit: int | None = None) -> tuple[Resolved, Iterator[Record]]:
    """The resolved spec and its records, rendered only as the iterator gets to them (a plan of any
    size is written a chunk at a time; `plan_spec` holds them all)."""
    resolved = resolve_spec(spec)
    validate(resolved)
    tpl_list = [t for t, _ in resolved.templates]
    weights = [w for _, w in resolved.templates]
    if limit is None:
        counts = default_counts(resolved)
        pairs: Iterable = ((cell, g) for cell in resolved.cells for g in range(counts[cell.id]))
    else:
        pairs = first_pairs(resolved, max(limit, 0))
    return resolved, render_pairs(resolved, pairs, tpl_list, weights)


def limit_records(records: list[Record], limit: int) -> list[Record]:
    """The first `limit` records, spread over topics (round-robin by generation index)."""
    order = sorted(range(len(records)), key=lambda i: (records[i].generation, i))
    keep = sorted(order[:limit])
    return [records[i] for i in keep]


def records_frame(records: Iterable[Record]):
    from generator.engine.run_folder import PLAN_SCHEMA, frame_of

    return frame_of([r.to_row() for r in records], PLAN_SCHEMA)
