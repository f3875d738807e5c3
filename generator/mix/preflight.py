"""Cheap checks of a whole mix config before any data is read or any token counted.

Every source must exist, be readable and hold data: a real file is a known data format and not
empty (a Parquet footer with rows, a JSONL file with a line), a real folder holds such a file, a
run folder holds generation shards; the first real file has the fields the layout reads. Each
check touches only file metadata, a Parquet footer or a file's first line, so `synthgen validate`
and `synthgen mix` report a broken source in well under a second, before the tokenizer loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from generator.config.mix import REAL_SUFFIXES, MixConfig, RealSource, template_fields
from generator.core import storage
from generator.core.errors import RunFolderError, SpecError
from generator.core.run_layout import GENERATIONS, generation_files
from generator.core.yaml_loader import Located

Problem = tuple[tuple, str]  # (path of the offending key in the mix config, message ending with the fix)
_SUFFIXES = ", ".join(REAL_SUFFIXES)
_HEAD_BYTES = 1 << 20  # how much of a JSONL file is read to find its first row


def needed_fields(src: RealSource, layout: str) -> list[str]:
    """The columns a real source's rows must have for `layout` (as `real.RealRows` reads them)."""
    if layout == "text":
        if src.text_template:
            return template_fields(src.text_template)
        return [src.messages_field or src.text_field]
    if src.user_template and src.assistant_template:
        user = template_fields(src.user_template)
        return user + [f for f in template_fields(src.assistant_template) if f not in user]
    return [src.messages_field or "messages"]


def _first_data_file(folder: Path) -> Path | None:
    for p in sorted(folder.rglob("*")):
        if p.name.endswith(REAL_SUFFIXES) and not p.name.startswith(".") and p.is_file() and p.stat().st_size:
            return p
    return None


def _columns(file: Path) -> tuple[list[str] | None, str | None]:
    """(column names or None when not cheap to know, or a problem with the file)."""
    if file.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(file)
        except Exception as exc:  # noqa: BLE001 - any unreadable footer is the same problem for the user
            return None, f"{file} is not a readable Parquet file ({str(exc).splitlines()[0]}); replace it"
        if meta.num_rows == 0:
            return None, f"{file} has no rows; point the source at a file with data"
        return list(meta.schema.to_arrow_schema().names), None
    if file.name.endswith(".zst"):
        return None, None  # compressed: its first row costs a decompression; checked when read
    with file.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    line = next((ln for ln in head.split(b"\n") if ln.strip()), None)
    if line is None:
        return None, f"{file} has no rows (only blank lines); point the source at a file with data"
    if file.name.endswith(".json") and head.lstrip().startswith(b"["):
        return None, None  # a JSON array: fields are checked when it is read
    try:
        row = json.loads(line)
    except ValueError:
        return None, None  # a long first line cut at the head, or bad JSON: reported with its line when read
    return (list(row) if isinstance(row, dict) else None), None


def _real(i: int, src: RealSource, layout: str) -> Iterator[Problem]:
    at, path, name = ("real", i, "path"), src.path, src.display_name()
    if not path.exists():
        yield at, (f"real source '{name}': {path} does not exist; fix the path (a relative path starts at "
                   f"the mix file's folder)")
        return
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        yield at, f"real source '{name}': {path} is not readable; check its permissions"
        return
    if path.is_dir():
        file = _first_data_file(path)
        if file is None:
            yield at, (f"real source '{name}': the folder {path} holds no non-empty {_SUFFIXES} file; "
                       f"point path at a folder with data files")
            return
    else:
        file = path
        if not path.name.endswith(REAL_SUFFIXES):
            yield at, (f"real source '{name}': {path} is not a {_SUFFIXES} file; point path at a data file "
                       f"or a folder of them")
            return
        if path.stat().st_size == 0:
            yield at, f"real source '{name}': {path} is empty; point path at a file with data"
            return
    columns, problem = _columns(file)
    if problem:
        yield at, f"real source '{name}': {problem}"
        return
    if columns is not None:
        missing = [f for f in needed_fields(src, layout) if f not in columns]
        if missing:
            key = "text_template" if src.text_template and layout == "text" else (
                "user_template" if src.user_template and layout == "messages" else
                "messages_field" if src.messages_field or layout == "messages" else "text_field")
            yield ("real", i, key) if getattr(src, key, None) is not None else ("real", i), (
                f"real source '{name}': {file} has no field {', '.join(repr(m) for m in missing)} "
                f"(fields: {', '.join(columns) or 'none'}); set {key} to one of its fields")


def problems(cfg: MixConfig) -> list[Problem]:
    """Every source problem of `cfg` (paths already resolved), in the order they are written."""
    out: list[Problem] = []
    for i, src in enumerate(cfg.real):
        out.extend(_real(i, src, cfg.layout))
    for i, syn in enumerate(cfg.synthetic):
        problem = _remote_run(syn.run) if storage.is_url(syn.run) else _local_run(syn.run)
        if problem:
            out.append((("synthetic", i, "run"), f"synthetic source '{syn.display_name()}': {problem}"))
    if cfg.tokenizer and not _alias(cfg.tokenizer) and not Path(cfg.tokenizer).expanduser().exists():
        out.append((("tokenizer",), f"tokenizer {cfg.tokenizer} is neither a model alias nor an existing "
                                    f"folder or tokenizer.json; fix the path or name a model alias"))
    if storage.is_url(cfg.out):
        try:
            storage.check_writable(cfg.out)  # the bucket exists and can be read: before any token is counted
        except RunFolderError as exc:
            out.append((("out",), f"out: {exc}"))
    elif cfg.out is not None and cfg.out.exists() and not cfg.out.is_dir():
        out.append((("out",), f"out: {cfg.out} is a file; give a folder for the mix"))
    return out


_NO_SHARDS = (f"has no {GENERATIONS}/part-*.parquet shards; run `synthgen run SPEC` into it first, or point run "
              f"at a finished run folder")


def _local_run(run: Path) -> str | None:
    if not run.is_dir():
        what = "is not a folder" if run.exists() else "does not exist"
        return f"{run} {what}; point run at a synthgen run folder (runs/NAME, written by `synthgen run`)"
    if not os.access(run, os.R_OK | os.X_OK):
        return f"{run} is not readable; check its permissions"
    if not generation_files(run):
        return f"{run} {_NO_SHARDS}"
    return None


def _remote_run(run: str) -> str | None:
    """The same checks on a URL: one listing of the run's prefix and one of its shards."""
    try:
        if not storage.is_dir(run):
            return (f"{run} does not exist (no object under that prefix); point run at a run folder that "
                    f"`synthgen run SPEC --out {run}` wrote")
        if not generation_files(run):
            return f"{run} {_NO_SHARDS}"
    except RunFolderError as exc:  # no bucket, no credentials, endpoint down: already one line with the fix
        return str(exc)
    return None


def _alias(name: str) -> bool:
    from generator.mix.tokens import is_tokenizer_alias

    return is_tokenizer_alias(name)


def check_sources(cfg: MixConfig, located: Located | None = None, prefix: tuple = (),
                  replaced: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise SpecError for the first source problem (at its line when the YAML is known and the key
    was not `replaced` by a command-line option), saying how many more there are."""
    found = problems(cfg)
    if not found:
        return
    path, msg = found[0]
    if len(found) > 1:
        msg = f"first of {len(found)} source problems: {msg}"
    if located is not None and path[0] not in replaced:
        raise located.error(prefix + path, msg)
    raise SpecError(msg)
