"""Pipeline stages in the spec: `stages:` is a list of named steps that form a DAG through the
references between them (a template using `{{ problem.text }}`, a verify `target:`, a filter
expression naming `check.agree`, an explicit `after:`). See docs/pipelines.md.

Shape only: names, references, cycles and template variables are checked against each other by
`generator.engine.pipeline.dag` (still before any model is loaded).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

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
    output: bool = Field(False, description="This stage's answer is the row's `text`/`completion` "
                         "(default: the last generate stage with n: 1).")

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


class JudgeStage(_Stage):
    kind: Literal["judge"]
    target: str | None = Field(None, description="The stage whose answer is rated on `criteria`.")
    criteria: list[Criterion] | None = Field(None, min_length=1, description="Rubric: each scored 1-5.")
    compare: list[str] | None = Field(None, min_length=2, max_length=2,
                                      description="Two stages whose answers are compared: chosen/rejected.")
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
        return self


class VerifyStage(_Stage):
    kind: Literal["verify"]
    check: Literal["agreement", "json_schema", "regex", "function"]
    target: str = Field(description="The stage whose answer is checked.")
    against: str | None = Field(None, description="agreement: the stage whose samples re-solve the problem.")
    extract: Literal["number", "boxed", "last_line", "text"] = Field(
        "number", description="agreement: how the final answer is taken from each text.")
    min_agree: int = Field(1, ge=1, description="agreement: re-solves that must match the target's answer.")
    json_schema: dict | None = Field(None, description="json_schema: the schema the target's JSON must satisfy.")
    pattern: str | None = Field(None, description="regex: a Python regular expression searched in the text.")
    function: str | None = Field(None, description="function: `module:function` from the project; called "
                                 "with a dict of the record's columns, returns (passed, reason).")
    timeout: float = Field(10.0, gt=0, le=600, description="function: seconds per call before it fails.")

    @model_validator(mode="after")
    def _fields_for_check(self):
        need = {"agreement": "against", "json_schema": "json_schema", "regex": "pattern", "function": "function"}
        key = need[self.check]
        if getattr(self, key) is None:
            raise ValueError(f"check: {self.check} needs `{key}:`; add it to the stage")
        if self.check == "regex":
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a valid regular expression ({exc}); fix the pattern") from None
        if self.check == "function" and ":" not in self.function:
            raise ValueError("`function` must be `module:function` (e.g. checks:is_prime)")
        return self


class FilterStage(_Stage):
    kind: Literal["filter"]
    expr: str = Field(description="Keep the record when this is true, e.g. `check.agree >= 2 and "
                      "quality.correctness >= 4` (docs/pipelines.md: the expression language).")


Stage = Annotated[Union[GenerateStage, JudgeStage, VerifyStage, FilterStage], Field(discriminator="kind")]
