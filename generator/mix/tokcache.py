"""Per-file token counts cached in `.tokcache.parquet`, keyed by file hash + tokenizer hash."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from generator.mix.digest import text_sha256
from generator.mix.tokens import TokenizerInfo

TOKCACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHGEN_CACHE", Path.home() / ".cache" / "synthgen")).expanduser()


def cache_file(file_sha: str, extract_key: dict, tok: TokenizerInfo, cache_dir: Path) -> Path:
    """Where the counts of one file, read one way, with one tokenizer, are kept."""
    key = text_sha256(json.dumps({"v": TOKCACHE_VERSION, "tokenizer": tok.sha256, "eos": tok.eos_id, **extract_key},
                          sort_keys=True))
    return cache_dir / "tokcache" / f"{file_sha[:24]}-{key[:16]}.tokcache.parquet"


def read_cache(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return pq.read_table(path).column("n_tokens").to_numpy().astype(np.int64)
    except (OSError, KeyError, pa.ArrowException):
        return None


def write_cache(path: Path, file: Path, file_sha: str, extract_key: dict, tok: TokenizerInfo,
                counts: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {b"synthgen.tokcache": json.dumps({"file": str(file), "file_sha256": file_sha,
                                                   "tokenizer_sha256": tok.sha256, **extract_key}).encode()}
        table = pa.table({"n_tokens": pa.array(counts, type=pa.int32())}).replace_schema_metadata(meta)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs speed
