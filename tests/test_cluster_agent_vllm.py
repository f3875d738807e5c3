"""The cluster-agent end to end on the embedded model: the mechanics, not the judgement.

The 135M model cannot cluster (it answers one cluster per sample); the result must say so."""
from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_cluster_agent_mechanics_on_embedded_model(vllm_backend, shared_data):
    from scoring.cluster_agent import ClusterAgent, ClusterAgentConfig

    rows = json.loads((shared_data / "clinc150" / "data_full.json").read_text())["train"]
    texts = [t for t, _ in rows[:300:7]][:30]
    agent = ClusterAgent(vllm_backend, ClusterAgentConfig(K=5, N=3, J=3, M=1, seed=1))
    criteria = agent.generate_criteria(texts)
    assert criteria.metadata or criteria.metrics
    res = agent.score(texts, criteria=criteria)
    assert res.n_runs == 3 and res.n_scored + res.n_failed == 3 and res.K == 5
    for c in res.cluster_counts:  # D_i = C_i^2 / K for every scored run
        assert 1 <= c <= 5
    if res.n_scored:
        expected = sum(c * c / 5 for c in res.cluster_counts) / len(res.cluster_counts)
        assert math.isclose(res.score, expected, rel_tol=1e-9)
    assert res.cost["total"]["calls"] > 0 if "total" in res.cost else sum(v.get("calls", 0) for v in res.cost.values()) > 0
    assert res.signal is False and any("weak" in w.lower() or "signal" in w.lower() for w in res.warnings)
