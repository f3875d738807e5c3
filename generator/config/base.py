"""Spec building blocks shared by the spec and its stages."""
from __future__ import annotations

import re
from typing import Any

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


def data_path(data: Any, err: dict) -> tuple:
    """A pydantic error location as the path the user wrote. Union member names and discriminator
    tags ('TreeTopics', 'generate') are not keys of the data and are dropped; keys are kept exactly
    as written (a capitalised unknown key stays 'Name')."""
    loc = tuple(err.get("loc", ()))
    out: list[Any] = []
    cur = data
    for i, p in enumerate(loc):
        if isinstance(cur, dict) and p in cur:
            out.append(p)
            cur = cur[p]
        elif isinstance(cur, list) and isinstance(p, int) and 0 <= p < len(cur):
            out.append(p)
            cur = cur[p]
        elif i == len(loc) - 1 and err.get("type") == "missing":  # named, though not written
            out.append(p)
    return tuple(out)


def format_error(err: dict, path: tuple, keys_hint: str = "`synthgen schema` lists the keys") -> str:
    """One pydantic error at `path` (from data_path) as 'what is wrong; how to fix it'."""
    kind = err.get("type", "")
    key = path[-1] if path else ""
    if kind == "extra_forbidden":
        return f"unknown key '{key}'; remove it or check the spelling ({keys_hint})"
    if kind == "missing":
        return f"missing required key '{key}'; add it ({keys_hint})"
    msg = err.get("msg", "invalid value")
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    if "; " not in msg:
        msg += f"; fix the value ({keys_hint} and what each accepts)"
    if not path:
        return msg
    return f"'{'.'.join(str(p) for p in path)}': {msg}"
