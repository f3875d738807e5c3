"""What each stage sees and sends: template contexts, stage requests, deterministic seeds.

A later stage's template sees everything the entry template saw (topic, persona, vars, seed
columns) plus one mapping per finished stage (`problem.text`, `problem.json.question`,
`check.agree`, ...). Every random choice of a stage (its template, its `choices`) and every
seed is a hash of (spec seed, record id, stage, attempt, sample), so the same spec gives the
same requests on every run and a resumed run finds them in the cache.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from generator.config.stages import GenerateStage, JudgeStage
from generator.core.backend import Request, Sampling
from generator.core.errors import SpecError
from generator.engine.dialogue import transcript
from generator.engine.pipeline import judge
from generator.engine.pipeline.dag import Pipeline, StageNode
from generator.engine.planner import Resolved, available_variables, hash64
from generator.library.schema_examples import minimal_instance


@dataclass
class StageOut:
    """A finished stage of one record (for the attempt it was produced in)."""

    status: str                      # generate/judge: ok, truncated, empty, invalid_json, error;
    attempt: int                     # verify/filter: passed, rejected
    view: dict[str, Any]             # the fields later stages read
    reason: str | None = None
    seed: int | None = None
    model: str | None = None
    template: str | None = None
    tries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    messages: list[dict] = field(default_factory=list)
    completion: str | None = None
    finish_reason: str | None = None
    error: str | None = None         # the answer's own error (a backend error, a JSON or renderer fault)
    columns: dict[str, Any] = field(default_factory=dict)  # conversation/agent: `Trajectory.columns()`;
    # generate: its samples (`thinking.sample_columns`)
    reasoning: str | None = None     # a thinking model's reasoning before the answer
    reasoning_tokens: int = 0        # of completion_tokens, spent reasoning (all samples)
    reasoning_forced: bool = False   # the thinking budget ran out and the end marker was forced

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "truncated", "passed")


def stage_seed(spec_seed: int, rid: str, stage: str, attempt: int, sample: int) -> int:
    return hash64(spec_seed, "stage", rid, stage, attempt, sample) % (2**31 - 1)


class Contexts:
    """Builds each record's base template context once (cell, personas, vars)."""

    def __init__(self, resolved: Resolved):
        self.resolved = resolved
        self.cells = {c.id: c for c in resolved.cells}
        self.personas = {p["id"]: p for p in resolved.personas or []}

    def base(self, row: dict) -> dict[str, Any]:
        ctx: dict[str, Any] = dict(self.resolved.spec.vars)
        cell = self.cells.get(row["topic_id"])
        if cell is not None:
            ctx.update(cell.as_vars())
            companions = [self.cells[c].as_vars() for c in row.get("companion_topics") or [] if c in self.cells]
            ctx["topics"] = [cell.as_vars()] + companions
        chosen = [self.personas[p] for p in row.get("persona_ids") or [] if p in self.personas]
        if self.resolved.personas is not None and chosen:
            ctx["persona"], ctx["personas"] = chosen[0], chosen
        return ctx


def stage_context(base: dict[str, Any], outputs: dict[str, StageOut]) -> dict[str, Any]:
    ctx = dict(base)
    ctx.update({name: out.view for name, out in outputs.items()})
    return ctx


def pick_template(node: StageNode, spec_seed: int, rid: str) -> tuple[Any, random.Random]:
    rng = random.Random(hash64(spec_seed, "stage-template", rid, node.name))
    tpls = [t for t, _ in node.templates]
    return rng.choices(tpls, weights=[w for _, w in node.templates])[0], rng


def render_stage(node: StageNode, ctx: dict[str, Any], spec_seed: int, rid: str) -> tuple[Any, list[dict]]:
    tpl, rng = pick_template(node, spec_seed, rid)
    choices = {k: rng.choice(v) for k, v in sorted(tpl.choices.items())}
    return tpl, tpl.render_messages({**ctx, **choices})


def judge_messages(node: StageNode, row: dict, outputs: dict[str, StageOut], spec_seed: int,
                   rid: str) -> tuple[list[dict], dict, dict[str, Any]]:
    """(messages, schema, extra) for a judge stage; `extra` says how A/B map to stages and holds
    the compared texts, or the per-turn layout (assistant turns, turns shown) of a judged transcript."""
    c: JudgeStage = node.cfg
    first = c.target or c.compare[0]
    if c.instruction:
        instruction = outputs[c.instruction].view.get("text") or ""
    else:
        instruction = outputs[first].view.get("prompt") or ""
    if c.criteria:
        judged = judged_text(node, outputs[c.target], c.transcript_chars)
        if node.judged == "answer":
            return judge.rubric_messages(c.criteria, instruction, judged.text), judge.rubric_schema(c.criteria), {}
        shown = judged.shown if c.per_turn else None
        extra = {"turns": (judged.turns, judged.shown)} if c.per_turn else {}
        return (judge.transcript_messages(c.criteria, instruction, judged.text, shown),
                judge.transcript_schema(c.criteria, shown), extra)
    a, b = c.compare
    if hash64(spec_seed, "judge-order", rid, node.name) % 2:  # show them in a seeded order: no position bias
        a, b = b, a
    # the verdict names A or B: keep the compared answers (a transcript's: its conversation JSON) at hand
    key = "text" if node.judged == "answer" else "conversation"
    extra = {"A": a, "B": b, "texts": {s: (outputs[s].view if key == "text" else outputs[s].columns).get(key)
                                       for s in c.compare}}
    if node.judged == "answer":
        msgs = judge.compare_messages(instruction, outputs[a].view.get("text") or "",
                                      outputs[b].view.get("text") or "")
    else:
        half = c.transcript_chars // 2
        msgs = judge.compare_transcripts_messages(instruction, judged_text(node, outputs[a], half).text,
                                                  judged_text(node, outputs[b], half).text)
    return msgs, judge.COMPARE_SCHEMA, extra


def judged_text(node: StageNode, out: StageOut, budget: int) -> transcript.Rendered:
    """What a judge reads of a judged stage (`node.judged`): a generate stage's answer, or a
    conversation's or agent's transcript fitted to `budget` characters. (The hook for what else a
    judge may read, such as a stage's reasoning.)"""
    if node.judged == "answer":
        return transcript.Rendered(out.view.get("text") or "", 0, ())
    return transcript.render(out.view.get("messages") or [], budget,
                             transcript.failed_call_ids(out.columns.get("tool_calls")))


def sampling_for(resolved: Resolved, node: StageNode, model: str, override: Any = None) -> Sampling:
    """The spec's sampling, the model's, then the stage's (or `override`: a conversation role's)."""
    cfg = next(m for m in resolved.spec.models if m.name == model)
    base = resolved.spec.sampling.model_dump()
    base.update({k: v for k, v in cfg.sampling.model_dump().items() if v is not None})
    own = override if override is not None else node.cfg.sampling
    base.update({k: v for k, v in own.model_dump().items() if v is not None})
    return Sampling(temperature=base["temperature"], top_p=base["top_p"], max_tokens=base["max_tokens"],
                    repetition_penalty=base.get("repetition_penalty"))


def render_text(text: str, ctx: dict[str, Any]) -> str:
    """A Jinja string of the spec (an agent's `expect`) rendered in the sandbox."""
    from generator.library.sandbox import render_limited, sandbox

    return render_limited(sandbox().from_string(text), ctx).strip()


def dialogue_request(rid: str, stage: str, attempt: int, tag: str, tries: int, messages: list[dict],
                     sampling: Sampling, seed: int, schema: dict | None,
                     tools: tuple[dict, ...] | None = None) -> Request:
    """One turn of a conversation or agent stage: `{rid}/{stage}/{attempt}/{tag}#{tries}`;
    `tools`: the definitions a native tool-calling turn offers."""
    return make_request(rid, stage, attempt, tag, tries, messages, sampling, seed, schema, tools)


def make_request(rid: str, stage: str, attempt: int, sample: int | str, tries: int, messages: list[dict],
                 sampling: Sampling, seed: int, schema: dict | None,
                 tools: tuple[dict, ...] | None = None) -> Request:
    return Request(id=f"{rid}/{stage}/{attempt}/{sample}#{tries}", messages=tuple(messages),
                   sampling=Sampling(sampling.temperature, sampling.top_p, sampling.max_tokens, seed + tries - 1,
                                     sampling.repetition_penalty),
                   json_schema=schema, tools=tools)


# ---------------------------------------------------------------- validation (no model)

def placeholder_view(node: StageNode) -> dict[str, Any]:
    if node.kind in ("conversation", "agent"):
        return {"text": "(text)", "messages": [], "status": "ok", "reason": None, "steps": 1, "turns": 1,
                "tool_calls": 0, "failed_calls": 0, "completion_tokens": 1, "model": "(model)", "passed": True,
                "answer": "(answer)", "expected": "(expected)"}
    if node.kind == "generate":
        schema = node.schema()
        return {"text": "(text)", "json": minimal_instance(schema, node.name) if schema else {}, "texts": ["(text)"],
                "prompt": "(prompt)", "model": "(model)", "status": "ok", "completion_tokens": 1,
                "reasoning": "(reasoning)", "reasoning_tokens": 1}
    view: dict[str, Any] = {f: None for f in node.fields()}
    if "reasons" in view:
        view["reasons"] = {}
    return view


def validate_templates(resolved: Resolved, pipeline: Pipeline, ancestors_of) -> None:
    """Every generate stage's templates use only plan variables and stages that precede them, and
    render with placeholder outputs (StrictUndefined catches `problem.jsn` and unknown JSON keys)."""
    spec = resolved.spec
    contexts = Contexts(resolved)
    nodes = pipeline.nodes
    for node in nodes.values():
        if node.roles:
            _validate_roles(resolved, node, contexts, nodes, ancestors_of(node.name))
        if not isinstance(node.cfg, GenerateStage):
            continue
        before = ancestors_of(node.name)
        for tpl, _ in node.templates:
            where = f" (used by {spec.file.name if spec.file else 'the spec'}, stage '{node.name}')"
            later = sorted((tpl.referenced_variables() & set(nodes)) - before)
            if later:
                raise SpecError(f"template '{tpl.name}' of stage '{node.name}' reads stage(s) {', '.join(later)} "
                                f"that do not run before it{where}; add them to `after:`", file=tpl.path,
                                line=tpl.body_line)
            tpl.check_variables(available_variables(resolved, tpl) | before, where=where)
            if node.name == pipeline.entry:
                continue  # rendered by the planner
            row = {"topic_id": resolved.cells[0].id, "persona_ids": [p["id"] for p in (resolved.personas or [])[:1]]}
            ctx = stage_context(contexts.base(row), {})
            ctx.update({b: placeholder_view(nodes[b]) for b in before})
            choices = {k: v[0] for k, v in tpl.choices.items()}
            tpl.render_messages({**ctx, **choices})


def jsonable(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _validate_roles(resolved: Resolved, node: StageNode, contexts: Contexts, nodes: dict[str, StageNode],
                    before: set[str]) -> None:
    """A conversation's or agent's templates (and an agent's `expect` texts) use only plan variables
    and earlier stages, and render with placeholder outputs."""
    spec = resolved.spec
    row = {"topic_id": resolved.cells[0].id, "persona_ids": [p["id"] for p in (resolved.personas or [])[:1]]}
    ctx = stage_context(contexts.base(row), {})
    ctx.update({b: placeholder_view(nodes[b]) for b in before})
    for role, tpl in node.roles.items():
        where = f" (used by {spec.file.name if spec.file else 'the spec'}, stage '{node.name}', {role})"
        later = sorted((tpl.referenced_variables() & set(nodes)) - before)
        if later:
            raise SpecError(f"template '{tpl.name}' of stage '{node.name}' reads stage(s) {', '.join(later)} "
                            f"that do not run before it{where}; add them to `after:`", file=tpl.path,
                            line=tpl.body_line)
        tpl.check_variables(available_variables(resolved, tpl) | before, where=where)
        tpl.render_messages({**ctx, **{k: v[0] for k, v in tpl.choices.items()}})
    from generator.engine.pipeline.dag import expect_texts

    if node.kind == "agent":
        from generator.engine.planner import spec_error

        for key, text in expect_texts(node.cfg):
            try:
                render_text(text, ctx)
            except Exception as exc:  # noqa: BLE001 - any render failure is one line at the key
                msg = getattr(exc, "message", None) or str(exc)
                raise spec_error(spec, ("stages", node.index, *key), f"agent '{node.name}': cannot render "
                                 f"this text: {msg}; it may read plan columns and earlier stages") from None
