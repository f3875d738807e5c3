"""Real sources: Parquet / JSONL / JSONL.zst files (or folders of them) turned into documents."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from generator.core.errors import SynthgenError
from generator.mix.chat import ChatRenderer
from generator.config.mix import REAL_SUFFIXES, RealSource
from generator.mix.digest import file_sha256
from generator.mix.index import ChunkRows, IndexContext, column, index_file
from generator.mix.reader import Chunk
from generator.mix.row_templates import render_template
from generator.mix.preflight import needed_fields
from generator.mix.sources import SourceFile, SourceIndex, fields_error, is_empty, normalize_messages, skip_reason


def real_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(REAL_SUFFIXES)
                       and not p.name.startswith("."))
        if not files:
            raise SynthgenError(f"{path}: no {', '.join(REAL_SUFFIXES)} files in this folder; point the source "
                                f"at a folder of data files")
        return files
    raise SynthgenError(f"{path}: real source not found; fix the path")


class RealRows:
    """How the rows of one real source become documents (text, or a chat) and what is counted."""

    def __init__(self, src: RealSource, layout: str, chat: ChatRenderer):
        self.src, self.layout, self.chat = src, layout, chat
        name = src.display_name()
        self.msgs_field = src.messages_field or ("messages" if layout == "messages" and not src.user_template
                                                 else None)
        self.hint = f"set text_field, text_template or messages_field for real source '{name}'"
        self.need = needed_fields(src, layout)
        if layout == "text" and src.text_template:
            self.key = {"text_template": src.text_template}
        elif layout == "text" and src.messages_field:
            self.key = {"messages_field": src.messages_field, "chat": chat.key()}
        elif layout == "text":
            self.key = {"text_field": src.text_field}
        elif src.user_template:
            self.key = {"user_template": src.user_template, "assistant_template": src.assistant_template,
                        "chat": chat.key()}
            self.hint = f"set messages_field, or user_template and assistant_template, for real source '{name}'"
        else:
            self.key = {"messages_field": self.msgs_field, "chat": chat.key()}
            self.hint = f"set messages_field, or user_template and assistant_template, for real source '{name}'"

    def items(self, df: pl.DataFrame) -> tuple[list, list[str | None] | None]:
        """(documents, their texts when they are text already; chats are rendered only to be counted)."""
        src = self.src
        colvals = {c: column(df, c) for c in self.need}
        if self.layout == "text":
            if "text_template" in self.key:
                texts = render_template(src.text_template, colvals)
            elif "messages_field" in self.key:
                texts = [None if m is None else self.chat(m) for m in map(normalize_messages, colvals[self.need[0]])]
            else:
                texts = [t if isinstance(t, str) else (None if t is None else str(t)) for t in colvals[self.need[0]]]
            return texts, texts
        if src.user_template:
            users = render_template(src.user_template, colvals)
            assistants = render_template(src.assistant_template, colvals)
            return [None if u is None or a is None else
                    [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
                    for u, a in zip(users, assistants)], None
        return [normalize_messages(m) for m in colvals[self.need[0]]], None

    def read_columns(self, file: Path) -> list[str]:
        return self.need

    def documents(self, df: pl.DataFrame, local: np.ndarray, file_rows: np.ndarray, source_rows: np.ndarray,
                  file: Path) -> tuple[list, list[str]]:
        """The documents at `local` rows of a chunk read again, and their lineage ids (source row)."""
        items, _ = self.items(df.gather(local) if len(local) != df.height else df)
        name = self.src.display_name()
        return items, [f"{name}:{r}" for r in source_rows.tolist()]

    def extract(self, df: pl.DataFrame, chunk: Chunk) -> ChunkRows:
        items, rendered = self.items(df)
        keep = np.fromiter((not is_empty(x) for x in items), dtype=bool, count=len(items))
        chat = self.chat

        def texts() -> list[str | None]:
            return rendered if rendered is not None else [None if m is None else chat(m) for m in items]
        return ChunkRows(info=keep, texts=texts)


def index_real(src: RealSource, ctx: IndexContext) -> SourceIndex:
    name = src.display_name()
    layout = ctx.layout
    how = RealRows(src, layout, ctx.chat)
    rows_kept: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    files_info: list[dict] = []
    parts: list[SourceFile] = []
    skipped: dict[str, int] = {}
    row_offset = 0
    for file in real_files(src.path):
        if file.stat().st_size == 0:
            files_info.append({"path": str(file), "sha256": file_sha256(file), "rows": 0, "docs": 0})
            continue
        scan = index_file(file, how.need, how.extract, {"layout": layout, **how.key}, ctx)
        n = scan.rows
        missing = [c for c in how.need if c not in scan.columns]
        if n and missing:
            raise fields_error(file, missing, scan.columns, how.hint)
        if n == 0:
            files_info.append({"path": str(file), "sha256": scan.sha256, "rows": 0, "docs": 0})
            continue
        keep = np.concatenate(scan.infos)
        dropped = int(n - keep.sum())
        if dropped:
            skipped[skip_reason(layout)] = skipped.get(skip_reason(layout), 0) + dropped
        local = np.flatnonzero(keep)
        rows_kept.append(local + row_offset)
        counts.append(scan.n_tokens[keep])
        files_info.append({"path": str(file), "sha256": scan.sha256, "rows": n, "docs": int(len(local)),
                           "first_row": row_offset})
        parts.append(SourceFile(path=file, first_row=row_offset, rows=n, chunks=scan.chunks))
        row_offset += n
    desc = {"path": str(src.path), **{k: v for k, v in src.model_dump(exclude={"path", "name"}).items()
                                      if v is not None}}
    if layout == "messages" and how.msgs_field and not src.user_template:
        desc["messages_field"] = how.msgs_field
    rows = np.concatenate(rows_kept) if rows_kept else np.zeros(0, dtype=np.int64)
    return SourceIndex(name=name, kind="real", description=desc, rows=rows.astype(np.int64),
                       n_tokens=np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64),
                       topic_codes=np.zeros(len(rows), dtype=np.int32), topics=["*"], files=files_info,
                       skipped=skipped, parts=parts, reader=how)
