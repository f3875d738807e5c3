"""Diversity scoring for synthgen: cheap metrics, embeddings, the LLM cluster-agent, dedup.

    from scoring import score_texts, load_texts, score, compare, write_report, dedup_run
    score_texts(texts, metrics=["distinct_n", "vendi"], groups=None, seed=0, token_budget=None)
"""
from scoring.metrics import (DEFAULT_METRICS, Metric, MetricResult, available, find_duplicates, get, register,
                             score_texts)
from scoring import cluster_agent  # noqa: F401  (registers `cluster_agent`)
from scoring.cluster_agent import ClusterAgent, ClusterAgentConfig, ClusterAgentResult, Criteria
from scoring.embed import embed as embed_texts
from scoring.api import compare, dedup_run, load_texts, score, write_report

__all__ = ["DEFAULT_METRICS", "Metric", "MetricResult", "available", "find_duplicates", "get", "register",
           "score_texts", "ClusterAgent", "ClusterAgentConfig", "ClusterAgentResult", "Criteria", "embed_texts",
           "compare", "dedup_run", "load_texts", "score", "write_report"]
