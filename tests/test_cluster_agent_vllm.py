"""The cluster-agent end to end on the embedded model: the mechanics, not the judgement.

The criteria are given (their generation is covered with scripted answers in
test_scoring_cluster_agent.py); what the 135M model answers decides only which runs are scored."""
from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_cluster_agent_mechanics_on_embedded_model(vllm_backend, shared_data):
    from scoring.cluster_agent import WEAK_WARNING, ClusterAgent, ClusterAgentConfig, Criteria

    rows = json.loads((shared_data / "clinc150" / "data_full.json").read_text())["train"]
    texts = [t for t, _ in rows[:300:7]][:30]
    criteria = Criteria.from_names({"Intent": "what the user wants done"}, {"Length": "similar length"})
    agent = ClusterAgent(vllm_backend, ClusterAgentConfig(K=5, N=3, J=3, M=1, seed=1))
    res = agent.score(texts, criteria=criteria)
    assert res.n_runs == 3 and res.n_scored + res.n_failed == 3 and res.K == 5
    assert len(res.cluster_counts) == res.n_scored and len(res.runs) == 3
    assert {r["status"] for r in res.runs} <= {"ok", "failed_clustering", "failed_verification"}
    for c in res.cluster_counts:  # D_i = C_i^2 / K for every scored run
        assert 1 <= c <= 5
    if res.n_scored:
        expected = sum(c * c / 5 for c in res.cluster_counts) / len(res.cluster_counts)
        assert math.isclose(res.score, expected, rel_tol=1e-9)
    assert res.cost["total"]["calls"] >= 3  # every run's prompt reached the engine
    assert res.cost["total"]["prompt_tokens"] > 0
    # the embedded model is a known weak judge by name: its scores are flagged, whatever it answered
    assert res.signal is False and any(WEAK_WARNING in w for w in res.warnings)
