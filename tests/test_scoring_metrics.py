"""Each cheap metric on small hand-checkable inputs, plus the registry, budgets and reference agreement."""
from __future__ import annotations

import gzip
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from scoring.metrics import MetricResult, available, find_duplicates, get, sample_token_budget, score_texts
from scoring.metrics.duplicates import exact_duplicates
from scoring.metrics.lexical import (compression_ratio, distinct_n, ngram_entropy, self_bleu_scores,
                                     self_repetition)
from scoring.metrics.semantic import (cluster_proxy_metric, dcscore, kmeans_labels, cluster_entropy,
                                      mean_cosine_distance, vendi_score)
from helpers import importorskip_ci

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ------------------------------------------------------------------ registry and interface

def test_registry_lists_and_gets_metrics():
    names = available()
    for n in ["distinct_n", "ngram_entropy", "compression_ratio", "self_repetition", "self_bleu", "mean_length",
              "exact_dup_rate", "near_dup_rate", "vendi", "mean_cosine_distance", "kmeans_entropy", "dcscore",
              "cluster_proxy"]:
        assert n in names
        assert get(n).name == n
    with pytest.raises(KeyError, match="unknown metric"):
        get("nope")


def test_score_texts_returns_results_per_metric_and_group():
    texts = ["the cat sat on the mat"] * 3 + ["a dog ran in the park today", "birds fly south in winter"]
    groups = ["a", "a", "a", "b", "b"]
    res = score_texts(texts, ["distinct_n", "exact_dup_rate", "vendi"], groups=groups, embedder="hash")
    assert set(res) == {"distinct_n", "exact_dup_rate", "vendi"}
    assert all(isinstance(r, MetricResult) for r in res.values())
    assert set(res["distinct_n"].per_group) == {"a", "b"}
    assert res["exact_dup_rate"].per_group["b"] == 0.0
    assert res["exact_dup_rate"].per_group["a"] > 0
    # the lexical group budget is the smaller group's token count (group b: 12 tokens)
    assert res["distinct_n"].details["group_token_budget"] == 12
    assert res["vendi"].details["group_doc_budget"] == 2
    json.dumps({k: v.to_dict() for k, v in res.items()})


def test_token_budget_sampling_is_exact_and_seeded():
    texts = [" ".join(f"w{i}_{j}" for j in range(7)) for i in range(10)]
    a = sample_token_budget(texts, 20, seed=3)
    assert sum(len(t.split()) for t in a) == 20
    assert a == sample_token_budget(texts, 20, seed=3)
    assert sum(len(t.split()) for t in sample_token_budget(texts, 1000)) == 70


# ------------------------------------------------------------------ lexical

def test_distinct_n_and_entropy_by_hand():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a b"], 2) == 0.5  # n-grams never span documents
    assert ngram_entropy(["a b a b"], 1) == pytest.approx(1.0)
    assert ngram_entropy(["a b c d"], 1) == pytest.approx(2.0)
    r = get("distinct_n")(["a b a b"])
    assert r.details["distinct_1"] == 0.5 and r.value == pytest.approx(np.mean([r.details[f"distinct_{n}"] for n in range(1, 5)]))


def _reference_cr(texts):
    """Shaib et al.'s definition: gzip a file holding ' '.join(texts), original size / compressed size."""
    d = tempfile.mkdtemp()
    try:
        src, dst = Path(d) / "orig.txt", Path(d) / "orig.txt.gz"
        src.write_text(" ".join(texts), encoding="utf-8")
        with open(src, "rb") as fi, gzip.open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo)
        return round(src.stat().st_size / dst.stat().st_size, 3)
    finally:
        shutil.rmtree(d)


def test_compression_ratio_agrees_with_reference_definition():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choice(words, 40)) for _ in range(200)]
    # the reference's gzip header also stores the file name: agreement to 0.5%
    assert compression_ratio(texts) == pytest.approx(_reference_cr(texts), rel=5e-3)
    rep = ["the same sentence again and again"] * 200
    assert compression_ratio(rep) > 10 * compression_ratio(texts) / 3
    assert get("compression_ratio").higher_is_diverse is False


def test_self_repetition_by_hand():
    docs = ["a b c d", "a b c d", "e f g h"]
    # df(abcd) = 2: docs 1 and 2 see it once elsewhere, doc 3 sees nothing
    assert self_repetition(docs) == pytest.approx((2 * math.log(2) + 0) / 3)
    assert self_repetition(["a b c"]) == 0.0


def test_self_bleu_by_hand():
    same = "the quick brown fox jumps over the lazy dog".split()
    assert self_bleu_scores([same, same]) == pytest.approx([1.0, 1.0])
    assert self_bleu_scores([["a", "b", "c", "d"], ["e", "f", "g", "h"]]) == [0.0, 0.0]
    # one unigram match out of 4, no higher matches: method-1 smoothing gives 0.1 / count
    s = self_bleu_scores([["a", "b", "c", "d"], ["a", "x", "y", "z"]])[0]
    assert s == pytest.approx(math.exp((math.log(1 / 4) + math.log(0.1 / 3) + math.log(0.1 / 2) + math.log(0.1 / 1)) / 4))
    r = get("self_bleu")(["x y z w"] * 5 + ["p q r s"] * 5, seed=1, sample=6)
    assert r.details["sample"] == 6 and r.spread is not None


def test_self_bleu_matches_nltk_when_available():
    nltk_bleu = importorskip_ci("nltk.translate.bleu_score")
    rng = np.random.default_rng(1)
    docs = [list(rng.choice(list("abcdefgh"), rng.integers(3, 12))) for _ in range(12)]
    sm = nltk_bleu.SmoothingFunction().method1
    ref = [nltk_bleu.sentence_bleu(docs[:i] + docs[i + 1:], d, smoothing_function=sm) for i, d in enumerate(docs)]
    assert self_bleu_scores(docs) == pytest.approx(ref, abs=1e-9)


def test_mean_length():
    r = get("mean_length")(["a b", "a b c d"])
    assert r.value == 3.0 and r.details["total_tokens"] == 6


# ------------------------------------------------------------------ duplicates

def test_exact_and_near_duplicates():
    base = " ".join(f"word{i}" for i in range(120))
    near = base.replace("word60", "changed")  # one word of 120: Jaccard of 5-grams ~ 0.92
    other = " ".join(f"other{i}" for i in range(120))
    texts = [base, "Hello   World", "hello world", near, other, near + " "]
    assert exact_duplicates(texts) == [None, None, 1, None, None, 3]
    assert find_duplicates(texts, threshold=0.8) == [None, None, 1, 0, None, 0]
    assert get("exact_dup_rate")(texts).value == pytest.approx(2 / 6)
    r = get("near_dup_rate")(texts)
    assert r.value == pytest.approx(1 - 3 / 6) and r.details["clusters"] == 3
    assert find_duplicates([base, other]) == [None, None]
    assert find_duplicates([]) == []


# ------------------------------------------------------------------ semantic

def _direct_vendi(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = np.linalg.eigvalsh(x @ x.T / len(x))
    w = w[w > 1e-15]
    return float(np.exp(-(w * np.log(w)).sum()))


@pytest.mark.parametrize("n,d", [(60, 8), (8, 40)])
def test_vendi_agrees_with_reference(n, d):
    x = np.random.default_rng(n).normal(size=(n, d))
    assert vendi_score(x) == pytest.approx(_direct_vendi(x), abs=1e-6)
    try:
        from vendi_score import vendi
    except ImportError:
        return
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert vendi_score(x) == pytest.approx(float(vendi.score_K(xu @ xu.T)), abs=1e-6)


def test_vendi_extremes():
    assert vendi_score(np.ones((7, 4))) == pytest.approx(1.0)
    assert vendi_score(np.eye(5)) == pytest.approx(5.0)


def test_mean_cosine_distance_excludes_diagonal():
    assert mean_cosine_distance(np.eye(4)) == pytest.approx(1.0)
    assert mean_cosine_distance(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)
    x = np.random.default_rng(0).normal(size=(9, 5))
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xu @ xu.T
    brute = (1 - s)[~np.eye(9, dtype=bool)].mean()
    assert mean_cosine_distance(x) == pytest.approx(brute)


def test_kmeans_entropy_two_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([5, 0], 0.1, (20, 2)), rng.normal([0, 5], 0.1, (20, 2))])
    labels = kmeans_labels(x, 2, seed=0)
    assert sorted(np.bincount(labels)) == [20, 20]
    assert cluster_entropy(labels, 2) == pytest.approx(1.0)
    assert cluster_entropy(np.zeros(10, dtype=int), 4) == 0.0


def test_dcscore_extremes_and_chunking():
    assert dcscore(np.ones((6, 3))) == pytest.approx(1.0)  # identical: P_ii = 1/n
    assert dcscore(np.eye(5), tau=0.01) == pytest.approx(5.0, abs=1e-3)  # orthogonal, tau -> 0
    x = np.random.default_rng(2).normal(size=(11, 4))
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xu @ xu.T
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    assert dcscore(x, chunk=3) == pytest.approx(np.trace(p), rel=1e-5)


def test_cluster_proxy_bounds():
    same = cluster_proxy_metric([""] * 20, embeddings=np.ones((20, 4)), n_runs=5, embedder="hash")
    assert same.value == pytest.approx(0.1)  # one cluster of K=10: C^2/K = 0.1
    ortho = cluster_proxy_metric([""] * 20, embeddings=np.eye(20), n_runs=5)
    assert ortho.value == pytest.approx(10.0)  # ten singletons
