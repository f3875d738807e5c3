"""Spec building blocks shared by the spec and its stages."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class SamplingOverride(Strict):
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=131072)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)


class TemplateRef(Strict):
    template: str = Field(description="Template name under templates/ (e.g. math/word_problem) or a path.")
    weight: float = Field(1.0, gt=0)
