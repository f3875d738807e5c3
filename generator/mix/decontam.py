"""Decontaminating data that exists already: run folders, exported datasets, data files and a
mix's sources, matched against a benchmark index (`synthgen decontaminate`), and a mix's
documents dropped or the mix refused when one repeats a benchmark item (`synthgen mix
--decontaminate`). Texts are matched in batches, so memory holds the index and one batch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from generator.config.mix import REAL_SUFFIXES, MixConfig, RealSource
from generator.core import run_layout
from generator.core.errors import SynthgenError
from generator.core.ngram_index import NgramIndex
from generator.core.tabular import read_rows

BATCH = 2048
STREAMED = (".parquet", ".jsonl", ".ndjson") + tuple(x for x in REAL_SUFFIXES if x.endswith(".zst"))
EXAMPLES = 5


@dataclass
class ScanReport:
    target: str
    documents: int = 0
    contaminated: int = 0
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {documents, items}
    examples: list[dict] = field(default_factory=list)

    def add(self, doc_id: str, hits: list, file: str | None = None) -> None:
        self.documents += 1
        if not hits:
            return
        self.contaminated += 1
        for b in {h.benchmark for h in hits}:
            entry = self.benchmarks.setdefault(b, {"documents": 0, "items": set()})
            entry["documents"] += 1
        for h in hits:
            self.benchmarks[h.benchmark]["items"].add(h.item_id)
        if len(self.examples) < EXAMPLES:
            self.examples.append({"id": doc_id, **({"file": file} if file else {}), **hits[0].as_dict()})

    def as_dict(self) -> dict:
        return {"target": self.target, "documents": self.documents, "contaminated": self.contaminated,
                "benchmarks": {b: {"documents": v["documents"], "items": len(v["items"])}
                               for b, v in sorted(self.benchmarks.items())},
                "examples": self.examples}


def text_of(row: dict, fields: tuple[str, ...]) -> str:
    """A row's text: the named fields (a chat's contents joined), else `text`, else `messages`."""
    names = fields or tuple(f for f in ("text", "messages", "conversation") if row.get(f) is not None)[:1]
    parts = []
    for f in names:
        v = row.get(f)
        if isinstance(v, str) and f in ("messages", "conversation") and v.startswith("["):
            v = json.loads(v)
        if isinstance(v, list):
            parts.extend(str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in v)
        elif v is not None:
            parts.append(str(v))
    return "\n".join(parts)


def target_rows(target: str | Path, fields: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(id, text) of every document of a run folder (every row written), a dataset folder or a data
    file. JSONL, Parquet and JSONL.zst files (and folders holding .zst files) are streamed through
    the mix's reader, a chunk at a time; CSV, JSON and `datasets` folders are read whole."""
    if run_layout.is_run_folder(target):
        for loc in run_layout.require_generation_files(target):
            frame = run_layout.read_parquet(loc)
            for i, row in enumerate(frame.iter_rows(named=True)):
                yield f"{row.get('id', i)}#{row.get('attempts', '')}", text_of(row, fields)
        return
    path = Path(target)
    if (path.is_file() and path.name.endswith(STREAMED)) or (path.is_dir() and any(path.rglob("*.zst"))):
        from generator.mix.real import real_files

        for file in real_files(path):
            rel = file.name if path.is_file() else str(file.relative_to(path))
            for i, row in enumerate(_file_rows(file)):
                yield str(row.get("id", f"{rel}:{i}")), text_of(row, fields)
        return
    try:
        rows = read_rows(path)
    except FileNotFoundError as exc:
        raise SynthgenError(f"{target}: {exc}; give a run folder, a dataset folder or a data file") from None
    for rid, row in rows:
        yield str(row.get("id", rid)), text_of(row, fields)


def _file_rows(file: Path) -> Iterator[dict]:
    from generator.mix.reader import scan_file

    if file.stat().st_size:
        for _, df, _ in scan_file(file):
            yield from df.iter_rows(named=True)


class _Contents:
    """Stands in for the mix's chat template: what a chat says is its messages' contents, joined."""

    def __call__(self, messages: list) -> str:
        return _document_text(messages)

    def key(self) -> dict:
        return {"contents": True}


def mix_targets(cfg: MixConfig) -> list[tuple[str, Iterator[tuple[str, str]]]]:
    """Every source of a mix config as (label, its documents as (id, text)), read as the mix reads
    them: a real source's files (JSONL, JSONL.zst, Parquet, a folder of them) through the mix's
    reader, its documents made as the mix makes them (text field, text template, chat field, user
    and assistant templates; a chat's contents joined), ids `source:row` like the mix's lineage;
    a synthetic run as a run folder (every row written)."""
    return ([(str(r.path), _real_documents(r, cfg.layout)) for r in cfg.real]
            + [(str(s.run), target_rows(s.run, ())) for s in cfg.synthetic])


def _real_documents(src: RealSource, layout: str) -> Iterator[tuple[str, str]]:
    from generator.mix.real import RealRows, real_files
    from generator.mix.reader import scan_file

    how = RealRows(src, layout, _Contents())  # type: ignore[arg-type]  # only called and keyed
    name, row = src.display_name(), 0
    for file in real_files(Path(src.path)):
        if not file.stat().st_size:
            continue
        for _, df, names in scan_file(file, how.read_columns(file)):
            missing = [c for c in how.need if c not in names]
            if df.height and missing:
                raise SynthgenError(f"{file}: no field {', '.join(missing)} (fields: {', '.join(names)}); {how.hint}")
            for item in how.items(df)[0]:
                yield f"{name}:{row}", _document_text(item)
                row += 1


def scan(index: NgramIndex, target: str, docs: Iterable[tuple[str, str]]) -> ScanReport:
    report = ScanReport(target)
    batch: list[tuple[str, str]] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= BATCH:
            _scan_batch(index, batch, report)
            batch = []
    _scan_batch(index, batch, report)
    return report


def _scan_batch(index: NgramIndex, batch: list[tuple[str, str]], report: ScanReport) -> None:
    for (doc_id, _), hits in zip(batch, index.match_many([t for _, t in batch])):
        report.add(doc_id, hits)


def _document_text(item: Any) -> str:
    if isinstance(item, list):  # a chat
        return "\n".join(str(m.get("content") or "") for m in item if isinstance(m, dict))
    return "" if item is None else str(item)


def decontaminate_sources(sources: list, index: NgramIndex, refuse: bool) -> dict:
    """Match every kept document of a mix's sources (`SourceIndex`es); drop the contaminated ones
    from each source (counted under `skipped.contaminated`), or, with `refuse`, fail naming them.
    Returns the counts per source for the mix manifest."""
    from generator.mix.reader import read_chunks

    out: dict[str, dict] = {}
    for src in sources:
        report = ScanReport(src.name)
        bad = np.zeros(len(src.rows), dtype=bool)
        for part in src.parts:
            columns = src.reader.read_columns(part.path)
            g = [(ch, int(np.searchsorted(src.rows, part.first_row + ch.first_row)),
                  int(np.searchsorted(src.rows, part.first_row + ch.first_row + ch.rows))) for ch in part.chunks]
            g = [(ch, a, b) for ch, a, b in g if b > a]
            spans = {ch: (a, b) for ch, a, b in g}
            for ch, df in read_chunks(part.path, [ch for ch, _, _ in g], columns):
                a, b = spans[ch]
                rows = src.rows[a:b]
                file_rows = rows - part.first_row
                items, lineage = src.reader.documents(df, file_rows - ch.first_row, file_rows, rows, part.path)
                for k, hits in enumerate(index.match_many([_document_text(x) for x in items])):
                    report.add(str(lineage[k]), hits, str(part.path))
                    bad[a + k] = bool(hits)
        out[src.name] = report.as_dict()
        if refuse and report.contaminated:
            ex = report.examples[0]
            raise SynthgenError(f"mix source '{src.name}': {report.contaminated} of {report.documents} documents "
                                f"repeat benchmark items (e.g. {ex['file']}: {ex['id']}: {ex['benchmark']} item "
                                f"{ex['item_id']}, '{ex['ngram']}'); drop them with `--contaminated drop` "
                                f"(`contaminated: drop`), or clean the source")
        if bad.any():
            keep = ~bad
            src.rows, src.n_tokens, src.topic_codes = src.rows[keep], src.n_tokens[keep], src.topic_codes[keep]
            src.skipped["contaminated"] = src.skipped.get("contaminated", 0) + int(bad.sum())
    return out
