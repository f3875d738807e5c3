"""Synthetic sources: a synthgen run folder's generations, filtered by status, round, template, duplicates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from generator.core.errors import SynthgenError
from generator.mix.chat import ChatRenderer
from generator.mix.config import SyntheticSource
from generator.mix.digest import file_sha256
from generator.mix.sources import LoadedSource, fields_error, normalize_messages, texts_to_count
from generator.mix.tokcache import cached_counts
from generator.mix.tokens import TokenizerInfo


def load_synthetic(src: SyntheticSource, layout: str, tok: TokenizerInfo, chat: ChatRenderer, cache: Path,
                    stats: dict) -> LoadedSource:
    name = src.display_name()
    run = src.run
    if not run.is_dir():
        raise SynthgenError(f"{run}: synthetic run folder not found (synthetic source '{name}')")
    files = sorted((run / "generations").glob("part-*.parquet"))
    if not files:
        raise SynthgenError(f"{run / 'generations'}: no part-*.parquet files; is {run} a synthgen run folder?")
    flt = src.filters
    payload: list = []
    lineage: list[str] = []
    counts: list[np.ndarray] = []
    topic_vals: list[str] = []
    files_info: list[dict] = []
    skipped: dict[str, int] = {}
    hint = f"synthetic source '{name}' needs synthgen's generations columns"
    for file in files:
        cols = pq.read_schema(file).names
        content = ["text"] if layout == "text" else ["messages", "completion"]
        need = ["id"] + content + ["status"] * (flt.statuses is not None) + ["round"] * bool(flt.rounds) + \
            ["template"] * bool(flt.templates)
        missing = [c for c in dict.fromkeys(need) if c not in cols]
        if missing:
            raise fields_error(file, missing, cols, hint)
        topic_col = "topic_id" if "topic_id" in cols else ("topic" if "topic" in cols else None)
        extra = [c for c in (topic_col, "duplicate_of") if c and c in cols]
        df = pl.read_parquet(file, columns=list(dict.fromkeys(need + extra)))
        n = df.height
        if layout == "text":
            texts = df.get_column("text").to_list()
            items: list = texts
            rendered: list | None = texts
        else:
            prompts = df.get_column("messages").to_list()
            comps = df.get_column("completion").to_list()
            items = []
            for p, c in zip(prompts, comps):
                msgs = normalize_messages(p)
                items.append(None if msgs is None or c is None else msgs + [{"role": "assistant", "content": str(c)}])
            rendered = None
        file_sha = file_sha256(file)

        texts_fn = texts_to_count(items, rendered, chat)
        key = {"layout": layout, "synthetic": "text" if layout == "text" else "messages+completion",
               "chat": chat.key() if layout == "messages" else None}
        n_tok = cached_counts(file, file_sha, key, texts_fn, n, tok, cache, stats)

        # filters, in a fixed order so that each skipped row is counted under one reason
        reasons = np.full(n, "", dtype=object)

        def mark(mask: np.ndarray, why: str) -> None:
            sel = mask & (reasons == "")
            reasons[sel] = why

        if flt.statuses is not None:
            mark(~df.get_column("status").is_in(flt.statuses).fill_null(False).to_numpy(), "status")
        if flt.rounds:
            mark(~df.get_column("round").is_in(flt.rounds).fill_null(False).to_numpy(), "round")
        if flt.templates:
            mark(~df.get_column("template").cast(pl.String).is_in(flt.templates).fill_null(False).to_numpy(),
                 "template")
        if not flt.include_duplicates and "duplicate_of" in df.columns:
            mark(df.get_column("duplicate_of").is_not_null().to_numpy(), "duplicate")
        empty = np.array([it is None or (isinstance(it, str) and not it.strip()) for it in items], dtype=bool)
        mark(empty, "no text" if layout == "text" else "no messages")
        keep = reasons == ""
        for why in reasons[~keep]:
            skipped[why] = skipped.get(why, 0) + 1
        ids = df.get_column("id").cast(pl.String).to_list()
        tcol = df.get_column(topic_col).cast(pl.String).to_list() if topic_col else ["*"] * n
        idx = np.flatnonzero(keep)
        for i in idx:
            payload.append(items[i])
            lineage.append(ids[i] if ids[i] is not None else f"{name}:{file.name}:{i}")
            topic_vals.append(tcol[i] if tcol[i] is not None else "*")
        counts.append(n_tok[keep])
        files_info.append({"path": str(file), "sha256": file_sha, "rows": n, "docs": int(len(idx))})
    n_tokens = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    topics = sorted(set(topic_vals), key=_natural_key)
    code = {t: i for i, t in enumerate(topics)}
    topic_codes = np.array([code[t] for t in topic_vals], dtype=np.int32)
    desc = {"run": str(run), "filters": flt.model_dump()}
    return LoadedSource(name=name, kind="synthetic", description=desc, payload=payload, lineage=lineage,
                   n_tokens=n_tokens, topic_codes=topic_codes, topics=topics or ["*"], files=files_info,
                   skipped=skipped)


def _natural_key(s: str) -> tuple:
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)
