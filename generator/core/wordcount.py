"""Exact token counts without building encodings, for GPT-2-style byte-level BPE tokenizers;
and the entry points of the counting worker processes of `synthgen mix` (generator/mix/counting.py).

This module imports only numpy and tokenizers, so that the workers stay small.

A HF tokenizer splits a text on its added tokens, normalizes, pre-tokenizes it into words and runs
the model on each word on its own, so a text's count is the sum of its words' counts. For a
tokenizer whose whole pipeline is "ByteLevel pre-tokenizer (GPT-2 regex, no prefix space) + BPE"
(no normalizer, no truncation, no dropout), the words of a printable-ASCII text are exactly what
the GPT-2 regex below finds: on ASCII the Unicode classes of the original pattern are plain
character ranges, so no Unicode-table difference can move a word boundary. Each distinct word is
encoded once, by the tokenizer's own BPE model, and cached.

Texts outside printable ASCII (plus tab, newline, carriage return), texts that contain an added
token's content, and every text of any other tokenizer go to the tokenizer's batch encoder.
`PretokenCounter.build` also checks itself against the batch encoder before it is used.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# the GPT-2 / ByteLevel pattern with \p{L} -> [A-Za-z], \p{N} -> [0-9]: equal on the texts used here
_WORDS = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MAX_WORDS = 2_000_000  # cache bound (a few hundred MB at most); cleared when reached
_PROBES = ["Hello world", "it's  a\ttest\r\n\n  x", "1234567 + 89 = ?!", "   ", "", "don't've I'll",
           "a\n\n\nb  ", "x <|endoftext|> y", "caf\u00e9 na\u00efve \u4e2d\u6587", "tab\x0bvt", "'''s's"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer feeds BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class _WordCounts(dict):
    """word -> BPE token count; a miss runs the tokenizer's own BPE model on the word's bytes."""

    def __init__(self, model: Any, ascii_map: dict):
        super().__init__()
        self.model, self.ascii_map = model, ascii_map

    def __missing__(self, word: str) -> int:
        n = self[word] = len(self.model.tokenize(word.translate(self.ascii_map)))
        return n


class PretokenCounter:
    """Counts (without EOS) of texts; exact, see the module docstring."""

    def __init__(self, tokenizer: Any, added: list[str]):
        self.tok = tokenizer
        table = _bytes_to_unicode()
        self.cache = _WordCounts(tokenizer.model, str.maketrans({chr(b): table[b] for b in range(128)}))
        self._added = re.compile("|".join(re.escape(a) for a in sorted(added, key=len, reverse=True))) \
            if added else None
        self.fast_docs = 0
        self.slow_docs = 0

    @classmethod
    def build(cls, tokenizer: Any, tokenizer_json: Path) -> "PretokenCounter | None":
        """A counter when this tokenizer's pipeline is one the word cache reproduces, else None."""
        try:
            cfg = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        pre, model = cfg.get("pre_tokenizer") or {}, cfg.get("model") or {}
        if cfg.get("normalizer") is not None or cfg.get("truncation") is not None:
            return None
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
            return None
        if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
            return None
        added = [t["content"] for t in cfg.get("added_tokens") or [] if t.get("content")]
        counter = cls(tokenizer, added)
        want = [len(e) for e in tokenizer.encode_batch(_PROBES, add_special_tokens=False)]
        if counter.count(_PROBES).tolist() != want:
            return None
        counter.fast_docs = counter.slow_docs = 0
        return counter

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text (no EOS), add_special_tokens=False."""
        out = np.zeros(len(texts), dtype=np.int64)
        slow: list[int] = []
        if len(self.cache) >= _MAX_WORDS:
            self.cache.clear()
        get, findall = self.cache.__getitem__, _WORDS.findall
        unsafe, added = _UNSAFE.search, self._added
        for i, s in enumerate(texts):
            if not s.isascii() or unsafe(s) or (added is not None and added.search(s)):
                slow.append(i)
            else:
                out[i] = sum(map(get, findall(s)))
        if slow:
            fn = getattr(self.tok, "encode_batch_fast", None) or self.tok.encode_batch
            enc = fn([texts[i] for i in slow], add_special_tokens=False)
            out[slow] = [len(e) for e in enc]
        self.fast_docs += len(texts) - len(slow)
        self.slow_docs += len(slow)
        return out


ENCODE_BATCH = 10_000  # documents per call of the batch encoder


def count_documents(texts: Sequence[str | None], tok: Any, fast: PretokenCounter | None) -> np.ndarray:
    """Tokens per document plus one EOS; None gives -1."""
    out = np.full(len(texts), -1, dtype=np.int64)
    idx = [i for i, t in enumerate(texts) if t is not None]
    for start in range(0, len(idx), ENCODE_BATCH):
        chunk = idx[start:start + ENCODE_BATCH]
        batch = [texts[i] for i in chunk]
        if fast is not None:
            out[chunk] = fast.count(batch) + 1
        else:
            fn = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
            out[chunk] = [len(e) + 1 for e in fn(batch, add_special_tokens=False)]
    return out


_worker: dict[str, Any] = {}


def init_worker(tokenizer_json: str, word_cache: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    _worker["tok"] = tok
    _worker["fast"] = PretokenCounter.build(tok, Path(tokenizer_json)) if word_cache else None


def work(texts: list[str | None]) -> np.ndarray:
    return count_documents(texts, _worker["tok"], _worker["fast"]).astype(np.int32)
