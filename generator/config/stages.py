"""Pipeline stages in the spec: `stages:` is a list of named steps that form a DAG through the
references between them (a template using `{{ problem.text }}`, a verify `target:`, a filter
expression naming `check.agree`, an explicit `after:`). See docs/pipelines.md.

Shape only: names, references, cycles and template variables are checked against each other by
`generator.engine.pipeline.dag` (still before any model is loaded).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from generator.config.base import SamplingOverride, Strict, TemplateRef

STAGE_NAME = r"^[a-z_][a-z0-9_]*$"
# names a stage may not take: they are plan columns or expression words
RESERVED = {"topic", "subtopic", "keywords", "level", "topic_path", "topics", "persona", "personas",
            "template", "model", "generation", "attempt", "seed_id", "and", "or", "not", "true",
            "false", "none", "in", "is", "text", "json", "status", "prompt"}


class OnReject(Strict):
    """Rejection sampling: a failed check re-runs `regenerate` (and everything after it) with
    fresh deterministic seeds, up to `max_attempts` attempts in all."""

    regenerate: str = Field(description="The stage to re-run: this stage or one it depends on (a generate stage).")
    max_attempts: int = Field(3, ge=1, le=50, description="Attempts per record, the first included.")


class _Stage(Strict):
    name: str = Field(pattern=STAGE_NAME, description="Stage name; later stages refer to its outputs by it.")
    after: list[str] = Field(default_factory=list, description="Extra stages that must finish first.")
    on_reject: OnReject | None = None

    @model_validator(mode="after")
    def _not_reserved(self):
        if self.name in RESERVED:
            raise ValueError(f"stage name '{self.name}' is reserved; choose another name")
        return self


class GenerateStage(_Stage):
    kind: Literal["generate"]
    template: str | None = Field(None, description="Template name or path (or list several in `templates:`).")
    templates: list[TemplateRef] | None = Field(None, description="Templates drawn by weight per record.")
    model: str | None = Field(None, description="A model name from `models:`; default: the record's model.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)
    n: int = Field(1, ge=1, le=32, description="Independent samples per record (e.g. re-solves).")
    max_reasoning_tokens: int | None = Field(
        None, ge=1, description="A thinking budget for a model with `reasoning:` on the offline engine: past "
        "this many reasoning tokens the end marker is forced and the answer follows (`<stage>.reasoning_forced`).")
    output: bool = Field(False, description="This stage's answer is the row's `text`/`completion` "
                         "(default: the last listed generate stage with n: 1, conversation or agent stage).")

    @model_validator(mode="after")
    def _one_template_source(self):
        if (self.template is None) == (self.templates is None):
            raise ValueError("a generate stage needs exactly one of `template:` or `templates:`")
        return self

    def template_refs(self) -> list[TemplateRef]:
        return list(self.templates) if self.templates else [TemplateRef(template=self.template)]


class Criterion(Strict):
    name: str = Field(pattern=STAGE_NAME, description="Column name of the score (`<judge>.<name>`).")
    description: str = Field(description="What a 5 means and what a 1 means, shown to the judge.")


# a judge's own fields: a criterion may not take these names
JUDGE_FIELDS = {"mean", "reasons", "status", "turns", "turn_scores", "turn_reasons", "turn_min"}


class JudgeStage(_Stage):
    kind: Literal["judge"]
    target: str | None = Field(None, description="The stage rated on `criteria`: a generate stage's answer, "
                               "or a conversation's or agent's whole transcript.")
    criteria: list[Criterion] | None = Field(None, min_length=1, description="Rubric: each scored 1-5.")
    compare: list[str] | None = Field(None, min_length=2, max_length=2,
                                      description="Two generate stages whose answers, or two conversation/agent "
                                      "stages whose transcripts, are compared: chosen/rejected.")
    per_turn: bool = Field(False, description="A judged transcript: also score each assistant turn "
                           "(`<judge>.turn_scores`, aligned with the assistant messages).")
    transcript_chars: int = Field(12000, ge=2000, le=1_000_000, description="Characters of transcript the judge "
                                  "is shown at most (two compared transcripts: half each); a longer one is "
                                  "shortened, its middle turns elided (docs/conversations.md).")
    instruction: str | None = Field(None, description="Stage whose text is the instruction shown to the "
                                    "judge (default: the judged stage's own prompt).")
    model: str | None = None
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)

    @model_validator(mode="after")
    def _mode(self):
        if (self.target is None) == (self.compare is None):
            raise ValueError("a judge stage needs `target:` with `criteria:`, or `compare: [A, B]`")
        if self.target is not None and not self.criteria:
            raise ValueError("a judge with `target:` needs `criteria:` (name and description each)")
        if self.compare is not None and self.criteria:
            raise ValueError("`compare:` picks the better answer; remove `criteria:`")
        if self.criteria and len({c.name for c in self.criteria}) != len(self.criteria):
            raise ValueError("criterion names repeat; give each criterion its own name")
        taken = sorted({c.name for c in self.criteria or []} & JUDGE_FIELDS)
        if taken:
            raise ValueError(f"criterion name '{taken[0]}' is a judge column; choose another name")
        if self.per_turn and self.compare is not None:
            raise ValueError("`per_turn` scores the turns of one `target:`; remove it from a `compare:` judge")
        return self


class KeepCorrect(Strict):
    correct: int = Field(ge=1, le=32, description="Keep at most this many correct samples (the first ones).")


EXTRACT = Literal["number", "boxed", "last_line", "text", "answer"]


class VerifyStage(_Stage):
    kind: Literal["verify"]
    check: Literal["agreement", "json_schema", "regex", "function", "reference", "reasoning_gym"]
    target: str = Field(description="The stage whose answer is checked.")
    reference: str | None = Field(None, description="reference: a Jinja string rendered with the record's context "
                                  "(e.g. `{{ problem.json.answer }}`); the target's final answer (`extract`) "
                                  "must equal its own.")
    keep: Literal["all_correct"] | KeepCorrect | None = Field(
        None, description="Check every sample of the target (its `n:`) apart: `<stage>.verdicts`, `pass_rate` "
        "and `kept`; the kept correct samples become rows (`sample` names each), `{correct: k}` the first k, "
        "`all_correct` all of them. A record with fewer than `min_correct` correct is rejected.")
    min_correct: int = Field(1, ge=0, le=32, description="keep: a record with fewer correct samples is rejected "
                             "(0: none is; a later filter on `pass_rate` decides).")
    against: str | None = Field(None, description="agreement: the stage whose samples re-solve the problem.")
    extract: EXTRACT = Field(
        "number", description="agreement, reference, reasoning_gym: how the final answer is taken from each text "
        "(`answer`: inside the last <answer>...</answer>, else a \\boxed{}, else the last line; the default of "
        "check: reasoning_gym).")
    min_score: float = Field(1.0, ge=0, le=1, description="reasoning_gym: the task's own score (0-1) an answer "
                             "must reach to pass.")
    min_agree: int = Field(1, ge=1, description="agreement: re-solves that must match the target's answer.")
    json_schema: dict | None = Field(None, description="json_schema: the schema the target's JSON must satisfy.")
    pattern: str | None = Field(None, description="regex: a Python regular expression searched in the text.")
    scope: Literal["last", "every", "transcript"] | None = Field(
        None, description="regex, json_schema on a conversation or agent stage: the `last` assistant turn "
        "(default), `every` assistant turn, or (regex) the whole rendered `transcript`.")
    function: str | None = Field(None, description="function: `module:function` from the project; called "
                                 "with a dict of the record's columns, returns (passed, reason).")
    timeout: float = Field(10.0, gt=0, le=600, description="function: seconds per call before it fails.")

    @model_validator(mode="after")
    def _fields_for_check(self):
        if self.check == "reasoning_gym" and "extract" not in self.model_fields_set:
            self.extract = "answer"
        need = {"agreement": "against", "json_schema": "json_schema", "regex": "pattern", "function": "function",
                "reference": "reference"}
        key = need.get(self.check)
        if key is not None and getattr(self, key) is None:
            raise ValueError(f"check: {self.check} needs `{key}:`; add it to the stage")
        if self.check == "regex":
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a valid regular expression ({exc}); fix the pattern") from None
        if self.scope is not None and self.check not in ("regex", "json_schema"):
            raise ValueError(f"`scope` chooses the text of a regex or json_schema check; remove it from "
                             f"check: {self.check}")
        if self.scope == "transcript" and self.check != "regex":
            raise ValueError("`scope: transcript` is for regex checks; use last or every")
        if self.check == "function" and ":" not in self.function:
            raise ValueError("`function` must be `module:function` (e.g. checks:is_prime)")
        return self


class DifficultyStage(_Stage):
    """Problems of a calibrated difficulty: solve each problem `k` times, check every try, keep the
    problem when its pass rate lies in the band (docs/pipelines.md). Compiled into a generate stage
    (`<name>_solve`, n: k), a verify stage (`<name>`: verdicts, pass_rate) and a filter (`<name>_band`);
    with two solvers also `<name>_weak_solve` and `<name>_weak`."""

    kind: Literal["difficulty"]
    template: str = Field(description="The solve prompt (template name or path); it reads the problem.")
    solver: str | None = Field(None, description="A model name from `models:` that solves; default: the "
                               "record's model.")
    solvers: list[str] | None = Field(None, min_length=2, max_length=2, description="[strong, weak]: a problem "
                                      "is kept when the strong one's pass rate is at least `strong_min` and the "
                                      "weak one's lies in the band.")
    k: int = Field(8, ge=1, le=32, description="Tries per problem (per solver).")
    keep: tuple[float, float] = Field((0.2, 0.8), description="The band [low, high] of pass rates kept "
                                      "(inclusive); with two solvers, the weak one's.")
    strong_min: float = Field(0.5, ge=0, le=1, description="solvers: the strong solver's least pass rate.")
    check: Literal["reference", "reasoning_gym"] = Field("reference", description="How a try is checked: "
                                                         "against `reference:`, or with the reasoning-gym task's "
                                                         "own scorer (the problems are its seeds).")
    reference: str | None = Field(None, description="reference: a Jinja string rendered with the record's context "
                                  "(e.g. `{{ problem.json.answer }}`).")
    extract: EXTRACT = Field("number", description="How the final answer is taken from each try "
                             "(check: reasoning_gym: `answer` unless set).")
    min_score: float = Field(1.0, ge=0, le=1, description="reasoning_gym: the score a try must reach to pass.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)
    max_reasoning_tokens: int | None = Field(None, ge=1, description="A thinking budget for the tries "
                                             "(as on a generate stage).")

    @field_validator("keep")
    @classmethod
    def _band(cls, v: tuple[float, float]):
        lo, hi = v
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"`keep: [{lo}, {hi}]` is no band of pass rates; write [low, high] with "
                             f"0 <= low <= high <= 1")
        return v

    @model_validator(mode="after")
    def _shape(self):
        if self.solver is not None and self.solvers is not None:
            raise ValueError("a difficulty stage takes `solver:` or `solvers: [strong, weak]`, not both; keep one")
        if self.solvers is not None and self.solvers[0] == self.solvers[1]:
            raise ValueError("`solvers:` names one model twice; name a strong and a weak model")
        if self.check == "reference" and self.reference is None:
            raise ValueError("check: reference needs `reference:` (e.g. \"{{ problem.json.answer }}\"); add it")
        if self.check == "reasoning_gym" and "extract" not in self.model_fields_set:
            self.extract = "answer"
        return self

    @property
    def model(self) -> str | None:
        """The (strong) solver: the model of the first try stage."""
        return self.solvers[0] if self.solvers else self.solver

    @property
    def templates(self) -> None:
        return None

    def template_refs(self) -> list[TemplateRef]:
        return [TemplateRef(template=self.template)]


class FilterStage(_Stage):
    kind: Literal["filter"]
    expr: str = Field(description="Keep the record when this is true, e.g. `check.agree >= 2 and "
                      "quality.correctness >= 4` (docs/pipelines.md: the expression language).")


class UserRole(Strict):
    """The user simulator of a conversation stage: its template says who it is (persona, topic,
    seed row) and what it wants; it writes every user turn."""

    template: str = Field(description="Template name or path of the simulator's prompt (its system/user "
                          "messages); it sees the record's topic, persona, seed columns and earlier stages.")
    model: str | None = Field(None, description="A model name from `models:`; default: the record's model.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)


class AssistantRole(Strict):
    """The assistant of a conversation stage: a system prompt (inline or a template) and a model."""

    template: str | None = Field(None, description="Template whose rendered system message is the assistant's "
                                 "system prompt (its user part is ignored).")
    system: str | None = Field(None, description="The assistant's system prompt, inline.")
    model: str | None = Field(None, description="A model name from `models:`; default: the record's model.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)

    @model_validator(mode="after")
    def _one_prompt(self):
        if self.template is not None and self.system is not None:
            raise ValueError("the assistant takes `template:` or `system:`, not both; keep one")
        return self


class Turns(Strict):
    """Exchanges (a user turn and the assistant's answer) per conversation, drawn per record."""

    min: int = Field(2, ge=1, le=64, description="Fewest exchanges drawn.")
    max: int = Field(4, ge=1, le=64, description="Most exchanges drawn.")

    @model_validator(mode="after")
    def _order(self):
        if self.min > self.max:
            raise ValueError(f"turns.min ({self.min}) is above turns.max ({self.max}); make min <= max")
        return self


class StopRule(Strict):
    """When a conversation ends before its drawn number of exchanges."""

    marker: str | None = Field("[END]", min_length=1, description="The simulator ends the chat by writing "
                               "this (its turn is dropped); null: never.")
    expr: str | None = Field(None, description="End after an exchange when this is true; it reads `turn` "
                             "(exchanges so far), `user` and `assistant` (the last texts), `chars` and "
                             "`completion_tokens` (docs/pipelines.md: the expression language).")


class ConversationStage(_Stage):
    """Multi-turn self-play: a user simulator and an assistant take turns (docs/conversations.md)."""

    kind: Literal["conversation"]
    user: UserRole = Field(description="The user simulator.")
    assistant: AssistantRole = Field(default_factory=AssistantRole, description="The assistant.")
    turns: Turns = Field(default_factory=Turns, description="Exchanges per conversation: {min, max}.")
    stop: StopRule = Field(default_factory=StopRule, description="Early end: the simulator's marker and/or "
                           "an expression.")


class Expect(Strict):
    """The value an agent's final answer must match: a rendered value or a tool's result."""

    value: str | None = Field(None, description="A Jinja string rendered with the record's context, e.g. "
                              "`{{ answer }}` (a seed column) or `{{ problem.json.answer }}`.")
    tool: str | None = Field(None, description="A tool from `tools:` whose result is the expected value.")
    arguments: dict = Field(default_factory=dict, description="tool: its arguments; string values are Jinja "
                            "rendered with the record's context.")
    extract: Literal["number", "boxed", "last_line", "text"] = Field(
        "number", description="How the answer is compared: as a number, a \\boxed{} part, the last line, "
        "or the whole text (case and spacing ignored).")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.value is None) == (self.tool is None):
            raise ValueError("`expect` needs exactly one of `value:` or `tool:` (with `arguments:`)")
        if self.arguments and self.tool is None:
            raise ValueError("`expect.arguments` goes with `expect.tool`; add `tool:` or remove `arguments:`")
        return self


class AgentStage(_Stage):
    """A model with tools: it calls them, reads their results, and goes on until it gives a final
    answer or runs out of steps (docs/conversations.md)."""

    kind: Literal["agent"]
    template: str = Field(description="Template name or path of the task prompt.")
    model: str | None = Field(None, description="A model name from `models:`; default: the record's model.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride)
    tools: list[str] = Field(min_length=1, description="Names from the spec's `tools:` the model may call.")
    max_steps: int = Field(6, ge=1, le=64, description="Most model calls per trajectory (a step answers with "
                           "tool calls or the final answer).")
    max_calls_per_step: int = Field(4, ge=1, le=32, description="Most tool calls in one step.")
    tool_timeout: float = Field(10.0, gt=0, le=600, description="Seconds a tool call may run before it fails.")
    tool_memory_mb: int = Field(1024, ge=64, le=1 << 20, description="Address-space limit of the Python "
                                "tool worker, in MiB.")
    max_result_chars: int = Field(4000, ge=16, le=1_000_000, description="A longer tool result is an error "
                                  "(the model sees a truncated preview).")
    expect: Expect | None = Field(None, description="Verify the final answer against this value.")
    allow_failed_calls: bool = Field(False, description="Accept a trajectory in which some tool call failed.")
    tool_calling: Literal["auto", "native", "constrained"] = Field(
        "auto", description="native: the tools go to the model's chat template (or the server) and its tool "
        "calls are read back; constrained: tools described in the system prompt, answers as JSON under a "
        "schema; auto: the model's `tool_calling`, else native where its chat template renders `tools`.")

    @model_validator(mode="after")
    def _unique_tools(self):
        if len(set(self.tools)) != len(self.tools):
            raise ValueError("`tools` names a tool twice; list each once")
        return self


Stage = Annotated[Union[GenerateStage, JudgeStage, VerifyStage, FilterStage, ConversationStage, AgentStage,
                        DifficultyStage],
                  Field(discriminator="kind")]
