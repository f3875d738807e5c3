"""Reading source files in bounded chunks, and reading a chunk again later by its position.

JSONL is cut into blocks of whole lines (CHUNK_BYTES each), JSONL.zst likewise after
decompression, Parquet into batches of about CHUNK_BYTES (uncompressed) within each row group.
A `Chunk` remembers where its rows are, so that the documents a mix selects can be read back
without reading the rest of the file into memory.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from generator.core.errors import SynthgenError

CHUNK_BYTES = 8 << 20  # peak memory grows by about 6x this (the block, parsed rows, Python strings)


@dataclass(frozen=True)
class Chunk:
    """JSONL: bytes [start, end) of the file (JSONL.zst: of the decompressed stream).
    Parquet: batch `end` of `batch_rows` rows within row group `start`."""
    start: int
    end: int
    first_row: int  # index of the chunk's first row within its file
    rows: int
    batch_rows: int = 0


def _batch_rows(pf: pq.ParquetFile, group: int) -> int:
    md = pf.metadata.row_group(group)
    per_row = max(1, md.total_byte_size // max(1, md.num_rows))
    return max(1, CHUNK_BYTES // per_row)


def _batches(pf: pq.ParquetFile, group: int, size: int, cols: list[str] | None) -> Iterator[pl.DataFrame]:
    for batch in pf.iter_batches(batch_size=size, row_groups=[group], columns=cols, use_threads=True):
        df = pl.from_arrow(batch)
        if not isinstance(df, pl.DataFrame):  # a record batch is a frame; a bare array would be a Series
            raise TypeError(f"{pf}: a batch read as {type(df).__name__}, not a frame")
        yield df


def file_format(path: Path) -> str:
    name = path.name
    if name.endswith(".parquet"):
        return "parquet"
    return "zst" if name.endswith(".zst") else "jsonl"


def _fail(path: Path, exc: Exception) -> SynthgenError:
    return SynthgenError(f"{path}: cannot read ({str(exc).splitlines()[0]})")


def _parse_json(path: Path, data: bytes) -> pl.DataFrame:
    if not data.strip():
        return pl.DataFrame()
    try:
        return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        raise _fail(path, exc) from None


def _byte_blocks(stream: io.RawIOBase | pa.NativeFile, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of whole lines, about chunk_bytes each."""
    offset, rest = 0, b""
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        yield offset, data[:cut]
        offset += cut
        rest = data[cut:]
    if rest:
        yield offset, rest


def _open(path: Path, fmt: str):
    if fmt == "zst":
        return pa.input_stream(str(path), compression="zstd")
    return open(path, "rb")


def scan_file(path: Path, columns: list[str] | None = None) -> Iterator[tuple[Chunk, pl.DataFrame, list[str]]]:
    """Every chunk of a file in order, with its rows and the file's columns (Parquet: only `columns`
    that exist are read; JSON: all fields, and the columns are those of the chunk)."""
    fmt = file_format(path)
    row = 0
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)  # stream pages, not row groups
            names = pf.schema_arrow.names
            cols = [c for c in dict.fromkeys(columns) if c in names] if columns is not None else None
            for g in range(pf.metadata.num_row_groups):
                size = _batch_rows(pf, g)
                for b, df in enumerate(_batches(pf, g, size, cols)):
                    yield Chunk(g, b, row, df.height, size), df, names
                    row += df.height
            return
        with _open(path, fmt) as f:
            for offset, block in _byte_blocks(f, CHUNK_BYTES):
                df = _parse_json(path, block)
                yield Chunk(offset, offset + len(block), row, df.height), df, df.columns
                row += df.height
    except (pa.ArrowException, OSError) as exc:
        raise _fail(path, exc) from None


def read_chunks(path: Path, chunks: list[Chunk], columns: list[str] | None = None
                ) -> Iterator[tuple[Chunk, pl.DataFrame]]:
    """The rows of `chunks` (in file order), read again."""
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            names = pf.schema_arrow.names
            cols = [c for c in dict.fromkeys(columns) if c in names] if columns is not None else None
            by_group: dict[int, list[Chunk]] = {}
            for ch in chunks:
                by_group.setdefault(ch.start, []).append(ch)
            for g, group in by_group.items():
                want = {ch.end: ch for ch in group}
                for b, df in enumerate(_batches(pf, g, group[0].batch_rows, cols)):
                    if b in want:
                        yield want[b], df
                    if b >= max(want):
                        break
        elif fmt == "jsonl":
            with open(path, "rb") as f:
                for ch in chunks:
                    f.seek(ch.start)
                    yield ch, _parse_json(path, f.read(ch.end - ch.start))
        else:  # zstd streams cannot seek: decompress through the chunks not needed
            with _open(path, fmt) as f:
                pos = 0
                for ch in chunks:
                    while pos < ch.start:
                        skipped = len(f.read(min(ch.start - pos, CHUNK_BYTES)))
                        if not skipped:
                            raise SynthgenError(f"{path}: shorter than when it was first read; rerun the mix")
                        pos += skipped
                    data = f.read(ch.end - ch.start)
                    pos += len(data)
                    yield ch, _parse_json(path, data)
    except (pa.ArrowException, OSError) as exc:
        raise _fail(path, exc) from None
