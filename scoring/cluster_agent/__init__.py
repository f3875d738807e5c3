"""LLM cluster-agent diversity score (arXiv 2410.15226 section 2.1) and its registry entry.

`ClusterAgent(backend, ClusterAgentConfig(...)).score(texts, groups=None, criteria=None)`; the
judge-free proxy with the same protocol is the `cluster_proxy` metric (scoring.metrics.semantic).
"""
from __future__ import annotations

from typing import Any

from scoring.metrics.base import JUDGE, Metric, MetricResult, register_metric

from scoring.cluster_agent.agent import WEAK_WARNING, ClusterAgent, ClusterAgentError, ClusterAgentResult
from scoring.cluster_agent.answers import (InvalidAnswer, aggregate, canonicalize, cluster_schema, parse_clustering,
                                          parse_verification, run_score, split_invalid)
from scoring.cluster_agent.settings import ClusterAgentConfig, Criteria


class ClusterAgentMetric(Metric):
    """`cluster_agent` by name: needs `backend=` (any generator Backend); optional `criteria=`
    (a Criteria or a path to a saved criteria JSON), `within_group=`, and ClusterAgentConfig fields."""

    name = "cluster_agent"
    kind = JUDGE
    higher_is_diverse = True
    description = "LLM cluster-agent score D = mean C_i^2/K (needs a capable judge model)"

    def __call__(self, texts, groups=None, *, seed=0, token_budget=None, doc_budget=None, embeddings=None,
                 embedder="static", backend: Any = None, criteria: Any = None, within_group: bool | None = None,
                 **config: Any) -> MetricResult:
        if backend is None:
            raise ValueError("the cluster_agent metric needs a judge: pass backend=<Backend> "
                             "(options={'cluster_agent': {'backend': ...}})")
        if isinstance(criteria, str) or hasattr(criteria, "read_text"):
            criteria = Criteria.load(criteria)
        agent = ClusterAgent(backend, ClusterAgentConfig(seed=seed, **config))
        wg = (groups is not None) if within_group is None else within_group
        res = agent.score(list(texts), groups=groups, criteria=criteria, within_group=wg, keep_runs=False)
        return res.to_metric_result()

    def compute(self, texts, *, seed=0, embeddings=None, **opts):
        return self(texts, seed=seed, **opts)


register_metric(ClusterAgentMetric())

__all__ = ["WEAK_WARNING", "ClusterAgent", "ClusterAgentConfig", "ClusterAgentError", "ClusterAgentResult",
           "ClusterAgentMetric", "Criteria", "InvalidAnswer", "aggregate", "canonicalize", "cluster_schema",
           "parse_clustering", "parse_verification", "run_score", "split_invalid"]
