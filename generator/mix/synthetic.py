"""Synthetic sources: a synthgen run folder's generations, filtered by status, round, template, duplicates."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from generator.core import storage
from generator.core.errors import SynthgenError
from generator.core.run_layout import require_generation_files
from generator.config.mix import SyntheticSource
from generator.mix.digest import text_sha256
from generator.mix.index import ChunkRows, IndexContext, index_file
from generator.mix.reader import Chunk
from generator.mix.sources import SourceFile, SourceIndex, fields_error, is_empty, normalize_messages, skip_reason


def run_files(src: SyntheticSource) -> list[Any]:
    return require_generation_files(src.run, f" (synthetic source '{src.display_name()}')")


def local_shard(file: Any, stage: Path | None) -> Path:
    """A shard to read: a local one as it is; a remote one downloaded into `stage` (chunks are read
    again by position when the mix is written, so the bytes must stay put for the whole build)."""
    if not storage.is_url(file):
        return Path(file)
    if stage is None:
        raise SynthgenError(f"{file}: a remote shard needs a staging folder; build the mix with build_mix")
    dest = stage / text_sha256(str(file))[:16] / storage.name_of(file)  # two runs may share shard names
    if not dest.is_file():
        storage.download(file, dest)
    return dest


class SyntheticRows:
    """How the rows of a run's generations become documents, and which rows the filters skip."""

    def __init__(self, src: SyntheticSource, layout: str, chat):
        self.src, self.layout, self.chat = src, layout, chat
        self.content = ["text"] if layout == "text" else ["messages", "completion"]
        self.key = {"layout": layout, "synthetic": "text" if layout == "text" else "messages+completion",
                    "chat": chat.key() if layout == "messages" else None}

    def columns(self, file: Path) -> tuple[list[str], str | None]:
        flt = self.src.filters
        cols = pq.read_schema(file).names
        need = ["id"] + self.content + ["status"] * (flt.statuses is not None) + ["round"] * bool(flt.rounds) + \
            ["template"] * bool(flt.templates)
        missing = [c for c in dict.fromkeys(need) if c not in cols]
        if missing:
            raise fields_error(file, missing, cols,
                               f"synthetic source '{self.src.display_name()}' needs synthgen's generations columns")
        topic_col = "topic_id" if "topic_id" in cols else ("topic" if "topic" in cols else None)
        extra = [c for c in (topic_col, "duplicate_of") if c and c in cols]
        return list(dict.fromkeys(need + extra)), topic_col

    def items(self, df: pl.DataFrame) -> list:
        if self.layout == "text":
            return df.get_column("text").to_list()
        items = []
        for p, c in zip(df.get_column("messages").to_list(), df.get_column("completion").to_list()):
            msgs = normalize_messages(p)
            items.append(None if msgs is None or c is None else msgs + [{"role": "assistant", "content": str(c)}])
        return items

    def reasons(self, df: pl.DataFrame, items: list) -> np.ndarray:
        """Why each row is skipped ('' = kept), in a fixed order so a row counts under one reason."""
        flt = self.src.filters
        reasons = np.full(df.height, "", dtype=object)

        def mark(mask: np.ndarray, why: str) -> None:
            reasons[mask & (reasons == "")] = why

        if flt.statuses is not None:
            mark(~df.get_column("status").is_in(flt.statuses).fill_null(False).to_numpy(), "status")
        if flt.rounds:
            mark(~df.get_column("round").is_in(flt.rounds).fill_null(False).to_numpy(), "round")
        if flt.templates:
            mark(~df.get_column("template").cast(pl.String).is_in(flt.templates).fill_null(False).to_numpy(),
                 "template")
        if not flt.include_duplicates and "duplicate_of" in df.columns:
            mark(df.get_column("duplicate_of").is_not_null().to_numpy(), "duplicate")
        empty = np.fromiter((is_empty(it) for it in items), dtype=bool, count=len(items))
        mark(empty, skip_reason(self.layout))
        return reasons

    def extractor(self, topic_col: str | None):
        chat = self.chat

        def extract(df: pl.DataFrame, chunk: Chunk) -> ChunkRows:
            items = self.items(df)
            reasons = self.reasons(df, items)
            keep = reasons == ""
            topics = df.get_column(topic_col).cast(pl.String).to_list() if topic_col else ["*"] * df.height
            kept_topics = ["*" if topics[i] is None else topics[i] for i in np.flatnonzero(keep)]
            info = (reasons[~keep], keep, kept_topics)

            def texts() -> list[str | None]:
                return items if self.layout == "text" else [None if m is None else chat(m) for m in items]
            return ChunkRows(info=info, texts=texts)
        return extract

    def read_columns(self, file: Path) -> list[str]:
        return self.columns(file)[0]

    def documents(self, df: pl.DataFrame, local: np.ndarray, file_rows: np.ndarray, source_rows: np.ndarray,
                  file: Path) -> tuple[list, list[str]]:
        """The documents at `local` rows of a chunk read again, and their lineage ids."""
        sub = df.gather(local) if len(local) != df.height else df
        ids = sub.get_column("id").cast(pl.String).to_list()
        name = self.src.display_name()
        return self.items(sub), [i if i is not None else f"{name}:{file.name}:{r}"
                                 for i, r in zip(ids, file_rows.tolist())]


def index_synthetic(src: SyntheticSource, ctx: IndexContext) -> SourceIndex:
    name = src.display_name()
    how = SyntheticRows(src, ctx.layout, ctx.chat)
    rows_kept: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    topic_vals: list[str] = []
    files_info: list[dict] = []
    parts: list[SourceFile] = []
    skipped: dict[str, int] = {}
    row_offset = 0
    for remote in run_files(src):
        file = local_shard(remote, ctx.stage_dir)
        columns, topic_col = how.columns(file)
        scan = index_file(file, columns, how.extractor(topic_col), how.key, ctx, cache_empty=True)
        keep = np.concatenate([info[1] for info in scan.infos]) if scan.infos else np.zeros(0, dtype=bool)
        for info in scan.infos:
            for why in info[0]:
                skipped[why] = skipped.get(why, 0) + 1
            topic_vals += info[2]
        local = np.flatnonzero(keep)
        rows_kept.append(local + row_offset)
        counts.append(scan.n_tokens[keep] if scan.rows else np.zeros(0, dtype=np.int64))
        files_info.append({"path": str(remote), "sha256": scan.sha256, "rows": scan.rows, "docs": int(len(local))})
        parts.append(SourceFile(path=file, first_row=row_offset, rows=scan.rows, chunks=scan.chunks))
        row_offset += scan.rows
    topics = sorted(set(topic_vals), key=_natural_key)
    code = {t: i for i, t in enumerate(topics)}
    topic_codes = np.array([code[t] for t in topic_vals], dtype=np.int32)
    rows = np.concatenate(rows_kept) if rows_kept else np.zeros(0, dtype=np.int64)
    desc = {"run": str(src.run), "filters": src.filters.model_dump()}
    return SourceIndex(name=name, kind="synthetic", description=desc, rows=rows.astype(np.int64),
                       n_tokens=np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64),
                       topic_codes=topic_codes, topics=topics or ["*"], files=files_info, skipped=skipped,
                       parts=parts, reader=how)


def _natural_key(s: str) -> tuple:
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)
