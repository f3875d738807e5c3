"""Benchmark n-gram index: which benchmark items a text repeats, by shared word n-grams.

Texts are normalised the same way on both sides (Unicode NFKC, lowercase, every character that is
not a letter or digit a word break, whitespace collapsed), then every window of `n` consecutive
words is hashed to 64 bits. The index is the sorted set of the benchmark's window hashes; a text
is scanned in NumPy, a batch of texts at a time (no Python object per word), and a hash found in
the index is confirmed word for word against the benchmark's own window, so a hash collision
never reports a hit: a hit means `n` identical normalised words.

Memory follows the index (8 bytes per distinct benchmark window, a bitmap of about 2 bytes per
window, the benchmark's normalised text); a corpus is scanned in batches and never held.
Benchmark texts shorter than `n` words have no window and cannot match (`IndexStats.short`).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

NORMALIZER_VERSION = 1  # part of the cache key: a change to `normalize` or the hashes rebuilds every index
_WORD = re.compile(r"[^\W_]+")
# ASCII fast path: letters lowercased, digits kept, everything else a space (what _WORD keeps)
_ASCII = bytes(c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32
               for c in range(256))
_BYTE_BASE = np.uint64(0x100000001B3)        # odd: every power is invertible mod 2^64
_WORD_BASE = np.uint64(0x9E3779B97F4A7C15)
_BATCH_BYTES = 256 << 10                     # texts are scanned in batches of about this size (cache-sized)


def normalize(text: str) -> bytes:
    """`text` as space-separated normalised words (UTF-8): NFKC, lowercase, punctuation removed."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII)
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower())).encode("utf-8")


def words(text: str) -> list[str]:
    """The normalised words of `text` (what the n-grams are made of)."""
    return normalize(text).decode("utf-8").split()


@dataclass(frozen=True)
class Hit:
    benchmark: str
    item_id: str
    ngram: str       # the first matched n-gram, normalised words joined by spaces
    overlap: float   # share of the item's text (its best-covered field) whose n-grams are in the text

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "item_id": self.item_id, "ngram": self.ngram,
                "overlap": round(self.overlap, 4)}


@dataclass(frozen=True)
class Item:
    benchmark: str
    item_id: str
    texts: tuple[str, ...]  # the indexed fields' values


@dataclass
class IndexStats:
    items: dict[str, int]      # benchmark -> items indexed
    ngrams: int                # distinct windows
    short: int                 # texts with fewer than n words (no window)
    bytes: int                 # memory held by the index arrays


_INV_BYTE_BASE = np.uint64(pow(int(_BYTE_BASE), -1, 1 << 64))
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """BYTE_BASE^i and its inverse for i < size (grown on demand, kept: a batch's size)."""
    global _powers
    if _powers[0].size < size:
        size = max(size, 2 * _powers[0].size)
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(size, _BYTE_BASE, np.uint64))
            inv = np.cumprod(np.full(size, _INV_BYTE_BASE, np.uint64))
        pw[1:], pw[0] = pw[:-1].copy(), 1
        inv[1:], inv[0] = inv[:-1].copy(), 1
        _powers = (pw, inv)
    return _powers


def _windows(buf: bytes, starts_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every n-word window of the texts joined in `buf` (each followed by one space),
    the text each window is in and its first word's number in `buf`. A word's hash is a polynomial
    of its bytes, read off a prefix sum (one pass per byte, no per-byte gathers); a window's hash
    is a polynomial of its words' hashes."""
    a = np.frombuffer(buf, dtype=np.uint8)
    isword = a != 32
    edge = np.flatnonzero(np.diff(isword.view(np.int8), prepend=np.int8(0)))
    wstart, wend = edge[0::2], edge[1::2]  # starts and ends alternate; `buf` ends with a space
    m = wstart.size
    empty = np.empty(0, np.int64)
    if m < n:
        return np.empty(0, np.uint64), empty, empty
    pw, inv = _power_tables(a.size)
    with np.errstate(over="ignore"):
        vals = (a * isword).astype(np.uint64)
        vals *= pw[:a.size]
        prefix = np.cumsum(vals)
        wh = (prefix[wend - 1] - prefix[wstart] + vals[wstart]) * inv[wstart]
        wh = wh * _WORD_BASE + (wend - wstart).astype(np.uint64)
        span = m - n + 1
        h = wh[:span].copy()
        for k in range(1, n):
            h *= _WORD_BASE
            h += wh[k:k + span]
        h ^= h >> np.uint64(31)
    first = np.searchsorted(wstart, starts_doc)  # each text's first word
    doc = np.repeat(np.arange(first.size), np.diff(first, append=m))
    ok = doc[:span] == doc[n - 1:]
    doc = doc[:span][ok]
    return h[ok], doc, np.flatnonzero(ok) - first[doc]


def window_hashes(texts: Sequence[bytes], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, text number, word position) of every window of already normalised texts."""
    if not texts:
        e = np.empty(0, np.int64)
        return np.empty(0, np.uint64), e, e
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return _windows(b" ".join(texts) + b" ", starts, n)


class NgramIndex:
    """Benchmark items' n-grams, and `match`/`match_many` for texts against them."""

    def __init__(self, n: int, benchmarks: list[str], items: list[Item], seg_item: np.ndarray,
                 seg_text: list[bytes], keys: np.ndarray, owner_off: np.ndarray, owner_seg: np.ndarray,
                 owner_pos: np.ndarray, seg_ngrams: np.ndarray, short: int):
        self.n = n
        self.benchmarks = benchmarks
        self.items = items
        self.seg_item = seg_item          # segment (one field value) -> item number
        self.seg_text = seg_text          # segment -> normalised text
        self.keys = keys                  # sorted distinct window hashes
        self.owner_off = owner_off        # keys[j]'s windows: owner_seg/pos[owner_off[j]:owner_off[j+1]]
        self.owner_seg = owner_seg
        self.owner_pos = owner_pos
        self.seg_ngrams = seg_ngrams      # segment -> its distinct windows (the overlap's denominator)
        self.short = short
        bits = max(16, min(30, int(np.ceil(np.log2(max(1, keys.size) * 32)))))
        self._shift = np.uint64(64 - bits)
        self._bitmap = np.zeros(1 << bits, dtype=bool)
        self._bitmap[(keys >> self._shift).astype(np.int64)] = True
        self._seg_words: dict[int, list[bytes]] = {}
        self.cached = False  # set by the loader: True when read from the cache

    @classmethod
    def build(cls, items: Iterable[Item], n: int) -> NgramIndex:
        items = list(items)
        benchmarks = sorted({it.benchmark for it in items})
        seg_text: list[bytes] = []
        seg_item: list[int] = []
        short = 0
        for i, it in enumerate(items):
            for t in it.texts:
                norm = normalize(t)
                if len(norm.split()) < n:
                    short += 1
                    continue
                seg_text.append(norm)
                seg_item.append(i)
        seg_item_a = np.asarray(seg_item, dtype=np.int64)
        hashes, seg, pos = window_hashes(seg_text, n)
        order = np.lexsort((pos, seg, hashes))
        hashes, seg, pos = hashes[order], seg[order], pos[order]
        keys, first = np.unique(hashes, return_index=True)
        owner_off = np.append(first, hashes.size).astype(np.int64)
        # distinct windows per segment (the overlap's denominator)
        pairs = np.unique(np.stack([seg, hashes.view(np.int64)]), axis=1) if seg.size else np.empty((2, 0), np.int64)
        seg_ngrams = np.bincount(pairs[0], minlength=len(seg_text)).astype(np.int64)
        return cls(n, benchmarks, items, seg_item_a, seg_text, keys, owner_off, seg.astype(np.int64),
                   pos.astype(np.int64), seg_ngrams, short)

    def stats(self) -> IndexStats:
        counts: dict[str, int] = {b: 0 for b in self.benchmarks}
        for it in self.items:
            counts[it.benchmark] += 1
        held = sum(a.nbytes for a in (self.keys, self.owner_off, self.owner_seg, self.owner_pos, self._bitmap,
                                      self.seg_ngrams, self.seg_item)) + sum(len(t) for t in self.seg_text)
        return IndexStats(items=counts, ngrams=int(self.keys.size), short=self.short, bytes=held)

    def match(self, text: str) -> list[Hit]:
        return self.match_many([text])[0]

    def match_many(self, texts: Sequence[str]) -> list[list[Hit]]:
        """Per text, the benchmark items it shares an n-gram with (most overlap first)."""
        out: list[list[Hit]] = [[] for _ in texts]
        batch: list[bytes] = []
        first = size = 0
        for i, t in enumerate(texts):
            norm = normalize(t or "")
            batch.append(norm)
            size += len(norm)
            if size >= _BATCH_BYTES:
                self._scan(batch, first, out)
                batch, first, size = [], i + 1, 0
        self._scan(batch, first, out)
        return out

    def _scan(self, batch: list[bytes], first: int, out: list[list[Hit]]) -> None:
        if not batch or not self.keys.size:
            return
        h, doc, pos = window_hashes(batch, self.n)
        cand = self._bitmap[(h >> self._shift).astype(np.int64)]
        if not cand.any():
            return
        h, doc, pos = h[cand], doc[cand], pos[cand]
        j = np.minimum(np.searchsorted(self.keys, h), self.keys.size - 1)
        found = self.keys[j] == h
        for d in np.unique(doc[found]):
            sel = found & (doc == d)
            out[first + int(d)] = self._confirm(batch[int(d)].split(), j[sel], pos[sel])

    def _words_of(self, seg: int) -> list[bytes]:
        w = self._seg_words.get(seg)
        if w is None:
            w = self._seg_words[seg] = self.seg_text[seg].split()
        return w

    def _confirm(self, text_words: list[bytes], keys: np.ndarray, positions: np.ndarray) -> list[Hit]:
        """Hits whose words really match, one per item, with the item's overlap share."""
        n = self.n
        seen: dict[int, dict[int, set[int]]] = {}   # item -> segment -> distinct matched keys
        first_ngram: dict[int, bytes] = {}
        for key, p in zip(keys.tolist(), positions.tolist()):
            window = text_words[p:p + n]
            for k in range(self.owner_off[key], self.owner_off[key + 1]):
                seg, sp = int(self.owner_seg[k]), int(self.owner_pos[k])
                if self._words_of(seg)[sp:sp + n] != window:
                    continue  # a hash collision: not the same words
                item = int(self.seg_item[seg])
                seen.setdefault(item, {}).setdefault(seg, set()).add(key)
                first_ngram.setdefault(item, b" ".join(window))
        hits = []
        for i, segs in seen.items():
            share = max(len(ks) / max(1, int(self.seg_ngrams[s])) for s, ks in segs.items())
            it = self.items[i]
            hits.append(Hit(it.benchmark, it.item_id, first_ngram[i].decode("utf-8"), min(1.0, share)))
        return sorted(hits, key=lambda x: (-x.overlap, x.benchmark, x.item_id))

    # ------------------------------------------------------------ on disk
    def save(self, path) -> None:
        """The index as one .npz (no pickles), written atomically."""
        from generator.core.files import atomic_path

        meta = {"n": self.n, "benchmarks": self.benchmarks, "short": self.short,
                "items": [[it.benchmark, it.item_id] for it in self.items]}
        text_off = np.cumsum([0] + [len(t) for t in self.seg_text]).astype(np.int64)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keys=self.keys, owner_off=self.owner_off, owner_seg=self.owner_seg,
                         owner_pos=self.owner_pos, seg_ngrams=self.seg_ngrams, seg_item=self.seg_item,
                         text=np.frombuffer(b"".join(self.seg_text), dtype=np.uint8), text_off=text_off,
                         meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path) -> NgramIndex:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            text, off = z["text"].tobytes(), z["text_off"]
            seg_text = [text[off[i]:off[i + 1]] for i in range(off.size - 1)]
            index = cls(meta["n"], meta["benchmarks"], [Item(b, i, ()) for b, i in meta["items"]], z["seg_item"],
                        seg_text, z["keys"], z["owner_off"], z["owner_seg"], z["owner_pos"], z["seg_ngrams"],
                        meta["short"])
        index.cached = True
        return index
