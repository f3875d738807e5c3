"""The spec: a YAML file that says what to generate, with which prompts, models and seed.

Loading is strict: unknown keys, duplicate keys, wrong types and missing files all fail with
one line naming `file:line:col` and the fix. Pydantic models hold the shape; `load_spec`
maps every validation error back to the position it came from.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from generator.core.confine import LIBRARY_KINDS, Confinement, check_allowed_dir, project_root
from generator.core.errors import SpecError
from generator.config.overrides import apply_overrides
from generator.config.base import SamplingOverride, Strict, TemplateRef, data_path, format_error
from generator.config.decontaminate import DecontaminateConfig
from generator.config.models import ModelConfig
from generator.config.seed_data import SeedTopics
from generator.config.stages import AgentStage, Stage
from generator.config.target import BudgetConfig, TargetConfig
from generator.config.tools import ToolDef
from generator.core.yaml_loader import Located, load_yaml

__all__ = ["SamplingOverride", "Strict", "TemplateRef", "SeedTopics", "Stage", "ToolDef"]

MAX_RECORDS = 1_000_000  # default bound on a plan (docs/security.md): more needs run.max_records


class SamplingConfig(Strict):
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Softmax temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(512, ge=1, le=131072, description="Most tokens to generate per record.")
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=2.0, description="vLLM's repetition penalty (> 1 discourages repeating tokens already in the "
        "prompt or answer; unset: the engine's 1.0). Sent to OpenAI-compatible servers as `repetition_penalty`, "
        "which vLLM's server reads.")


class TreeTopics(Strict):
    tree: str = Field(description="Topic tree file: a name under topics/ or a path.")
    under: list[str] | None = Field(None, description="Restrict to subtrees (' / '-joined paths).")
    depth: int | None = Field(None, ge=1, description="Cells are nodes at this depth; default: leaves.")
    sample: int | None = Field(None, ge=1, description="Draw this many cells by weight (stable as it grows).")
    weight: float = Field(1.0, gt=0)


class InlineTopic(Strict):
    topic: str
    subtopic: str | None = None
    keywords: list[str] = Field(default_factory=list)
    level: str | None = None
    weight: float = Field(1.0, gt=0)


class InlineTopics(Strict):
    items: list[Union[InlineTopic, str]] = Field(min_length=1)
    weight: float = Field(1.0, gt=0)


class PersonaConfig(Strict):
    file: str = Field("core", description="Persona set: a name under personas/ or a .jsonl path.")
    sample: int | None = Field(None, ge=1, description="Size of the persona pool drawn from the file.")


class ScoringConfig(Strict):
    metrics: list[str] = Field(default_factory=lambda: ["distinct_n", "compression_ratio", "near_dup_rate", "vendi"],
                               description="Metric names (`synthgen score --help` lists them).")
    by: list[Literal["topic", "persona", "template", "model"]] = Field(
        default_factory=list, description="Also score per group.")
    sample: int | None = Field(None, ge=2, description="Score a seeded sample of this many rows.")
    embedder: Literal["static", "minilm"] = "static"

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]):
        from scoring.metrics import available

        unknown = [m for m in v if m not in available()]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(unknown)}; choose from {', '.join(available())}")
        return v


class AllocatorConfig(Strict):
    """How a rounds run spends each round's generations over the topic cells (docs/feedback.md)."""

    rule: Literal["ucb", "thompson", "uniform"] = Field(
        "ucb", description="ucb: upper confidence bound on each cell's yield; thompson: seeded Thompson "
        "sampling from a Gaussian posterior of the yield; uniform: the cells' weights, ignoring yield "
        "(the baseline: no saturation caps, no pool growth).")
    value: Literal["per_generation", "per_token"] = Field(
        "per_generation", description="What a cell's and a template's expected yield is divided by: "
        "per_generation (each generation costs the same) or per_token (the tokens a record costs there, "
        "rejected attempts and every stage included, from the round files' `costs`: a cell whose "
        "answers are twice as long, or that needs twice the attempts to pass, is worth half as much). "
        "per_token spends a token or money budget where it buys the most accepted, diverse records.")
    exploration: float = Field(1.0, ge=0, description="Width of the UCB bonus / Thompson posterior, in "
                               "units of the pooled standard deviation of per-generation yield.")
    min_per_cell: int = Field(1, ge=0, description="Generations every active, unsaturated cell gets each "
                              "round (as far as the round's slice allows).")
    max_per_cell: int | None = Field(None, ge=1, description="Cap on a cell's total generations.")
    reexplore_after: int = Field(2, ge=1, description="A cell (saturated ones included) that got nothing for "
                                 "this many rounds in a row is re-explored with max(1, min_per_cell) "
                                 "generations, so no cell is dropped forever on one noisy round.")
    saturation: bool = Field(True, description="Stop adding generations to a cell once its within-cell "
                             "diversity (Vendi of its texts) at G+dG is not above its value at G.")
    saturation_tol: float = Field(0.0, ge=0, description="Within-cell Vendi must rise by more than this "
                                  "for the cell to count as still growing.")
    discount: float = Field(0.5, ge=0, le=1, description="Weight of a cell's yields from one round earlier "
                            "(0: only the latest round counts; 1: all rounds count equally).")
    prior_weight: float | None = Field(None, gt=0, description="Pseudo-generations at the pooled values that "
                                       "shrink each cell's usable rate and novelty (its expected yield is their "
                                       "product). Unset: estimated each round (empirical Bayes: noise variance "
                                       "/ between-cell variance), so cells that differ only by noise are "
                                       "treated alike.")
    grow_topics: bool = Field(True, description="When global diversity stalls (gain < rounds.min_gain), "
                              "raise the `sample:` of tree sources to bring in unused topic cells.")
    grow_by: int = Field(4, ge=1, description="Topic cells added per stall (over all growable sources).")
    grow_personas: bool = Field(True, description="When global diversity stalls, also raise "
                                "`personas.sample` (when the spec samples personas).")
    grow_personas_by: int = Field(16, ge=1, description="Personas added to the pool per stall.")
    adapt_templates: bool = Field(True, description="From round 2 on, re-weight the template mix of the "
                                  "next round by each template's expected yield per generation spent (usable "
                                  "rate x novelty, shrunk like the cells'); weights are stored with the round. "
                                  "The uniform rule never re-weights.")
    template_power: float = Field(1.0, ge=0, description="Sharpness of the re-weighting: a template's new "
                                  "weight is its spec weight x (expected yield)^template_power (0: keep the "
                                  "spec weights; 1: proportional to yield; larger: closer to the best one).")
    template_prior: float | None = Field(2.0, gt=0, description="Pseudo-generations at the pooled usable "
                                         "rate and novelty that shrink each template's estimate. Unset: "
                                         "estimated by empirical Bayes like the cells' (with a handful of "
                                         "templates and a few generations each that estimate mostly says "
                                         "'no difference'). Template history is not discounted: a template's "
                                         "usable rate is a property of its layout and the model, so every "
                                         "round's generations count fully.")
    template_floor: float = Field(0.25, ge=0, le=1, description="A template's share never falls below this "
                                  "fraction of its spec share, so no template starves and a bad early "
                                  "estimate can recover.")
    yield_metric: Literal["novelty", "cell_novelty"] = Field(
        "novelty", description="Per-generation yield: cosine distance (static embeddings) to the nearest "
        "other text of the whole run (novelty) or of the same cell (cell_novelty); zero for flagged rows "
        "(truncated, empty, invalid_json, error, refused) and MinHash near duplicates.")


class RoundsConfig(Strict):
    """Generate in rounds; between rounds, measure per-cell yield and re-allocate (docs/feedback.md)."""

    count: int = Field(3, ge=1, description="Number of rounds (at most; the loop may stop earlier).")
    budget: int = Field(ge=1, description="Total generations across all rounds (never exceeded).")
    first_round_share: float = Field(0.34, gt=0, le=1, description="Share of the budget spent in round 1, "
                                     "over the active cells by weight; the rest is split evenly over the "
                                     "later rounds.")
    target: float | None = Field(None, description="Stop once the tracked global score reaches this.")
    min_gain: float | None = Field(None, description="A round that adds less than this to the tracked score "
                                   "is a stall: the pool grows if it can, otherwise the loop stops.")
    score: Literal["vendi", "mean_cosine_distance", "cluster_proxy"] = Field(
        "vendi", description="Tracked global diversity score over all ok generations.")
    embedder: Literal["static", "minilm", "hash"] = Field(
        "static", description="Embeddings for yields and the tracked score (static: fast distilled MiniLM).")
    allocator: AllocatorConfig = Field(default_factory=AllocatorConfig)
    signal: Literal["novelty", "judge"] = Field(
        "novelty", description="Each cell's quality signal. novelty: usable rate x novelty (for a pipeline a "
        "record is usable when it passed every stage, so the usable rate is the pass rate); judge: each "
        "record's novelty is also scaled by a judge score, (score - 1) / 4, from `signal_column`.")
    signal_column: str | None = Field(None, description="signal: judge: the score column of a pipeline's judge "
                                      "stage, e.g. quality.mean or quality.correctness.")

    @model_validator(mode="after")
    def _signal_column(self):
        if self.signal == "judge" and not self.signal_column:
            raise ValueError("rounds.signal: judge needs `signal_column:` (e.g. quality.mean)")
        return self


class RunConfig(Strict):
    shard_size: int = Field(64, ge=1, description="Records per output shard (one atomic Parquet file).")
    retries: int = Field(2, ge=0, description="Extra attempts for empty, invalid-JSON or failed outputs.")
    window: int | None = Field(None, ge=1, description="Most requests in an offline engine at once (default: as "
                               "many as it schedules); each finished one is replaced at once. Also the records per "
                               "batch the Ray executor hands an actor (default 256).")
    stall_timeout: float | None = Field(1800, gt=0, description="Seconds without any answer or check result, "
                                        "while records wait on them, before the run stops with one line naming "
                                        "a waiting record and stage (null: wait forever; batch backends never stall).")
    max_open: int = Field(4096, ge=1, description="Records in progress at once (planned records are read in "
                          "as earlier ones finish, so memory does not grow with the plan).")
    max_records: int = Field(MAX_RECORDS, ge=1, le=10**12, description="Largest plan allowed; a spec that plans "
                             "more fails at validate. Raise it explicitly for a larger run.")


class Spec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    topics: list[Union[TreeTopics, InlineTopics, SeedTopics]] = Field(min_length=1)
    generations_per_topic: int = Field(1, ge=1)
    personas: PersonaConfig | None = None
    templates: list[TemplateRef] = Field(default_factory=list, description="Templates drawn by weight "
                                         "per record (a spec with `stages:` names them in its stages).")
    stages: list[Stage] | None = Field(None, min_length=1, description="A multi-stage pipeline "
                                       "(docs/pipelines.md); without it, one generate stage of `templates:`.")
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    tools: list[ToolDef] = Field(default_factory=list, description="Functions agent stages may call: "
                                 "OpenAI-style definitions, each with one implementation (docs/conversations.md).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    vars: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    run: RunConfig = Field(default_factory=RunConfig)
    scoring: ScoringConfig | None = None
    rounds: RoundsConfig | None = None
    target: TargetConfig | None = Field(None, description="Run until this many records are accepted "
                                        "(docs/targets.md); --target N sets `accepted`.")
    budget: BudgetConfig | None = Field(None, description="What the run may spend: records, calls, tokens, "
                                        "cost, seconds (docs/targets.md); `rounds.budget` stays in generations.")
    mix: dict[str, Any] | None = Field(None, description="Training-mix export; see docs/mix.md.")
    decontaminate: DecontaminateConfig | None = Field(None, description="Check answers, prompts or seed rows "
                                                      "against benchmark sets; see docs/decontamination.md.")
    allow_paths: list[str] = Field(default_factory=list, description="Folders outside the project root "
                                   "that templates, topics and personas may come from (docs/security.md).")

    # set by the loader, not part of the YAML
    _file: Path | None = None
    _located: Located | None = None
    _cli_allow: tuple[str, ...] = ()  # --allow-path folders (command line), checked like allow_paths

    @field_validator("vars")
    @classmethod
    def _vars_do_not_shadow(cls, v: dict[str, Any]):
        reserved = {"topic", "subtopic", "keywords", "level", "topic_path", "topics", "persona", "personas"}
        clash = sorted(set(v) & reserved)
        if clash:
            raise ValueError(f"vars may not redefine {', '.join(clash)}: the plan provides them; rename them")
        return v

    @model_validator(mode="after")
    def _templates_or_stages(self):
        if self.stages is None and not self.templates:
            raise ValueError("missing required key 'templates'; add templates: (- template: NAME), or `stages:` "
                             "for a pipeline")
        if self.rounds is not None and self.rounds.signal == "judge" and self.stages is None:
            raise ValueError("rounds.signal: judge reads a judge stage's scores; it needs `stages:`")
        if self.stages is not None and self.templates:
            raise ValueError("a spec with `stages:` names its templates in the stages; remove `templates:`")
        if self.rounds is not None and self.target is not None:
            raise ValueError("`target:` and `rounds:` do not combine yet: a target plans its own increments; "
                             "remove one of them")
        return self

    @model_validator(mode="after")
    def _tools_named(self):
        names = [t.name for t in self.tools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tools: '{twice[0]}' is defined twice; give each tool its own name")
        for stage in self.stages or []:
            if not isinstance(stage, AgentStage):
                continue
            for name in stage.tools:
                if name not in names:
                    raise ValueError(f"stage '{stage.name}': tool '{name}' is not in `tools:`; define it there "
                                     f"({', '.join(names) or 'no tools defined'})")
            if stage.expect is not None and stage.expect.tool is not None and stage.expect.tool not in names:
                raise ValueError(f"stage '{stage.name}': expect.tool '{stage.expect.tool}' is not in `tools:`; "
                                 f"define it there")
        return self

    @property
    def file(self) -> Path | None:
        return self._file

    @property
    def base_dir(self) -> Path | None:
        return self._file.parent if self._file else None

    @property
    def project_root(self) -> Path:
        """The spec's folder, or its parent when the spec lives in `specs/` (docs/security.md)."""
        return project_root(self._file) if self._file else Path.cwd()

    def confinement(self) -> Confinement:
        """The folders this spec may read prompt files from; refuses disallowed `allow_paths`."""
        from generator.core.paths import builtin_root

        root = self.project_root
        allowed: list[Path] = []
        for i, raw in enumerate(self.allow_paths):
            try:
                allowed.append(check_allowed_dir(raw, root, from_spec=True))
            except ValueError as exc:
                msg = f"allow_paths: {exc}"
                if self._located is not None:
                    raise self._located.error(("allow_paths", i), msg) from None
                raise SpecError(msg, file=self._file) from None
        for raw in self._cli_allow:
            try:
                allowed.append(check_allowed_dir(raw, Path.cwd(), from_spec=False))
            except ValueError as exc:
                raise SpecError(f"--allow-path: {exc}") from None
        return Confinement(project=root, builtin=tuple(builtin_root(k) for k in LIBRARY_KINDS),
                           allowed=tuple(allowed))

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        if not data["tools"]:
            del data["tools"]  # specs without tools keep the hash they had before `tools:` existed
        if data.get("decontaminate") is None:
            del data["decontaminate"]  # likewise for specs without `decontaminate:`
        if (data.get("rounds") or {}).get("allocator", {}).get("value") == "per_generation":
            del data["rounds"]["allocator"]["value"]  # rounds runs keep the hash they had before `value:`
        for key in ("target", "budget"):  # how far a run goes, not what a record is
            data.pop(key, None)
        for entry in [*data["models"], *data["topics"]]:
            entry.pop("license", None)  # a stated licence changes the card, not what is generated
        return json.dumps(data, sort_keys=True)

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.name}")


def _best_error(exc: ValidationError, data: Any) -> dict:
    """The error to show. Union members (TreeTopics | InlineTopics) each fail: pick the member the
    user meant (the one with the fewest unknown and missing keys), then an unknown key in it first."""
    errors = exc.errors()

    def member(e: dict) -> str:  # the first location part that is not in the data: a union member
        loc = tuple(e.get("loc", ()))
        kept = data_path(data, e)
        return next((str(p) for p, q in zip(loc, kept + (None,) * len(loc)) if p != q), "")

    groups: dict[str, list[dict]] = {}
    for e in errors:
        groups.setdefault(member(e), []).append(e)
    shared = groups.pop("", [])
    if groups:
        best = min(groups.values(), key=lambda g: (sum(e.get("type") in ("extra_forbidden", "missing")
                                                       for e in g), len(g)))
        errors = shared + best
    for e in errors:
        if e.get("type") == "extra_forbidden":
            return e
    return errors[0]


def parse_spec(doc: Located, overrides: dict[str, Any] | None = None) -> Spec:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a spec must be a YAML mapping (name:, topics:, templates:, ...); start from `synthgen init` or specs/tiny.yaml")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        err = _best_error(exc, data)
        path = data_path(data, err)
        raise doc.error(path, format_error(err, path)) from None
    if spec.mix is not None:  # checked now, with positions, rather than when the mix is built
        from generator.config.mix import mix_config_from_dict

        mix_config_from_dict(spec.mix, located=doc, prefix=("mix",))
    spec._file = doc.file
    spec._located = doc
    spec.confinement()  # a refused `allow_paths:` entry fails at load, with its line
    return spec


def spec_file(path: str | Path) -> Path:
    """The file a spec argument names: the path, or a built-in spec (`specs/tiny.yaml`, `tiny`)."""
    path = Path(path)
    if not path.exists():
        from generator.core.paths import builtin_root

        builtin = builtin_root("specs") / path.name
        if path.parent == Path(".") or not path.is_absolute():
            alt = builtin if builtin.exists() else builtin.with_suffix(".yaml")
            if alt.exists() and path.parts[0] in ("specs", path.name):
                path = alt
    return path


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None,
              allow_paths: tuple[str, ...] | list[str] = (), located: Located | None = None) -> Spec:
    """Load and validate a spec's shape (files and templates are checked by `validate_spec`).
    `located`: the file already parsed (by a caller that looked at it first)."""
    spec = parse_spec(located if located is not None else load_yaml(spec_file(path)), overrides)
    if allow_paths:
        spec._cli_allow = tuple(str(p) for p in allow_paths)
        spec.confinement()
    return spec


def json_schema() -> dict:
    schema = Spec.model_json_schema()
    schema["title"] = "synthgen spec"
    return schema
