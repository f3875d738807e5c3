"""`synthgen export`: a run folder as a dataset folder that `datasets.load_dataset(DIR)` loads as is.

    DIR/
      README.md                               card: Hub front matter (configs/data_files, license,
                                              task categories, size, languages, tags) + run facts
      data/train-<digest>-00000-of-0000N.parquet   one or more files per split (digest: of the rows)
      data/test-<digest>-00000-of-0000N.parquet    (absent when --test-ratio is 0)
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from generator.core import storage
from generator.core.run_layout import is_run_folder, read_generation_files, read_manifest, run_path
from generator.export.masks import SIDES, MaskRenderer
from generator.export.provenance import choose_license
from generator.export.rl import rl_frame
from generator.export.rows import (JSON_COLUMNS, LAYOUT_ABOUT, ExportError, Filters, Preference, layout_frame,
                                   select, split)



@dataclass
class ExportOptions:
    layout: str = "text"
    filters: Filters = field(default_factory=Filters)
    test_ratio: float = 0.1
    seed: int | None = None          # default: the run's seed
    stratify_by: str = "topic_id"
    preference: Preference = field(default_factory=Preference)
    license: str | None = None       # default: what the inputs allow (export.provenance.choose_license)
    side: str = "assistant"          # messages: whose turns are trained on ("user": the user simulator's)
    chat_template: str | None = None  # messages: also render `text` and `train_spans` with this model's template
    languages: tuple[str, ...] = ("en",)
    task_categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rows_per_file: int = 500_000
    overwrite: bool = False
    reasoning: str = "field"         # messages: reasoning_content (field), inline <think>, or drop
    reference: str | None = None     # rl: the ground-truth column (default: the reference check's)
    data_source: str | None = None   # rl: default the run's name


@dataclass
class ExportResult:
    path: Path
    splits: dict[str, int]
    files: list[str]
    dropped: dict[str, int]
    columns: list[str]
    data_files: dict[str, str] = field(default_factory=dict)  # split -> the card's file pattern
    license: str = "other"
    license_note: str = ""
    masks: str = "per-message"       # how trained ranges were found: per-message, generation, prefix


def _prepare(to: Any, overwrite: bool) -> None:
    if storage.is_url(to):  # an object store prefix: "not empty" is any object under it
        storage.check_writable(to)
        if storage.is_dir(to):
            if not overwrite:
                raise ExportError(f"{to}: not empty; choose another --to, or pass --overwrite to replace its "
                                  f"data/ and README.md")
            storage.remove_tree(storage.join(to, "data"))
        return
    if to.exists() and any(to.iterdir()):
        if not overwrite:
            raise ExportError(f"{to}: folder exists and is not empty; choose another --to, or pass --overwrite "
                              f"to replace its data/ and README.md")
        shutil.rmtree(to / "data", ignore_errors=True)
    (to / "data").mkdir(parents=True, exist_ok=True)


def _digest(frame: pl.DataFrame) -> str:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()[:10]


def _write_split(frame: pl.DataFrame, to: Path, name: str, rows_per_file: int) -> tuple[list[str], str]:
    """Files of one split and their glob. The names carry a digest of the rows: `datasets` caches a
    folder's data under a key made from the card's data_files patterns, so a fixed pattern would
    serve a stale copy after a re-export (or for another folder of the same name)."""
    n_files = max(1, -(-frame.height // rows_per_file))
    digest = _digest(frame)
    names = []
    for k in range(n_files):
        rel = f"data/{name}-{digest}-{k:05d}-of-{n_files:05d}.parquet"
        _write_parquet(frame.slice(k * rows_per_file, rows_per_file), storage.join(to, rel))
        names.append(rel)
    return names, f"data/{name}-{digest}-*.parquet"


def _write_parquet(frame: pl.DataFrame, path: Any) -> None:
    """Lists of JSON text (conversations, tools) are written as Parquet JSON, so each message
    loads as a dict whatever keys it has (a struct type would add every other row's keys as nulls)."""
    json_cols = [c for c in JSON_COLUMNS if frame.schema.get(c) == pl.List(pl.String)]
    if not json_cols:
        storage.write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = frame.to_arrow()
    for c in json_cols:
        i = table.schema.get_field_index(c)
        table = table.set_column(i, c, table.column(c).cast(pa.list_(pa.string())).cast(pa.list_(pa.json_())))
    storage.write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _layout(frame: pl.DataFrame, opts: ExportOptions, manifest: dict) -> tuple[pl.DataFrame, int]:
    if opts.layout == "rl":
        return rl_frame(frame, manifest, opts.reference, opts.data_source)
    return layout_frame(frame, opts.layout, opts.preference, opts.side, opts.reasoning)


def export_run(run_dir: str | Path, to: str | Path, opts: ExportOptions | None = None) -> ExportResult:
    opts = opts or ExportOptions()
    run_dir = run_path(run_dir)
    if not is_run_folder(run_dir):
        raise ExportError(f"{run_dir}: not a run folder (no manifest.json); pass the folder `synthgen run` wrote")
    if not 0 <= opts.test_ratio < 1:
        raise ExportError(f"--test-ratio {opts.test_ratio}: must be at least 0 and below 1")
    if opts.layout not in LAYOUT_ABOUT:
        raise ExportError(f"--layout {opts.layout}: unknown; choose from {', '.join(LAYOUT_ABOUT)}")
    if opts.side not in SIDES:
        raise ExportError(f"--side {opts.side}: unknown; choose from {', '.join(SIDES)}")
    if opts.layout != "messages" and (opts.side != "assistant" or opts.chat_template):
        raise ExportError(f"--side and --chat-template apply to --layout messages, not {opts.layout}")
    renderer = MaskRenderer(opts.chat_template) if opts.chat_template else None  # fails before any data is read
    manifest = read_manifest(run_dir)
    gens = read_generation_files(run_dir)
    if gens is None:
        raise ExportError(f"{run_dir}: no generations yet; run `synthgen run` on its spec first")
    sel = select(gens, opts.filters)
    frame, left_out = _layout(sel.frame, opts, manifest)
    dropped = dict(sel.dropped)
    if left_out:
        dropped["rl: further samples, or no reference" if opts.layout == "rl" else
                "preference: no choice of a or b" if opts.layout == "preference" else
                "user side: no user simulator (not a conversation)"] = left_out
    if frame.is_empty():
        raise ExportError(f"{run_dir}: no rows left after the filters ({json.dumps(dropped)}); "
                          f"loosen --status/--template/--round/--where")
    kept = sel.frame.filter(pl.col("id").is_in(frame["id"].implode())) if "id" in frame.columns else sel.frame
    if opts.layout == "rl":  # a problem per row: its kept samples' rows are one
        kept = kept.unique("id", keep="first", maintain_order=True)
    seed = opts.seed if opts.seed is not None else int(manifest.get("seed") or 0)
    labels = split(kept, opts.test_ratio, seed, opts.stratify_by)
    frame = frame.with_columns(labels.alias("__split"))
    if renderer is not None:
        frame = _rendered(frame, renderer)
    license_, license_note = choose_license(manifest, opts.license)
    to = run_path(to)
    _prepare(to, opts.overwrite)
    files: list[str] = []
    splits: dict[str, int] = {}
    data_files: dict[str, str] = {}
    for name in ("train", "test"):
        part = frame.filter(pl.col("__split") == name).drop("__split")
        if part.is_empty():
            continue
        written, data_files[name] = _write_split(part, to, name, opts.rows_per_file)
        files += written
        splits[name] = part.height
    from generator.export.card import write_export_card

    res = ExportResult(path=to, splits=splits, files=files, dropped=dropped,
                       columns=[c for c in frame.columns if c != "__split"], data_files=data_files, license=license_,
                       license_note=license_note, masks=renderer.method if renderer else "per-message")
    write_export_card(to, run_dir, manifest, gens, opts, res, seed)
    return res


def _rendered(frame: pl.DataFrame, renderer: MaskRenderer) -> pl.DataFrame:
    """`text` (the messages through the chat template) and `train_spans` ([start, end) characters)."""
    texts, spans = [], []
    for msgs, tools in zip(frame["messages"].to_list(), frame["tools"].to_list()):
        text, sp = renderer.render([json.loads(m) for m in msgs], [json.loads(t) for t in tools] if tools else None)
        texts.append(text)
        spans.append(sp)
    return frame.with_columns(pl.Series("text", texts, pl.String),
                              pl.Series("train_spans", spans, pl.List(pl.List(pl.Int64))))
