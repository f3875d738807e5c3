"""Writing the mixes: one more pass over the sources, then each shard assembled and written.

The pass reads only the chunks that hold selected documents and appends each selected document
(with its shard and its position there) to a spill file beside the output, grouped by shard. Each
shard is then read back from the spill, put in its order and written. Memory holds one chunk,
the spill buffer and one shard at a time, whatever the size of the sources.
"""
from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from generator.core.errors import SynthgenError
from generator.mix.pool import MESSAGE_TYPE, Pool
from generator.mix.reader import read_chunks

SPILL_BYTES = 64 << 20  # buffered before it is sorted by shard and appended to the spill file


@dataclass
class MixPlan:
    """One ratio's selection, in output order, and where its shards go."""
    ratio: str
    folder: Path
    sel: np.ndarray  # global document ids, shuffled
    lengths: np.ndarray  # tokens per selected document
    bounds: list[tuple[int, int]]  # shards as [start, end) of sel
    first_key: int = 0  # spill key of the first shard


class Spill:
    """Rows (key, pos, payload, lineage) appended by shard key; read back one key at a time."""

    def __init__(self, path: Path, payload_type: pa.DataType):
        self.path = path
        self.schema = pa.schema([("key", pa.int64()), ("pos", pa.int64()), ("payload", payload_type),
                                 ("lineage", pa.string())])
        self.file = open(path, "w+b")
        self.segments: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.buf: list[pa.Table] = []
        self.nbytes = 0

    def add(self, table: pa.Table) -> None:
        self.buf.append(table)
        self.nbytes += table.nbytes
        if self.nbytes >= SPILL_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        t = pa.concat_tables(self.buf)
        self.buf, self.nbytes = [], 0
        keys = t.column("key").to_numpy()
        order = np.argsort(keys, kind="stable")
        t, keys = t.take(pa.array(order)), keys[order]
        cuts = np.flatnonzero(np.diff(keys)) + 1
        for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(keys)]])):
            sink = io.BytesIO()
            with pa.ipc.new_stream(sink, self.schema) as w:
                w.write_table(t.slice(int(a), int(b - a)))
            data = sink.getvalue()
            self.file.seek(0, io.SEEK_END)
            self.segments[int(keys[a])].append((self.file.tell(), len(data)))
            self.file.write(data)

    def read(self, key: int) -> pa.Table:
        parts = []
        for off, size in self.segments.pop(key, []):
            self.file.seek(off)
            parts.append(pa.ipc.open_stream(self.file.read(size)).read_all())
        return pa.concat_tables(parts) if parts else self.schema.empty_table()

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def spill_selected(plans: list[MixPlan], pool: Pool, layout: str, spill: Spill) -> None:
    """Read every selected document once and append it to the spill under each (shard, position) it fills."""
    key = 0
    docs, keys, pos = [], [], []
    for plan in plans:
        plan.first_key = key
        for a, b in plan.bounds:
            docs.append(plan.sel[a:b])
            keys.append(np.full(b - a, key, dtype=np.int64))
            pos.append(np.arange(b - a, dtype=np.int64))
            key += 1
    if not docs:
        return
    all_docs, all_keys, all_pos = np.concatenate(docs), np.concatenate(keys), np.concatenate(pos)
    order = np.argsort(all_docs, kind="stable")
    sorted_docs = all_docs[order]
    typ = pa.large_string() if layout == "text" else MESSAGE_TYPE
    for si, src in enumerate(pool.sources):
        base = int(pool.offsets[si])
        for part in src.parts:
            wanted = []
            for ch in part.chunks:
                g0 = base + int(np.searchsorted(src.rows, part.first_row + ch.first_row))
                g1 = base + int(np.searchsorted(src.rows, part.first_row + ch.first_row + ch.rows))
                s0, s1 = np.searchsorted(sorted_docs, [g0, g1])
                if s1 > s0:
                    wanted.append((ch, order[s0:s1]))
            if not wanted:
                continue
            slots_of = {ch: slots for ch, slots in wanted}
            columns = src.reader.read_columns(part.path)
            for ch, df in read_chunks(part.path, [ch for ch, _ in wanted], columns):
                if df.height != ch.rows:
                    raise SynthgenError(f"{part.path}: changed while the mix was built; rerun the mix")
                slots = slots_of[ch]
                uniq, inv = np.unique(all_docs[slots], return_inverse=True)
                rows = src.rows[uniq - base]
                file_rows = rows - part.first_row
                items, lineage = src.reader.documents(df, file_rows - ch.first_row, file_rows, rows, part.path)
                take = pa.array(inv)
                spill.add(pa.table({"key": all_keys[slots], "pos": all_pos[slots],
                                    "payload": pa.array(items, type=typ).take(take),
                                    "lineage": pa.array(lineage, type=pa.string()).take(take)}))
    spill.flush()


def shard_tables(plans: list[MixPlan], pool: Pool, layout: str, spill: Spill
                 ) -> Callable[[MixPlan, int], pa.Table]:
    """A function giving one shard's table (payload, source, kind, lineage_id), in output order."""
    names = pa.array([s.name for s in pool.sources], type=pa.string())
    kinds = pa.array([s.kind for s in pool.sources], type=pa.string())
    col = "text" if layout == "text" else "messages"

    def table(plan: MixPlan, k: int) -> pa.Table:
        a, b = plan.bounds[k]
        t = spill.read(plan.first_key + k)
        if t.num_rows != b - a:
            raise SynthgenError(f"shard {k} of ratio {plan.ratio}: {t.num_rows} documents read back, "
                                f"{b - a} selected; a source changed while the mix was built")
        order = pa.array(np.argsort(t.column("pos").to_numpy(), kind="stable"))
        src_idx = pa.array(pool.source_idx[plan.sel[a:b]])
        return pa.table({col: t.column("payload").take(order).combine_chunks(),
                         "source": names.take(src_idx), "kind": kinds.take(src_idx),
                         "lineage_id": t.column("lineage").take(order).combine_chunks()})
    return table
