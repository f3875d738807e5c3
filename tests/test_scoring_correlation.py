"""On real corpora with known intents, scores must move towards "more diverse" as a fixed-size sample
(100 texts) holds more distinct intents (1, 2, 5, 10, 20, 50). Spearman correlations, signed by
each metric's direction, are asserted where they hold; the full table is in scoring/README.md."""
from __future__ import annotations

from pathlib import Path

import pytest

from scoring.validation import intent_scores, signed_correlations, spearman
from helpers import skip_or_fail

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LEXICAL = ["distinct_n", "ngram_entropy", "compression_ratio", "self_repetition", "self_bleu"]
SEMANTIC = ["vendi", "mean_cosine_distance", "dcscore", "cluster_proxy"]
DATASETS = ["clinc150", "banking77"]

if not DATA.is_dir():
    skip_or_fail("../shared/data is not beside the repository", module_level=True)


@pytest.fixture(scope="module", params=DATASETS)
def dataset(request):
    return request.param


def test_lexical_metrics_track_intent_count(dataset):
    rho = signed_correlations(intent_scores(dataset, LEXICAL + ["mean_length"], draws=3))
    for m in LEXICAL:
        assert rho[m] >= 0.8, (m, rho[m])


def test_semantic_metrics_track_intent_count_with_hash_embedder(dataset):
    """The model-free hashing embedder already ranks the samples right for these metrics."""
    rho = signed_correlations(intent_scores(dataset, SEMANTIC + ["kmeans_entropy"], embedder="hash", draws=3))
    for m in SEMANTIC:
        assert rho[m] >= 0.8, (m, rho[m])
    # known failure, reported in scoring/README.md: k-means with k=10 on 100 texts splits any sample
    # into ~10 even clusters, so its normalized entropy barely depends on the number of intents.


@pytest.mark.slow
@pytest.mark.parametrize("embedder", ["static", "minilm"])
def test_semantic_metrics_track_intent_count(dataset, embedder):
    rho = signed_correlations(intent_scores(dataset, SEMANTIC, embedder=embedder, draws=3))
    for m in SEMANTIC:
        assert rho[m] >= 0.8, (embedder, m, rho[m])


@pytest.mark.slow
def test_static_agrees_with_minilm(dataset):
    s = intent_scores(dataset, SEMANTIC, embedder="static", draws=3)
    m = intent_scores(dataset, SEMANTIC, embedder="minilm", draws=3)
    for name in SEMANTIC:
        assert spearman(s[name].ravel(), m[name].ravel()) >= 0.7, name  # measured 0.77-0.98


def test_spearman_helper():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 1, 2, 2]) == pytest.approx(0.8944, abs=1e-3)
