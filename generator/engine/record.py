"""One planned record: the single definition the plan's Parquet schema is derived from.

Each field's Parquet type follows from its annotation (str -> Utf8, int -> Int64, float ->
Float64, bool -> Boolean, list[str] -> List(Utf8), messages -> List(Struct{role, content}));
`metadata={"dtype": ...}` narrows an int column. Adding a field here adds the plan column.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any

import polars as pl

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})
INT32 = {"dtype": pl.Int32}


@dataclass
class Record:
    id: str
    round: int = field(metadata=INT32)
    topic_id: str
    topic: str
    subtopic: str
    keywords: list[str]
    level: str | None
    persona_ids: list[str]
    template: str
    template_hash: str
    template_vars: str  # JSON of the template's drawn `choices`
    model: str
    temperature: float
    top_p: float
    max_tokens: int = field(metadata=INT32)
    seed: int
    generation: int = field(metadata=INT32)
    messages: list[dict[str, str]]
    prompt: str
    structured: bool = False
    companion_topics: list[str] = field(default_factory=list)
    repetition_penalty: float | None = None

    def to_row(self) -> dict[str, Any]:
        # shallow: a record is not changed once planned, so its lists need no copies
        return {name: getattr(self, name) for name in _FIELD_NAMES}


def _dtype(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _dtype(args[0])
    if typing.get_origin(hint) is list:
        (inner,) = typing.get_args(hint)
        return pl.List(MESSAGE if typing.get_origin(inner) is dict else _dtype(inner))
    simple = {str: pl.Utf8, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}
    if hint not in simple:
        raise TypeError(f"Record field type {hint!r} has no Parquet type; add it to record._dtype")
    return simple[hint]


_FIELD_NAMES = tuple(f.name for f in fields(Record))


def plan_schema() -> dict[str, Any]:
    hints = typing.get_type_hints(Record)
    return {f.name: f.metadata.get("dtype") or _dtype(hints[f.name]) for f in fields(Record)}
