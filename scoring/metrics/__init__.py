"""Diversity metrics by name: `get(name)`, `available()`, `score_texts(...)`."""
from scoring.metrics.base import (DEFAULT_METRICS, EMBEDDING, JUDGE, LEXICAL, Metric, MetricResult, available, get,
                   register, register_metric, sample_docs, sample_token_budget, score_texts)
from scoring.metrics import lexical, duplicates, semantic  # noqa: F401  (registers the metrics)
from scoring.metrics.duplicates import find_duplicates

__all__ = ["DEFAULT_METRICS", "EMBEDDING", "JUDGE", "LEXICAL", "Metric", "MetricResult", "available",
           "get", "register", "register_metric", "sample_docs", "sample_token_budget", "score_texts",
           "find_duplicates"]
