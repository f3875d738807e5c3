"""What indexing a source yields (its kept documents' rows, token counts and topics), and shared helpers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from generator.core.errors import SynthgenError
from generator.mix.reader import Chunk


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


def fields_error(file: Path, missing: list[str], columns: list[str], hint: str) -> SynthgenError:
    have = ", ".join(columns) if columns else "none"
    miss = ", ".join(repr(m) for m in missing)
    return SynthgenError(f"{file}: no field {miss} (fields: {have}); {hint}")


@dataclass
class SourceFile:
    """One file of a source: where its rows start within the source, and its chunks."""
    path: Path
    first_row: int
    rows: int
    chunks: list[Chunk]


@dataclass
class SourceIndex:
    """A source's kept documents, without their text: row, token count and topic of each.

    The text is read again (`reader.read_chunks`) only for the documents a mix selects."""
    name: str
    kind: str  # real | synthetic
    description: dict
    rows: np.ndarray  # int64 per kept document: its row within the source (files in order)
    n_tokens: np.ndarray  # int64 per kept document
    topic_codes: np.ndarray  # int32 per kept document
    topics: list[str]
    files: list[dict] = field(default_factory=list)  # for the manifest
    skipped: dict = field(default_factory=dict)
    parts: list[SourceFile] = field(default_factory=list)
    reader: Any = None  # RealRows / SyntheticRows: read_columns(file), documents(df, local, file_rows, ...)

    @property
    def docs(self) -> int:
        return len(self.rows)

    @property
    def available_tokens(self) -> int:
        return int(self.n_tokens.sum())


def skip_reason(layout: str) -> str:
    return "no text" if layout == "text" else "no messages"


def is_empty(item: Any) -> bool:
    return item is None or (isinstance(item, str) and not item.strip())
