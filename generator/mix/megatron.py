"""Megatron-Core IndexedDataset files (.bin token ids + .idx index): writing and reading back."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from generator.core.errors import SynthgenError

MEGATRON_HEADER = b"MMIDIDX\x00\x00"
MEGATRON_DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
                        np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float64): 6,
                        np.dtype(np.float32): 7, np.dtype(np.uint16): 8}


def write_megatron(prefix: str | Path, ids: np.ndarray, lengths: np.ndarray) -> None:
    """Megatron-Core IndexedDataset: prefix.bin (token ids) and prefix.idx (one sequence per document)."""
    prefix = Path(prefix)
    ids = np.ascontiguousarray(ids)
    with open(prefix.with_suffix(".bin"), "wb") as f:
        f.write(ids.tobytes(order="C"))
    lengths32 = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths32), dtype=np.int64)
    if len(lengths32) > 1:
        pointers[1:] = np.cumsum(lengths32[:-1], dtype=np.int64) * ids.dtype.itemsize
    doc_idx = np.arange(len(lengths32) + 1, dtype=np.int64)
    with open(prefix.with_suffix(".idx"), "wb") as f:
        f.write(MEGATRON_HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_DTYPE_CODES[ids.dtype]))
        f.write(struct.pack("<Q", len(lengths32)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(lengths32.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_idx.tobytes(order="C"))


def read_megatron(prefix: str | Path) -> list[np.ndarray]:
    """Documents (token id arrays) of a Megatron .bin/.idx pair written by write_megatron."""
    prefix = Path(prefix)
    code_to_dtype = {v: k for k, v in MEGATRON_DTYPE_CODES.items()}
    with open(prefix.with_suffix(".idx"), "rb") as f:
        if f.read(9) != MEGATRON_HEADER:
            raise SynthgenError(f"{prefix}.idx: not a Megatron index (bad header)")
        (version,) = struct.unpack("<Q", f.read(8))
        (code,) = struct.unpack("<B", f.read(1))
        (seqs,) = struct.unpack("<Q", f.read(8))
        (docs,) = struct.unpack("<Q", f.read(8))
        lengths = np.frombuffer(f.read(4 * seqs), dtype=np.int32)
        pointers = np.frombuffer(f.read(8 * seqs), dtype=np.int64)
        doc_idx = np.frombuffer(f.read(8 * docs), dtype=np.int64)
    if version != 1:
        raise SynthgenError(f"{prefix}.idx: unsupported version {version}")
    dtype = code_to_dtype[code]
    data = np.fromfile(prefix.with_suffix(".bin"), dtype=dtype)
    out = []
    for d in range(len(doc_idx) - 1):
        for s in range(doc_idx[d], doc_idx[d + 1]):
            start = pointers[s] // dtype.itemsize
            out.append(data[start:start + lengths[s]])
    return out
