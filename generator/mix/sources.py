"""What loading a source yields (its kept documents and their token counts), and helpers both kinds share."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from generator.core.errors import SynthgenError


def normalize_messages(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list):
        return None
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") is None or m.get("content") is None:
            return None
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out or None


def texts_to_count(items: list, rendered: list[str | None] | None, chat: Any) -> Callable[[], list[str | None]]:
    """The texts whose tokens are counted: `rendered` when there is one, else the chats rendered on
    demand, so that a token-cache hit never renders them."""
    def texts() -> list[str | None]:
        if rendered is not None:
            return rendered
        return [None if m is None else chat(m) for m in items]
    return texts


def fields_error(file: Path, missing: list[str], columns: list[str], hint: str) -> SynthgenError:
    have = ", ".join(columns) if columns else "none"
    miss = ", ".join(repr(m) for m in missing)
    return SynthgenError(f"{file}: no field {miss} (fields: {have}); {hint}")


@dataclass
class LoadedSource:
    name: str
    kind: str  # real | synthetic
    description: dict
    payload: list  # text strings or message lists, kept rows only
    lineage: list[str]
    n_tokens: np.ndarray
    topic_codes: np.ndarray  # int32 per kept row
    topics: list[str]
    files: list[dict] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)

    @property
    def available_tokens(self) -> int:
        return int(self.n_tokens.sum())
