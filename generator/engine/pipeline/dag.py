"""A spec's `stages:` compiled into a checked DAG, before any model is loaded.

Edges come from references: a template using `{{ problem.text }}`, a judge `target:`, a verify
`target:`/`against:`, a filter expression reading `check.agree`, and `after:`. The first stage
listed is the entry: a generate stage that reads no other stage; the plan holds its prompts.
Every error is one line at the stage's position in the spec file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generator.config.seed_data import SeedTopics
from generator.config.stages import (AgentStage, ConversationStage, DifficultyStage, FilterStage, GenerateStage,
                                     JudgeStage, Stage, VerifyStage)
from generator.config.spec import Spec
from generator.core.errors import SpecError
from generator.engine.pipeline import difficulty, expressions
from generator.library.prompt_template import Template

# what later stages (templates, expressions) may read of each kind of stage
GENERATE_FIELDS = {"text", "json", "texts", "prompt", "model", "status", "completion_tokens", "reasoning",
                   "reasoning_tokens"}
VERIFY_FIELDS = {"passed", "agree", "answer", "majority", "reason", "status", "pass_rate", "verdicts", "kept",
                 "reference"}
FILTER_FIELDS = {"passed", "reason", "status"}
COMPARE_FIELDS = {"winner", "chosen", "rejected", "reason", "status"}
# conversation/agent stages: `Trajectory.view()`, and an agent's check of its final answer
DIALOGUE_FIELDS = {"text", "messages", "status", "reason", "steps", "turns", "tool_calls", "failed_calls",
                   "completion_tokens", "model"}
AGENT_FIELDS = DIALOGUE_FIELDS | {"passed", "answer", "expected"}
DIALOGUE_KINDS = ("conversation", "agent")
STOP_FIELDS = {"turn", "user", "assistant", "chars", "completion_tokens"}  # what `stop.expr` reads
SINGLE_STAGE = "generate"  # the one node of a single-stage spec (and its stage in the usage ledger)
ROW_FIELDS = {"topic", "subtopic", "level", "topic_id", "template", "model", "generation", "seed_id",
              "attempt"}


@dataclass
class StageNode:
    cfg: Any  # one of the stage models in generator.config.stages
    index: int
    deps: set[str] = field(default_factory=set)
    templates: list[tuple[Template, float]] = field(default_factory=list)
    roles: dict[str, Template] = field(default_factory=dict)  # conversation: user/assistant; agent: task
    # judge and verify stages: what they read of their target: a generate stage's `answer`, or a
    # conversation's or agent's `transcript` (set once the kinds are checked)
    judged: str = "answer"
    origin: Any = None  # the difficulty stage this stage was compiled from (generator.engine.pipeline.difficulty)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def kind(self) -> str:
        return self.cfg.kind

    def fields(self) -> set[str]:
        c = self.cfg
        if isinstance(c, GenerateStage):
            return GENERATE_FIELDS
        if isinstance(c, ConversationStage):
            return DIALOGUE_FIELDS
        if isinstance(c, AgentStage):
            return AGENT_FIELDS
        if isinstance(c, JudgeStage):
            if c.compare:
                return COMPARE_FIELDS
            per_turn = {"turn_scores", "turn_reasons", "turn_min"} if c.per_turn else set()
            return {cr.name for cr in c.criteria} | {"mean", "reasons", "status"} | per_turn
        return VERIFY_FIELDS if isinstance(c, VerifyStage) else FILTER_FIELDS

    def schema(self) -> dict | None:
        return self.templates[0][0].output_schema if self.templates else None


@dataclass
class Pipeline:
    nodes: dict[str, StageNode]   # in run order (topological, ties in listing order)
    entry: str
    output: str
    ancestors: dict[str, set[str]]
    descendants: dict[str, set[str]]
    gates: dict[str, set[str]] = field(default_factory=dict)  # stage -> checks it also waits for
    single: bool = False  # a single-stage spec: rows keep the plain generation schema
    tools: dict[str, Any] = field(default_factory=dict)  # the spec's `tools:` by name (ToolDef)
    decontam: Any = None  # a decontam.Decontaminator when the spec has `decontaminate:`
    difficulty: dict[str, Any] = field(default_factory=dict)  # difficulty stage name -> its DifficultyStage

    def waits_for(self, name: str) -> set[str]:
        return self.nodes[name].deps | self.gates.get(name, set())

    @property
    def order(self) -> list[str]:
        return list(self.nodes)

    def models_used(self, default: str) -> set[str]:
        used = {getattr(n.cfg, "model", None) or default for n in self.nodes.values()
                if n.kind in ("generate", "judge", "agent")}
        for n in self.nodes.values():
            if isinstance(n.cfg, ConversationStage):
                used |= {n.cfg.user.model or default, n.cfg.assistant.model or default}
            if isinstance(n.cfg, AgentStage):  # simulated tools ask a model too
                used |= {t.simulate.model or default for t in (self.tools.get(x) for x in n.cfg.tools)
                         if t is not None and t.simulate is not None}
        return used


def _error(spec: Spec, path: tuple, message: str) -> SpecError:
    if spec._located is not None:
        return spec._located.error(path, message)
    return SpecError(message, file=spec.file)


def _references(node: StageNode, names: set[str]) -> dict[str, tuple]:
    """Stage names this stage reads -> the spec key (relative to the stage) that names it."""
    c = node.cfg
    refs: dict[str, tuple] = {}
    for tpl, _ in node.templates:
        for v in sorted(tpl.referenced_variables() & names):
            refs.setdefault(v, ("template",) if isinstance(c, GenerateStage) and c.template else ("templates",))
    for role, tpl in node.roles.items():
        key = {"user": ("user", "template"), "assistant": ("assistant", "template")}.get(role, ("template",))
        for v in sorted(tpl.referenced_variables() & names):
            refs.setdefault(v, key)
    if isinstance(c, AgentStage) and c.expect is not None:
        for key, text in expect_texts(c):
            for v in sorted(jinja_refs(text) & names):
                refs.setdefault(v, key)
    for key in ("target", "against", "instruction"):
        value = getattr(c, key, None)
        if value:
            refs.setdefault(value, (key,))
    if getattr(c, "reference", None):
        for v in sorted(jinja_refs(c.reference) & names):
            refs.setdefault(v, ("reference",))
    for j, value in enumerate(getattr(c, "compare", None) or []):
        refs.setdefault(value, ("compare", j))
    if isinstance(c, FilterStage):
        for path in expressions.parse(c.expr).refs:
            if path[0] not in ROW_FIELDS:
                refs.setdefault(path[0], ("expr",))
    for j, value in enumerate(c.after):
        refs.setdefault(value, ("after", j))
    return refs


def expect_texts(c: AgentStage) -> list[tuple[tuple, str]]:
    """(spec key relative to the stage, Jinja text) of an agent's `expect` value and arguments."""
    e = c.expect
    if e is None:
        return []
    if e.value is not None:
        return [(("expect", "value"), e.value)]
    return [(("expect", "arguments", k), v) for k, v in e.arguments.items() if isinstance(v, str)]


def jinja_refs(text: str) -> set[str]:
    from jinja2 import meta

    from generator.library.sandbox import sandbox

    return meta.find_undeclared_variables(sandbox().parse(text))


def _toposort(spec: Spec, nodes: dict[str, StageNode]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            node = nodes[visiting[-1]]
            raise _error(spec, ("stages", node.index), f"stages form a cycle: {' -> '.join(cycle)}; "
                         f"a stage may only read stages that run before it")
        visiting.append(name)
        for dep in sorted(nodes[name].deps, key=lambda d: nodes[d].index):
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append(name)

    for name in nodes:  # listing order breaks ties
        visit(name)
    return order


def _closure(nodes: dict[str, StageNode]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    ancestors: dict[str, set[str]] = {}
    for name in nodes:  # nodes are in topological order here
        ancestors[name] = set(nodes[name].deps).union(*(ancestors[d] for d in nodes[name].deps))
    descendants = {n: {m for m in nodes if n in ancestors[m]} for n in nodes}
    return ancestors, descendants


def build(spec: Spec, load_templates, load_roles=None) -> Pipeline:
    """Compile and check `spec.stages`. `load_templates(stage_index, refs)` resolves a generate
    stage's templates to `[(Template, weight)]` (raising the spec's usual error); `load_roles(stage_index)`
    a conversation or agent stage's templates by role."""
    stages: list[Stage] = list(spec.stages or [])
    nodes: dict[str, StageNode] = {}
    compiled = [(i, s, d) for i, d in enumerate(stages)
                for s in (difficulty.expand(d) if isinstance(d, DifficultyStage) else [d])]
    for i, s, d in compiled:
        if s.name in nodes:
            made = f" (made by difficulty stage '{d.name}')" if s is not d else ""
            raise _error(spec, ("stages", i, "name"), f"stage name '{s.name}'{made} is used twice; rename one")
        node = StageNode(cfg=s, index=i, origin=d if s is not d else None)
        if isinstance(s, VerifyStage) and s.check == "reasoning_gym" and not _gym_seeds(spec):
            raise _error(spec, ("stages", i, "check"), f"stage '{d.name}': check: reasoning_gym scores the "
                         f"problems of a reasoning_gym seeds source, and the spec has none; add "
                         f"`- seeds: {{reasoning_gym: {{task: ..., size: ...}}}}` to `topics:`")
        if isinstance(s, GenerateStage):
            node.templates = load_templates(i, s.template_refs())
        if isinstance(s, (ConversationStage, AgentStage)):
            node.roles = dict(load_roles(i)) if load_roles is not None else {}
            _check_dialogue(spec, s, i)
        if isinstance(s, FilterStage):
            try:
                expressions.parse(s.expr)
            except expressions.ExpressionError as exc:
                raise _error(spec, ("stages", i, "expr"), f"filter '{s.name}': {exc}; "
                             f"docs/pipelines.md lists what an expression may use") from None
        nodes[s.name] = node
    names = set(nodes)
    models = {m.name for m in spec.models}
    for node in nodes.values():
        for ref, key in _references(node, names | _all_refs(node)).items():
            if ref not in names:
                raise _error(spec, ("stages", node.index, *key), f"stage '{node.name}' refers to '{ref}', "
                             f"which is no stage; stages are: {', '.join(nodes)}")
            if ref == node.name:
                raise _error(spec, ("stages", node.index, *key), f"stage '{node.name}' refers to itself")
            node.deps.add(ref)
        model = getattr(node.cfg, "model", None)
        if model is not None and model not in models:
            key = ("solvers" if node.origin.solvers else "solver") if node.origin is not None else "model"
            raise _error(spec, ("stages", node.index, key), f"model '{model}' is not in `models:` "
                         f"({', '.join(sorted(models))}); add it there or fix the name")
        if getattr(node.cfg, "max_reasoning_tokens", None) is not None:
            _check_budget(spec, node, model)
        if getattr(node.cfg, "keep", None) is not None and nodes[node.cfg.target].kind != "generate":
            raise _error(spec, ("stages", node.index, "keep"), f"`keep:` turns the samples of a generate stage "
                         f"into rows; '{node.cfg.target}' is a {nodes[node.cfg.target].kind} stage")
    order = _toposort(spec, nodes)
    nodes = {n: nodes[n] for n in order}
    ancestors, descendants = _closure(nodes)
    first = compiled[0][1]  # a difficulty stage first: its (strong) solver's tries
    if not isinstance(first, GenerateStage) or nodes[first.name].deps:
        raise _error(spec, ("stages", 0), "the first stage must be a generate stage that reads no other "
                     "stage (its prompts are the plan)")
    for node in nodes.values():
        _check_kinds(spec, node, nodes, ancestors)
    output = _output_stage(spec, nodes)
    return Pipeline(nodes=nodes, entry=first.name, output=output, ancestors=ancestors, descendants=descendants,
                    gates=_gates(nodes, ancestors, descendants), tools={t.name: t for t in spec.tools},
                    difficulty={d.name: d for d in stages if isinstance(d, DifficultyStage)})


def _gym_seeds(spec: Spec) -> bool:
    return any(isinstance(src, SeedTopics) and not isinstance(src.seeds, str) for src in spec.topics)


def _check_budget(spec: Spec, node: StageNode, model: str | None) -> None:
    """A thinking budget is enforced by the offline engine, for a model whose reasoning markers it knows."""
    for m in spec.models:
        if model is not None and m.name != model:
            continue
        if m.reasoning is None or m.backend != "vllm":
            why = "has no `reasoning:` markers" if m.reasoning is None else f"runs on backend: {m.backend}"
            raise _error(spec, ("stages", node.index, "max_reasoning_tokens"), f"stage '{node.name}' sets a "
                         f"thinking budget, but model '{m.name}' {why}; the budget needs an offline (backend: "
                         f"vllm) model with `reasoning:` (e.g. reasoning: deepseek_r1), or remove it")


def _check_dialogue(spec: Spec, s: Any, i: int) -> None:
    """A conversation's `stop.expr` parses and reads only what it is given; an agent's `expect`
    texts are valid Jinja."""
    import jinja2

    if isinstance(s, ConversationStage) and s.stop.expr is not None:
        try:
            refs = expressions.parse(s.stop.expr).refs
        except expressions.ExpressionError as exc:
            raise _error(spec, ("stages", i, "stop", "expr"), f"conversation '{s.name}': {exc}; "
                         f"docs/pipelines.md lists what an expression may use") from None
        bad = sorted({".".join(p) for p in refs if p[0] not in STOP_FIELDS or len(p) > 1})
        if bad:
            raise _error(spec, ("stages", i, "stop", "expr"), f"conversation '{s.name}': `stop.expr` reads "
                         f"{', '.join(bad)}; it may read {', '.join(sorted(STOP_FIELDS))}")
    if isinstance(s, AgentStage):
        for key, text in expect_texts(s):
            try:
                jinja_refs(text)
            except jinja2.TemplateSyntaxError as exc:
                raise _error(spec, ("stages", i, *key), f"agent '{s.name}': not a valid Jinja text ({exc.message}); "
                             f"fix the expression") from None


def single_stage(templates: list[tuple[Template, float]]) -> Pipeline:
    """A spec without `stages:` as a one-node pipeline: its entry stage is the whole run."""
    cfg = GenerateStage(kind="generate", name=SINGLE_STAGE, template="(the spec's templates)")
    node = StageNode(cfg=cfg, index=0, templates=list(templates))
    return Pipeline(nodes={SINGLE_STAGE: node}, entry=SINGLE_STAGE, output=SINGLE_STAGE,
                    ancestors={SINGLE_STAGE: set()}, descendants={SINGLE_STAGE: set()}, single=True)


def _gates(nodes: dict[str, StageNode], ancestors: dict[str, set[str]], descendants: dict[str, set[str]]
           ) -> dict[str, set[str]]:
    """A stage that a check's regeneration would throw away, and that the check does not need,
    waits for the check to pass (e.g. a judge beside an answer-agreement check). Nothing is then
    paid for an attempt already rejected, and the requests of a run depend on the answers alone,
    not on which answer happened to land first. A gate that would close a cycle is left out."""
    gates: dict[str, set[str]] = {n: set() for n in nodes}

    def reaches(a: str, b: str) -> bool:  # does `a` (transitively) wait for `b`?
        stack, seen = [a], set()
        while stack:
            x = stack.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                stack.extend(nodes[x].deps | gates[x])
        return False

    for s, node in nodes.items():
        rule = node.cfg.on_reject
        if rule is None:
            continue
        for x in sorted(descendants[rule.regenerate] - ancestors[s] - descendants[s] - {s}):
            if not reaches(s, x):
                gates[x].add(s)
    return gates


def _all_refs(node: StageNode) -> set[str]:
    """Names a stage points at explicitly (so a typo is reported, not ignored)."""
    c = node.cfg
    out = set(c.after) | set(getattr(c, "compare", None) or [])
    out |= {v for v in (getattr(c, k, None) for k in ("target", "against", "instruction")) if v}
    if isinstance(c, FilterStage):
        out |= {p[0] for p in expressions.parse(c.expr).refs if p[0] not in ROW_FIELDS}
    return out


def _check_kinds(spec: Spec, node: StageNode, nodes: dict[str, StageNode], ancestors: dict[str, set[str]]) -> None:
    c = node.cfg
    where = ("stages", node.index)
    _check_targets(spec, node, nodes)
    if isinstance(c, FilterStage):
        for path in expressions.parse(c.expr).refs:
            if path[0] in ROW_FIELDS:
                continue
            fields = nodes[path[0]].fields()
            if len(path) == 1 or path[1] not in fields:
                raise _error(spec, (*where, "expr"), f"filter '{node.name}' reads '{'.'.join(path)}'; "
                             f"stage '{path[0]}' has {', '.join(sorted(fields))}")
    if c.on_reject is not None:
        target = c.on_reject.regenerate
        if target not in nodes:
            raise _error(spec, (*where, "on_reject", "regenerate"), f"`regenerate: {target}` is no stage; "
                         f"stages are: {', '.join(nodes)}")
        if nodes[target].kind not in ("generate", *DIALOGUE_KINDS):
            raise _error(spec, (*where, "on_reject", "regenerate"), f"`regenerate: {target}` must name a "
                         f"generate, conversation or agent stage")
        if target != node.name and target not in ancestors[node.name]:
            raise _error(spec, (*where, "on_reject", "regenerate"), f"`regenerate: {target}` does not "
                         f"precede '{node.name}'; name a stage it reads (directly or through others)")


def _check_targets(spec: Spec, node: StageNode, nodes: dict[str, StageNode]) -> None:
    """A judge or verify target is a generate stage's answer or a conversation's or agent's
    transcript; `against` a generate stage's samples; both compared stages of one family."""
    c = node.cfg
    where = ("stages", node.index)
    target = getattr(c, "target", None)
    if target and nodes[target].kind not in ("generate", *DIALOGUE_KINDS):
        raise _error(spec, (*where, "target"), f"`target: {target}` must name a generate, conversation or "
                     f"agent stage ('{target}' is a {nodes[target].kind} stage)")
    against = getattr(c, "against", None)
    if against and nodes[against].kind != "generate":
        raise _error(spec, (*where, "against"), f"`against: {against}` must name a generate stage")
    compared = getattr(c, "compare", None) or []
    for j, ref in enumerate(compared):
        if nodes[ref].kind not in ("generate", *DIALOGUE_KINDS):
            raise _error(spec, (*where, "compare", j), f"`compare` must name generate, conversation or agent "
                         f"stages ('{ref}' is a {nodes[ref].kind} stage)")
    if compared and (nodes[compared[0]].kind == "generate") != (nodes[compared[1]].kind == "generate"):
        raise _error(spec, (*where, "compare"), "`compare` names a generate stage and a conversation/agent "
                     "stage; compare two answers or two transcripts")
    judged = target or (compared[0] if compared else None)
    if judged and nodes[judged].kind in DIALOGUE_KINDS:
        node.judged = "transcript"
    if isinstance(c, JudgeStage) and c.per_turn and node.judged != "transcript":
        raise _error(spec, (*where, "per_turn"), f"`per_turn: true` scores assistant turns, and '{target}' is a "
                     f"generate stage; name a conversation or agent stage or remove `per_turn`")
    if isinstance(c, VerifyStage) and c.scope is not None and node.judged != "transcript":
        raise _error(spec, (*where, "scope"), f"`scope` picks turns of a conversation or agent stage, and "
                     f"'{target}' is a generate stage; remove `scope`")


def _output_stage(spec: Spec, nodes: dict[str, StageNode]) -> str:
    marked = [n for n in nodes.values() if isinstance(n.cfg, GenerateStage) and n.cfg.output]
    if len(marked) > 1:
        raise _error(spec, ("stages", marked[1].index, "output"), "only one stage may set `output: true`")
    if marked:
        return marked[0].name
    tries = [n for n in nodes.values() if n.origin is not None and n.name == difficulty.names(n.origin)["solve"]]
    if tries:  # a difficulty stage's tries: its problems' prompts and correct answers are the rows
        return tries[-1].name
    single = [n for n in sorted(nodes.values(), key=lambda n: n.index)
              if isinstance(n.cfg, GenerateStage) and n.cfg.n == 1 or n.kind in DIALOGUE_KINDS]
    return (single or [nodes[next(iter(nodes))]])[-1].name
