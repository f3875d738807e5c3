"""Cutting a mix into shards of whole documents, and writing / reading one shard per format."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from generator.core.errors import SynthgenError
from generator.mix.megatron import write_megatron
from generator.mix.tokens import TokenizerInfo, encode_documents

WRITE_ROWS = 10_000  # rows serialized at a time (JSONL)


def shard_bounds(lengths: np.ndarray, shard_tokens: int) -> list[tuple[int, int]]:
    """Cut a sequence of documents into runs of at most shard_tokens (one oversize doc = one shard)."""
    bounds = []
    cs = np.concatenate([[0], np.cumsum(lengths)])
    start, n = 0, len(lengths)
    while start < n:
        end = int(np.searchsorted(cs, cs[start] + shard_tokens, side="right")) - 1
        end = max(end, start + 1)
        bounds.append((start, end))
        start = end
    return bounds


def write_shard(path_stem: Path, fmt: str, table: pa.Table, lengths: np.ndarray, tok: TokenizerInfo
                 ) -> list[Path]:
    if fmt == "parquet":
        path = path_stem.with_name(path_stem.name + ".parquet")
        pq.write_table(table, path, compression="zstd", row_group_size=10_000)
        return [path]
    if fmt in ("jsonl", "jsonl.zst"):
        # in slices: one JSON line per row, and zstd output does not depend on how input is fed
        path = path_stem.with_name(path_stem.name + "." + fmt)
        with (open(path, "wb") if fmt == "jsonl" else pa.output_stream(str(path), compression="zstd")) as f:
            for a in range(0, table.num_rows, WRITE_ROWS):
                buf = io.BytesIO()
                pl.from_arrow(table.slice(a, WRITE_ROWS)).write_ndjson(buf)
                f.write(buf.getvalue())
        return [path]
    # megatron: token ids + a sidecar with the row metadata
    texts = table.column("text").to_pylist()
    ids, lens = encode_documents(texts, tok)
    if not np.array_equal(lens, lengths):
        bad = int(np.flatnonzero(lens != lengths)[0])
        raise SynthgenError(f"token count drift in {path_stem.name}: document {bad} encodes to {lens[bad]} tokens, "
                            f"counted {lengths[bad]}; clear the .tokcache files and rerun")
    write_megatron(path_stem, ids, lens)
    meta = table.drop_columns(["text"]).append_column("n_tokens", pa.array(lens, type=pa.int32()))
    side = path_stem.with_name(path_stem.name + ".docs.parquet")
    pq.write_table(meta, side, compression="zstd")
    return [path_stem.with_suffix(".bin"), path_stem.with_suffix(".idx"), side]


def load_shard_rows(path: str | Path) -> list[dict]:
    """Rows of one JSONL / JSONL.zst / Parquet shard (a convenience for checks and tests)."""
    path = Path(path)
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if path.name.endswith(".zst"):
        with pa.input_stream(str(path), compression="zstd") as f:
            data = f.read()
    else:
        data = path.read_bytes()
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
