"""Spec -> `Resolved`: every file a spec names (templates, topic cells, seed data, personas) loaded
and checked once, with the pools before `sample:` kept so other sample sizes are drawn from them
(`with_samples`) without reading a file again. Errors name the spec line (`spec_error`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.core.errors import SpecError
from generator.core.confine import Confinement
from generator.core.paths import builtin_root
from generator.library.catalog import (Refused, TopicCell, load_personas, load_template, load_topic_tree, resolve,
                                       tree_cells)
from generator.config.models import ModelConfig
from generator.config.spec import InlineTopics, SamplingConfig, SeedTopics, Spec, TreeTopics
from generator.library.prompt_template import Template
from generator.engine.stable_draws import drawn_cells, drawn_personas

__all__ = ["Resolved", "check_plan_size", "resolve_ref", "resolve_spec", "spec_error", "template_roots",
           "with_samples"]


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
    return Resolved(spec=spec, cells=cells, templates=templates, personas=drawn_personas(spec, pool),
                    models=models, stage_templates=_stage_templates(spec, confine, roots),
                    role_templates=_role_templates(spec, confine, roots), source_cells=sources, persona_pool=pool)


def _sampled_cells(spec: Spec, sources: list[list[TopicCell]]) -> list[TopicCell]:
    """The plan's topic cells: each source's, a tree source's drawn by its `sample:` (weighted and
    stable as the sample grows), checked for a cell listed twice and for the plan's size."""
    cells = drawn_cells(spec, sources)
    seen: set[str] = set()
    for c in cells:
        if c.id in seen:
            raise spec_error(spec, ("topics",), f"topic '{c.id}' appears twice; remove one source")
        seen.add(c.id)
    check_plan_size(spec, len(cells))
    return cells


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
                               personas=drawn_personas(spec, pool))


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
