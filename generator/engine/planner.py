"""Spec -> plan: a deterministic list of prompt records with their full lineage.

Every random choice for a record (template, model, style, persona set, companion topics) is
drawn from an RNG seeded by (spec seed, topic cell, generation index) alone. So the same spec
gives the same plan byte for byte, and raising a count (more generations per topic, a larger
topic sample, another round) appends records without changing any already planned.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from generator.core.errors import SpecError
from generator.core.confine import Confinement
from generator.core.paths import builtin_root
from generator.library.catalog import (Refused, TopicCell, load_personas, load_template, load_topic_tree, resolve,
                                       tree_cells)
from generator.config.models import ModelConfig
from generator.config.spec import InlineTopics, SamplingConfig, SeedTopics, Spec, TreeTopics
from generator.library.prompt_template import Template
from generator.engine.record import Record

__all__ = ["Record", "Resolved", "expand", "expand_stream", "plan_spec", "resolve_spec", "validate", "with_samples"]


def hash64(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _unit(*parts: Any) -> float:
    return (hash64(*parts) + 0.5) / 2**64


@dataclass
class Resolved:
    """A spec with every referenced file loaded: what `expand` needs, nothing else."""

    spec: Spec
    cells: list[TopicCell]
    templates: list[tuple[Template, float]]
    personas: list[dict] | None
    models: list[ModelConfig]
    stage_templates: dict[int, list[tuple[Template, float]]] = field(default_factory=dict)  # stage index ->
    # conversation/agent stages: stage index -> role ("user", "assistant", "task") -> its template
    role_templates: dict[int, dict[str, Template]] = field(default_factory=dict)
    # the pools before `sample:`, kept so other sample sizes are drawn without reading files again
    # (`with_samples`): every topic source's cells, and the whole persona set
    source_cells: list[list[TopicCell]] = field(default_factory=list)
    persona_pool: list[dict] | None = None

    @property
    def template_by_name(self) -> dict[str, Template]:
        return {t.name: t for t, _ in self.templates}

    def sampling_for(self, model: ModelConfig) -> SamplingConfig:
        """The plan's sampling: the spec's, the model's overrides, then the entry stage's (if any)."""
        base = self.spec.sampling.model_dump()
        base.update({k: v for k, v in model.sampling.model_dump().items() if v is not None})
        if self.spec.stages is not None:
            base.update({k: v for k, v in self.spec.stages[0].sampling.model_dump().items() if v is not None})
        return SamplingConfig(**base)


def spec_error(spec: Spec, path: tuple, message: str) -> SpecError:
    if spec._located is not None:
        return spec._located.error(path, message)
    return SpecError(message, file=spec.file)


def _priority_sample(items: list, k: int, weights: list[float], *salt: Any) -> list:
    """Weighted sample without replacement, stable as k grows (Efraimidis-Spirakis keys)."""
    keyed = sorted(range(len(items)), key=lambda i: -(_unit(*salt, i) ** (1.0 / weights[i])))
    chosen = sorted(keyed[:k])
    return [items[i] for i in chosen]


def resolve_ref(spec: Spec, kind: str, ref: str, confine: Confinement, loc: tuple, fix: str):
    try:
        return resolve(kind, ref, spec.base_dir, confine)
    except Refused as exc:
        raise spec_error(spec, loc, str(exc)) from None
    except FileNotFoundError as exc:
        raise spec_error(spec, loc, f"{exc}; {fix}") from None


def template_roots(spec: Spec, confine: Confinement) -> tuple[Path, ...]:
    """Where `{% include %}` names resolve: the project's templates/, allowed folders, the built-in one."""
    roots = [spec.project_root / "templates"]
    if spec.base_dir is not None:
        roots.append(spec.base_dir / "templates")
    roots += [*confine.allowed, builtin_root("templates")]
    return tuple(dict.fromkeys(roots))


def check_plan_size(spec: Spec, n_cells: int) -> None:
    """Refuse a plan above `run.max_records` before anything is built (the count is analytic)."""
    planned = spec.rounds.budget if spec.rounds is not None else n_cells * spec.generations_per_topic
    if planned > spec.run.max_records:
        loc = ("rounds", "budget") if spec.rounds is not None else ("generations_per_topic",)
        raise spec_error(spec, loc, f"the spec plans {planned:,} records, more than run.max_records "
                                     f"({spec.run.max_records:,}); lower the counts, or set run.max_records "
                                     f"to at least {planned} if you mean it")


def _seed_source(spec: Spec, i: int, src: SeedTopics, confine: Confinement) -> list[TopicCell]:
    from generator.library.seed_data import seed_cells

    if not isinstance(src.seeds, str):  # procedural problems: nothing to read or confine
        from generator.library import reasoning_gym

        try:
            return reasoning_gym.gym_cells(src, spec.seed, ("seeds", i))
        except (SpecError, ValueError) as exc:
            raise spec_error(spec, ("topics", i, "seeds", "reasoning_gym"), f"{exc}; fix the seeds source") from None
    path = Path(src.seeds)
    if not path.is_absolute() and spec.base_dir is not None:
        path = spec.base_dir / path
    if not path.exists():
        raise spec_error(spec, ("topics", i, "seeds"), f"seed data {path} not found; fix `seeds:`")
    if not confine.permits(path):  # seed rows become prompts: they come from the project like templates
        try:
            confine.check(path, "seed data", src.seeds)
        except SpecError as exc:
            raise spec_error(spec, ("topics", i, "seeds"), str(exc)) from None
    try:
        return seed_cells(src, path, spec.seed, ("seeds", i))
    except (SpecError, FileNotFoundError, ValueError) as exc:
        raise spec_error(spec, ("topics", i, "seeds"), f"{exc}; fix the seeds source") from None


def _entry(spec: Spec) -> tuple[list, Any, list[ModelConfig]]:
    """(template refs, their spec positions, models) the plan draws from: the spec's, or for a
    spec with `stages:` its first stage's (the entry stage, whose prompts are the plan)."""
    if spec.stages is None:
        return spec.templates, lambda i: ("templates", i, "template"), list(spec.models)
    entry = spec.stages[0]
    if entry.kind not in ("generate", "difficulty"):
        raise spec_error(spec, ("stages", 0), "the first stage must be a generate stage that reads no other "
                          "stage (its prompts are the plan)")
    models = [m for m in spec.models if m.name == entry.model] if entry.model else list(spec.models)
    if not models:
        key = "model" if entry.kind == "generate" else ("solvers" if entry.solvers else "solver")
        raise spec_error(spec, ("stages", 0, key), f"model '{entry.model}' is not in `models:`; add it "
                          f"there or fix the name")
    if entry.template:
        return [entry.template_refs()[0]], lambda i: ("stages", 0, "template"), models
    return entry.template_refs(), lambda i: ("stages", 0, "templates", i, "template"), models


def resolve_spec(spec: Spec) -> Resolved:
    confine = spec.confinement()
    sources: list[list[TopicCell]] = []  # each topic source's cells, before `sample:`
    for i, src in enumerate(spec.topics):
        if isinstance(src, TreeTopics):
            path = resolve_ref(spec, "topics", src.tree, confine, ("topics", i, "tree"), "fix `tree:` or add the file")
            tree = load_topic_tree(path)
            found = tree_cells(tree, src.under, src.depth, src.weight)
            if not found:
                raise spec_error(spec, ("topics", i), f"topic tree '{src.tree}' has no cells under "
                                  f"{src.under} at depth {src.depth}; check `under:`/`depth:`")
            if src.sample is not None and src.sample > len(found):
                raise spec_error(spec, ("topics", i, "sample"), f"`sample: {src.sample}` but topic tree "
                                  f"'{src.tree}' has {len(found)} cells there; set sample to at most {len(found)}")
            sources.append(found)
        elif isinstance(src, SeedTopics):
            sources.append(_seed_source(spec, i, src, confine))
        elif isinstance(src, InlineTopics):
            inline: list[TopicCell] = []
            for item in src.items:
                if isinstance(item, str):
                    inline.append(TopicCell(id=item, topic=item, subtopic=item, keywords=(), level=None,
                                            weight=src.weight, source="inline"))
                else:
                    sub = item.subtopic or item.topic
                    cid = f"{item.topic} / {sub}" if item.subtopic else item.topic
                    inline.append(TopicCell(id=cid, topic=item.topic, subtopic=sub, keywords=tuple(item.keywords),
                                            level=item.level, weight=src.weight * item.weight, source="inline"))
            sources.append(inline)
        else:  # the spec's topic-source union grew a kind this loop does not read
            raise TypeError(f"topics[{i}]: unknown topic source {type(src).__name__}")
    cells = _sampled_cells(spec, sources)
    refs, where, models = _entry(spec)
    templates: list[tuple[Template, float]] = []
    roots = template_roots(spec, confine)
    for i, ref in enumerate(refs):
        path = resolve_ref(spec, "templates", ref.template, confine, where(i), "`synthgen library` lists the templates")
        templates.append((load_template(path, roots=roots, confine=confine), ref.weight))
    names = [t.name for t, _ in templates]
    if len(set(names)) != len(names):
        raise spec_error(spec, ("templates",), "a template is listed twice; merge the entries and set `weight:`")

    pool = None
    if spec.personas is not None:
        ppath = resolve_ref(spec, "personas", spec.personas.file, confine, ("personas", "file"), "fix `file:`")
        pool = load_personas(ppath)
        if spec.personas.sample is not None and spec.personas.sample > len(pool):
            raise spec_error(spec, ("personas", "sample"), f"`sample: {spec.personas.sample}` but persona set "
                              f"'{spec.personas.file}' has {len(pool)} personas; set sample to at most "
                              f"{len(pool)}")
    return Resolved(spec=spec, cells=cells, templates=templates, personas=_sampled_personas(spec, pool),
                    models=models, stage_templates=_stage_templates(spec, confine, roots),
                    role_templates=_role_templates(spec, confine, roots), source_cells=sources, persona_pool=pool)


def _sampled_cells(spec: Spec, sources: list[list[TopicCell]]) -> list[TopicCell]:
    """The plan's topic cells: each source's, a tree source's drawn by its `sample:` (weighted and
    stable as the sample grows), checked for a cell listed twice and for the plan's size."""
    cells: list[TopicCell] = []
    for i, (src, found) in enumerate(zip(spec.topics, sources)):
        if isinstance(src, TreeTopics) and src.sample is not None and src.sample < len(found):
            found = _priority_sample(found, src.sample, [c.weight for c in found], spec.seed, "topics", i)
        cells.extend(found)
    seen: set[str] = set()
    for c in cells:
        if c.id in seen:
            raise spec_error(spec, ("topics",), f"topic '{c.id}' appears twice; remove one source")
        seen.add(c.id)
    check_plan_size(spec, len(cells))
    return cells


def _sampled_personas(spec: Spec, pool: list[dict] | None) -> list[dict] | None:
    if pool is None or spec.personas is None or spec.personas.sample is None or spec.personas.sample >= len(pool):
        return pool
    return _priority_sample(pool, spec.personas.sample, [1.0] * len(pool), spec.seed, "personas")


def with_samples(resolved: Resolved, topics: dict[int, int] | None = None, personas: int | None = None) -> Resolved:
    """`resolved` with other `sample:` sizes: `topics` maps a tree source's index in `spec.topics`
    to its sample, `personas` is the persona sample. Drawn from the pools `resolve_spec` loaded, so
    no file is read again; the same cells and personas as resolving a spec with those sizes (the
    draw is stable as a sample grows). The rounds loop grows its pool this way."""
    spec = resolved.spec.model_copy()
    spec.topics = [t.model_copy() for t in spec.topics]
    for i, k in (topics or {}).items():
        src = spec.topics[i]
        if not isinstance(src, TreeTopics) or not 0 <= k <= len(resolved.source_cells[i]):
            raise ValueError(f"topics[{i}]: a sample of {k} is not drawable from that source")
        src.sample = k
    pool = resolved.persona_pool
    if personas is not None and spec.personas is not None:
        if pool is None or not 0 <= personas <= len(pool):
            raise ValueError(f"personas: a sample of {personas} is not drawable from the persona set")
        spec.personas = spec.personas.model_copy()
        spec.personas.sample = personas
    return dataclasses.replace(resolved, spec=spec, cells=_sampled_cells(spec, resolved.source_cells),
                               personas=_sampled_personas(spec, pool))


def _stage_templates(spec: Spec, confine: Confinement, roots) -> dict[int, list[tuple[Template, float]]]:
    """The templates of a pipeline's later generate stages (the entry stage's are the spec's)."""
    out: dict[int, list[tuple[Template, float]]] = {}
    for i, stage in enumerate(spec.stages or []):
        if i == 0 or stage.kind not in ("generate", "difficulty"):  # a difficulty stage's tries: its template
            continue
        out[i] = []
        for j, ref in enumerate(stage.template_refs()):
            key = ("stages", i, "template") if stage.template else ("stages", i, "templates", j, "template")
            path = resolve_ref(spec, "templates", ref.template, confine, key, "`synthgen library` lists the templates")
            out[i].append((load_template(path, roots=roots, confine=confine), ref.weight))
    return out


def _role_templates(spec: Spec, confine: Confinement, roots) -> dict[int, dict[str, Template]]:
    """The templates of conversation stages (user simulator, assistant) and agent stages (task)."""
    out: dict[int, dict[str, Template]] = {}
    for i, stage in enumerate(spec.stages or []):
        refs: dict[str, tuple[str | None, tuple]] = {}
        if stage.kind == "conversation":
            refs = {"user": (stage.user.template, ("stages", i, "user", "template")),
                    "assistant": (stage.assistant.template, ("stages", i, "assistant", "template"))}
        elif stage.kind == "agent":
            refs = {"task": (stage.template, ("stages", i, "template"))}
        for role, (ref, key) in refs.items():
            if ref is not None:
                path = resolve_ref(spec, "templates", ref, confine, key, "`synthgen library` lists the templates")
                out.setdefault(i, {})[role] = load_template(path, roots=roots, confine=confine)
    return out


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
