"""Real sources: Parquet / JSONL / JSONL.zst files (or folders of them) turned into documents."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from ..errors import SynthgenError
from .chat import ChatRenderer
from .config import REAL_SUFFIXES, RealSource
from .digest import file_sha256
from .sources import LoadedSource, fields_error, normalize_messages, texts_to_count
from .row_templates import render_template, template_fields
from .tokcache import cached_counts
from .tokens import TokenizerInfo


def real_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(REAL_SUFFIXES)
                       and not p.name.startswith("."))
        if not files:
            raise SynthgenError(f"{path}: no {', '.join(REAL_SUFFIXES)} files in this folder")
        return files
    raise SynthgenError(f"{path}: real source not found")


def read_real_file(path: Path) -> pl.DataFrame:
    name = path.name
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
        if name.endswith(".zst"):
            with pa.input_stream(str(path), compression="zstd") as f:
                data = f.read()
            return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None) if data.strip() else pl.DataFrame()
        if path.stat().st_size == 0:
            return pl.DataFrame()
        return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
        raise SynthgenError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None


def load_real(src: RealSource, layout: str, tok: TokenizerInfo, chat: ChatRenderer, cache: Path,
               stats: dict) -> LoadedSource:
    name = src.display_name()
    payload: list = []
    lineage: list[str] = []
    counts: list[np.ndarray] = []
    files_info: list[dict] = []
    skipped: dict[str, int] = {}
    row_offset = 0
    msgs_field = src.messages_field or ("messages" if layout == "messages" and not src.user_template else None)
    for file in real_files(src.path):
        df = read_real_file(file)
        cols = df.columns
        n = df.height
        hint = (f"set text_field, text_template or messages_field for real source '{name}'")
        if layout == "text" and src.text_template:
            need = template_fields(src.text_template)
            kind = {"text_template": src.text_template}
        elif layout == "text" and src.messages_field:
            need = [src.messages_field]
            kind = {"messages_field": src.messages_field, "chat": chat.key()}
        elif layout == "text":
            need = [src.text_field]
            kind = {"text_field": src.text_field}
        elif src.user_template:
            need = template_fields(src.user_template) + [f for f in template_fields(src.assistant_template)
                                                         if f not in template_fields(src.user_template)]
            kind = {"user_template": src.user_template, "assistant_template": src.assistant_template,
                    "chat": chat.key()}
            hint = f"set messages_field, or user_template and assistant_template, for real source '{name}'"
        else:
            need = [msgs_field]
            kind = {"messages_field": msgs_field, "chat": chat.key()}
            hint = f"set messages_field, or user_template and assistant_template, for real source '{name}'"
        missing = [c for c in need if c not in cols]
        if n and missing:
            raise fields_error(file, missing, cols, hint)
        if n == 0:
            files_info.append({"path": str(file), "sha256": file_sha256(file), "rows": 0, "docs": 0})
            continue
        colvals = {c: df.get_column(c).to_list() for c in need}
        rendered: list[str | None]
        if layout == "text":
            if "text_template" in kind:
                texts = render_template(src.text_template, colvals)
            elif "messages_field" in kind:
                texts = [None if m is None else chat(m) for m in map(normalize_messages, colvals[need[0]])]
            else:
                texts = [t if isinstance(t, str) else (None if t is None else str(t)) for t in colvals[need[0]]]
            items = texts
            rendered = texts
        else:
            if src.user_template:
                users = render_template(src.user_template, colvals)
                assistants = render_template(src.assistant_template, colvals)
                items = [None if u is None or a is None else
                         [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
                         for u, a in zip(users, assistants)]
            else:
                items = [normalize_messages(m) for m in colvals[need[0]]]
            rendered = None  # rendered lazily, only on a cache miss
        file_sha = file_sha256(file)

        texts_fn = texts_to_count(items, rendered, chat)
        n_tok = cached_counts(file, file_sha, {"layout": layout, **kind}, texts_fn, n, tok, cache, stats)
        keep = np.zeros(n, dtype=bool)
        docs = 0
        for i, item in enumerate(items):
            if item is None or (isinstance(item, str) and not item.strip()):
                skipped["no text" if layout == "text" else "no messages"] = \
                    skipped.get("no text" if layout == "text" else "no messages", 0) + 1
                continue
            keep[i] = True
            payload.append(item)
            lineage.append(f"{name}:{row_offset + i}")
            docs += 1
        counts.append(n_tok[keep])
        files_info.append({"path": str(file), "sha256": file_sha, "rows": n, "docs": docs,
                           "first_row": row_offset})
        row_offset += n
    n_tokens = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    desc = {"path": str(src.path), **{k: v for k, v in src.model_dump(exclude={"path", "name"}).items()
                                      if v is not None}}
    if layout == "messages" and msgs_field and not src.user_template:
        desc["messages_field"] = msgs_field
    return LoadedSource(name=name, kind="real", description=desc, payload=payload, lineage=lineage,
                   n_tokens=n_tokens, topic_codes=np.zeros(len(payload), dtype=np.int32), topics=["*"],
                   files=files_info, skipped=skipped)
