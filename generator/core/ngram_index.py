"""Benchmark n-gram index: which benchmark items a text repeats, by shared word n-grams.

Texts are normalised the same way on both sides (Unicode NFKC, lowercase, every character that is
not a letter or digit a word break, whitespace collapsed), then every window of `n` consecutive
words is hashed to 64 bits. The index is the sorted set of the benchmark's window hashes; texts
are scanned in NumPy, a batch at a time (no Python object per word), and a hash found in the index
is confirmed word for word against the benchmark's own window, so a hash collision never reports
a hit: a hit means `n` identical normalised words.

A batch of ASCII texts is joined once and classified in NumPy (letters and digits are words; the
lowercase is one OR), without a normalised copy; a batch with other characters is normalised
text by text first. A word's hash is read off its bytes 8 at a time, a window's hash off a prefix
sum of the words' hashes; only the windows that the index's bitmap lets through are placed in
their text and confirmed.

Memory follows the index (8 bytes per distinct benchmark window, a bitmap of 32 to 64 bytes per
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

NORMALIZER_VERSION = 2  # part of the cache key: a change to `normalize` or the hashes rebuilds every index
_NON_ASCII_BREAK = re.compile(r"[^\w\x00-\x7f]+")  # \w: letters, digits and "_" (ASCII: _ASCII makes it a space)
# ASCII letters lowercased, digits and UTF-8 bytes of other characters kept, every other ASCII byte a space
_ASCII = bytes(c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32
               for c in range(256))
_WORD_BASE = 0x9E3779B97F4A7C15               # odd: every power is invertible mod 2^64
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_MASK = np.array([(1 << 8 * k) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes of 8
_BATCH_BYTES = 128 << 10                      # texts are scanned in batches of about this size (cache-sized)
_BITMAP_PER_KEY = 32                           # bitmap entries per key: 1 window in 32-64 needs a search


def _padded(buf: bytes) -> bytes:
    """`buf` with 8 to 15 spaces after it, to a multiple of 8 bytes: 8-byte reads stay inside."""
    return buf + b" " * (8 + (-len(buf)) % 8)


def normalize(text: str) -> bytes:
    """`text` as normalised words (UTF-8) with one or more spaces between them: NFKC, lowercase,
    every character that is not a letter or digit a space."""
    if not text.isascii():  # other characters that are not letters or digits: a space; then as ASCII
        text = _NON_ASCII_BREAK.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return text.encode("utf-8").translate(_ASCII)


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


_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """WORD_BASE^i and its inverse for i < size (grown on demand and kept: a batch's word count).
    Rebinding the pair is atomic, so threads that scan at once see either table whole."""
    global _powers
    pw, inv = _powers
    if pw.size < size:
        size = max(size, 2 * pw.size)
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(size, np.uint64(_WORD_BASE)))
            inv = np.cumprod(np.full(size, np.uint64(pow(_WORD_BASE, -1, 1 << 64))))
        pw[1:], pw[0] = pw[:-1].copy(), 1
        inv[1:], inv[0] = inv[:-1].copy(), 1
        _powers = (pw, inv)
    return pw, inv


class _Batch:
    """Texts joined into one buffer (a space before each, 8 after the last) and cut into words:
    `ws`/`wl` each word's start and length, `first` each text's first word number (and the word
    count last), `h` the hash of every n-word window, across texts too (`valid` sorts them out)."""

    def __init__(self, buf: bytes, starts: np.ndarray, ascii_raw: bool, n: int):
        a = np.frombuffer(buf, dtype=np.uint8)  # `buf` is padded to a multiple of 8 bytes
        if ascii_raw:  # not normalised: letters and digits are the words, OR 32 lowercases a letter
            low = a | np.uint8(32)
            isword = (low - np.uint8(97) < 26) | (a - np.uint8(48) < 10)
        else:          # normalised: words and spaces
            low, isword = a.copy(), a != 32  # the copy is aligned for 8-byte loads
        edge = np.flatnonzero(isword[1:] != isword[:-1]) + 1  # buf starts and ends with a non-word byte
        self.ws, self.wl = edge[0::2], edge[1::2] - edge[0::2]
        m = self.ws.size
        self.first = np.append(np.searchsorted(self.ws, starts), m)
        self.n = n
        self.h = _window_hashes(_word_hashes(low, self.ws, self.wl), n) if m >= n else np.empty(0, np.uint64)

    def valid(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of windows `g` (first word numbers), those inside one text: (kept mask, text, position)."""
        doc = np.searchsorted(self.first, g, side="right") - 1
        ok = g + self.n <= self.first[doc + 1]
        return ok, doc, g - self.first[doc]


def _word_hashes(low: np.ndarray, ws: np.ndarray, wl: np.ndarray) -> np.ndarray:
    """Each word's hash: its first 8 bytes as a little-endian number (two aligned loads shifted
    together, the bytes past the word masked off: one-to-one for words of up to 8 bytes), a longer
    word's further 8-byte parts mixed in. A few passes over the words, none per byte."""
    u = low.view(np.uint64)        # `low` is aligned and padded to a multiple of 8 bytes
    with np.errstate(over="ignore"):
        def load(at: np.ndarray) -> np.ndarray:  # the 8 bytes from byte `at`
            shift = (at.view(np.uint64) & np.uint64(7)) << np.uint64(3)
            q = at >> 3
            return (u[q] >> shift) | (u[q + 1] << (np.uint64(64) - shift))  # a shift by 64 gives 0
        h = load(ws) & _MASK[np.minimum(wl, 8)]
        more, k = np.flatnonzero(wl > 8), 8
        while more.size:  # long words: their next 8 bytes
            part = load(ws[more] + k) & _MASK[np.minimum(wl[more] - k, 8)]
            h[more] = (h[more] ^ part) * _MIX
            k += 8
            more = more[wl[more] > k]
    return h


def _window_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """Sum of wh[i+k]·B^k over k < n for every i, off a prefix sum of wh[j]·B^j (B odd, so
    B^-i exists mod 2^64): four passes over the words whatever n is."""
    m = wh.size
    pw, inv = _power_tables(m)
    with np.errstate(over="ignore"):
        prefix = np.empty(m + 1, np.uint64)
        prefix[0] = 0
        np.multiply(wh, pw[:m], out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        h = prefix[n:] - prefix[:m - n + 1]
        h *= inv[:m - n + 1]
        h ^= h >> np.uint64(31)
    return h


def _starts(lengths: Sequence[int]) -> np.ndarray:
    """Where each text begins in a buffer that puts one space before each."""
    ln = np.fromiter(lengths, dtype=np.int64)
    return np.cumsum(ln + 1) - ln


def window_hashes(texts: Sequence[bytes], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, text number, word position) of every window of already normalised texts."""
    e = np.empty(0, np.int64)
    if not texts:
        return np.empty(0, np.uint64), e, e
    b = _Batch(_padded(b" " + b" ".join(texts) + b" "), _starts(map(len, texts)), False, n)
    if not b.h.size:
        return b.h, e, e
    ok, doc, pos = b.valid(np.arange(b.h.size))
    return b.h[ok], doc[ok], pos[ok]


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
        bits = max(16, min(28, int(np.ceil(np.log2(max(1, keys.size) * _BITMAP_PER_KEY)))))  # <= 256 MiB
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

    def match_many(self, texts: Sequence[str | None]) -> list[list[Hit]]:
        """Per text, the benchmark items it shares an n-gram with (most overlap first)."""
        texts = [t or "" for t in texts]
        out: list[list[Hit]] = [[] for _ in texts]
        if not self.keys.size:
            return out
        first = size = 0
        for i, t in enumerate(texts):
            size += len(t) + 1
            if size >= _BATCH_BYTES:
                self._scan(texts[first:i + 1], first, out)
                first, size = i + 1, 0
        if first < len(texts):
            self._scan(texts[first:], first, out)
        return out

    def _scan(self, batch: list[str], first: int, out: list[list[Hit]]) -> None:
        joined = " ".join(batch)
        if joined.isascii():  # the common case: one join, one encode, no normalised copy
            norm = None
            b = _Batch(_padded(b" " + joined.encode("ascii") + b" "), _starts(map(len, batch)), True, self.n)
        else:
            norm = [normalize(t) for t in batch]
            b = _Batch(_padded(b" " + b" ".join(norm) + b" "), _starts(map(len, norm)), False, self.n)
        if not b.h.size:
            return
        cand = self._bitmap[(b.h >> self._shift).view(np.int64)]
        if not cand.any():
            return
        g = np.flatnonzero(cand)
        h = b.h[g]
        j = np.minimum(np.searchsorted(self.keys, h), self.keys.size - 1)
        found = self.keys[j] == h
        if not found.any():
            return
        ok, doc, pos = b.valid(g[found])
        j, doc, pos = j[found][ok], doc[ok], pos[ok]
        for d in np.unique(doc).tolist():
            sel = doc == d
            text = norm[d] if norm is not None else normalize(batch[d])
            out[first + d] = self._confirm(text.split(), j[sel], pos[sel])

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
