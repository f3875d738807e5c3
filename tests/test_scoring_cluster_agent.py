"""The cluster-agent's protocol with a scripted fake backend: criteria, clustering, verification,
retries, index repair, failure accounting, score arithmetic, weak-judge warnings, the proxy."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from generator.core.backend import Request, Result
from scoring.cluster_agent import (WEAK_WARNING, ClusterAgent, ClusterAgentConfig, Criteria, aggregate,
                                   canonicalize, cluster_schema, parse_clustering, parse_verification,
                                   run_score, split_invalid)
from scoring.cluster_agent.agent import render
from scoring.cluster_agent.answers import InvalidAnswer
from scoring.metrics import get
from helpers import importorskip_ci


class FakeBackend:
    """Answers each request by phase (from the prompt text) with a scripted function of the request.

    `script[phase]` is a list of callables or strings used in order (the last one repeats)."""

    def __init__(self, script, model="fake-judge"):
        self.script = {k: list(v) for k, v in script.items()}
        self.model = model
        self.requests: list[Request] = []
        self.count: dict[str, int] = {}

    @staticmethod
    def phase(req: Request) -> str:
        user = req.messages[-1]["content"]
        if "propose:" in user:
            return "generate"
        if "Merge the" in user:
            return "summary"
        if "Rewrite each of them" in user:
            return "sentences"
        if "Proposed clusters:" in user:
            return "verify"
        return "cluster"

    def generate(self, requests, on_result=None):
        for req in requests:
            self.requests.append(req)
            ph = self.phase(req)
            i = self.count.get(ph, 0)
            self.count[ph] = i + 1
            seq = self.script[ph]
            item = seq[min(i, len(seq) - 1)]
            text = item(req) if callable(item) else item
            if isinstance(text, dict):
                text = json.dumps(text)
            yield Result(id=req.id, text=text, finish_reason="stop", prompt_tokens=100, completion_tokens=20)

    def describe(self):
        return {"model": self.model}

    def close(self):
        pass


def n_samples(req: Request) -> int:
    return len(re.findall(r"^### Sample \d+", req.messages[-1]["content"], re.M))


def gen_answer(req):
    return {"metadata": [{"name": f"m{i}", "definition": "d"} for i in range(3)],
            "metrics": [{"name": f"s{i}", "definition": "d", "rubric": "1..5"} for i in range(3)]}


def summary_answer(req):
    k = int(re.search(r"return exactly (\d+)", req.messages[-1]["content"]).group(1))
    return {"items": [{"name": f"item{i}", "definition": "def"} for i in range(k)]}


def sentences_answer(req):
    n = req.json_schema["properties"]["criteria"]["minItems"]
    return {"criteria": [{"name": f"c{i}", "criterion": "same if ..."} for i in range(n)]}


def assign(labels):
    def f(req):
        return {"analysis": "", "assignment": labels,
                "clusters": [{"cluster": c, "uniqueness_reasoning": "r", "metadata": "", "metric_scores": []}
                             for c in dict.fromkeys(labels)]}
    return f


def all_valid(req):
    n = req.json_schema["properties"]["verdicts"]["minItems"]
    return {"verdicts": [{"cluster": i, "reasoning": "ok", "valid": 1} for i in range(n)]}


def all_invalid(req):
    n = req.json_schema["properties"]["verdicts"]["minItems"]
    return {"verdicts": [{"cluster": i, "reasoning": "no", "valid": 0} for i in range(n)]}


CRITERIA = Criteria.from_names({"Domain": "same subject area"}, {"Density": "similar information density"})
TEXTS = [f"text number {i}" for i in range(40)]


# ------------------------------------------------------------------ pure functions

def test_score_arithmetic():
    assert run_score(10, 10) == 10.0  # ten singletons
    assert run_score(1, 10) == 0.1  # one cluster of ten
    assert run_score(5, 10) == 2.5  # C / S with S = K / C = 2
    mean, se = aggregate([5, 5, 10, 1], 10)
    d = np.array([2.5, 2.5, 10, 0.1])
    assert mean == pytest.approx(d.mean())
    assert se == pytest.approx(d.std(ddof=1) / 2)
    assert aggregate([], 10) == (None, None)


def test_canonicalize_and_split():
    assert canonicalize([5, 2, 5, 7]) == [1, 2, 1, 3]
    assert split_invalid([1, 1, 2, 2, 3], {1: False, 2: True}) == [1, 2, 3, 3, 4]


def test_schema_pins_a_partition():
    s = cluster_schema(10, 2)
    a = s["properties"]["assignment"]
    assert a["minItems"] == a["maxItems"] == 10
    assert a["items"] == {"type": "integer", "minimum": 1, "maximum": 10}
    jsonschema = importorskip_ci("jsonschema")
    jsonschema.validate(assign([1] * 10)(None) | {"clusters": [{"cluster": 1, "uniqueness_reasoning": "",
                                                               "metadata": "", "metric_scores": [3, 3]}]}, s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"analysis": "", "assignment": [1] * 9, "clusters": []}, s)


def test_parse_clustering_assignment_and_index_repair():
    labels, reasons, repairs = parse_clustering(assign([3, 3, 4, 1])(None), 4)
    assert labels == [1, 1, 2, 3] and reasons[1] == "r" and repairs == []
    with pytest.raises(InvalidAnswer):
        parse_clustering({"assignment": [1, 2, 3]}, 4)  # wrong length
    with pytest.raises(InvalidAnswer):
        parse_clustering({"assignment": [1, "x", 1, 1]}, 4)
    labels, _, repairs = parse_clustering({"assignment": ["1", 1, 9, 2]}, 4)
    assert labels == [1, 1, 2, 3] and "coerced_label" in repairs and "label_out_of_range" in repairs
    # the paper's shape: sample indices per cluster; 2 appears twice, 7 is out of range, 6 is missing
    paper = {"clusters": [{"sample indices": [1, 2], "uniqueness reasoning": "a"},
                          {"sample indices": [2, 3, 4, 5, 7], "uniqueness reasoning": "b"}]}
    labels, _, repairs = parse_clustering(paper, 6)
    assert labels == [1, 1, 2, 2, 2, 3]
    assert sorted(repairs) == ["index_in_two_clusters", "index_missing", "index_out_of_range"]
    with pytest.raises(InvalidAnswer):  # too many repairs
        parse_clustering({"clusters": [{"sample_indices": [9, 9, 9]}]}, 4)


def test_parse_verification():
    assert parse_verification({"verdicts": [{"valid": 1}, {"valid": 0}]}, [1, 3]) == {1: True, 3: False}
    with pytest.raises(InvalidAnswer):
        parse_verification({"verdicts": [{"valid": 1}]}, [1, 3])
    with pytest.raises(InvalidAnswer):
        parse_verification({"verdicts": [{"valid": "maybe"}, {"valid": 1}]}, [1, 3])


def test_prompts_render_from_jinja_files():
    p = render("cluster.j2", criteria=CRITERIA.ordered(), samples=["x", "y"], n_metrics=1)
    assert "1. Domain" in p and "### Sample 2" in p and "exactly 2 integers" in p


# ------------------------------------------------------------------ the agent end to end on a fake

def test_score_with_verification_splitting_invalid_clusters():
    fb = FakeBackend({"cluster": [assign([1, 1, 1, 1, 1, 2, 2, 2, 3, 4])], "verify": [all_valid]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=4, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    assert r.score == pytest.approx(4 ** 2 / 10) and r.stderr == 0.0
    assert r.n_scored == 4 and r.n_failed == 0 and r.signal
    # verification asks only about the 2 multi-member clusters
    v = [q for q in fb.requests if fb.phase(q) == "verify"]
    assert v and all(q.json_schema["properties"]["verdicts"]["minItems"] == 2 for q in v)
    assert r.cost["total"]["calls"] == 8 and r.cost["total"]["prompt_tokens"] == 800
    fb = FakeBackend({"cluster": [assign([1, 1, 1, 1, 1, 2, 2, 2, 3, 4])], "verify": [all_invalid]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=3, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    assert r.cluster_counts == [10, 10, 10] and r.score == 10.0 and r.invalid_clusters == 6


def test_retry_then_failure_is_never_scored():
    good = assign([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    # run 0: malformed then good; runs 1-2: good; later answers keep failing -> counted as failed
    fb = FakeBackend({"cluster": [good, good, good, "not json", "{\"assignment\": [1]}", good, "oops"],
                      "verify": [all_valid]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=5, retries=1, sanity_probes=0, verify=False)).score(
        TEXTS, criteria=CRITERIA)
    # 5 first attempts (3 good, 2 bad) + 2 retries (1 good, 1 bad): 4 scored, 1 failed
    assert r.n_scored == 4 and r.n_failed == 1
    assert r.failures["cluster_bad_answers"] == 3 and r.failures["cluster_failed"] == 1
    assert r.score == 10.0
    assert any("not scored" in w for w in r.warnings)


def test_failed_verification_fails_the_run():
    fb = FakeBackend({"cluster": [assign([1, 1, 2, 3, 4, 5, 6, 7, 8, 9])], "verify": ["{}"]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=2, retries=1, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    assert r.n_scored == 0 and r.n_failed == 2 and r.score is None
    assert r.failures["verify_failed"] == 2


def test_index_repairs_are_counted():
    paper = {"clusters": [{"sample_indices": [1, 2, 3], "uniqueness_reasoning": "a"},
                          {"sample_indices": [3, 4, 5, 6, 7, 8, 9], "uniqueness_reasoning": "b"}]}
    fb = FakeBackend({"cluster": [paper], "verify": [all_valid]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=2, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    # sample 3 twice, sample 10 missing -> 3 clusters
    assert r.cluster_counts == [3, 3]
    assert r.repairs["index_in_two_clusters"] == 2 and r.repairs["index_missing"] == 2


def test_criteria_generation_and_freezing(tmp_path):
    fb = FakeBackend({"generate": ["garbage", gen_answer], "summary": [summary_answer],
                      "sentences": [sentences_answer], "cluster": [assign([1] * 10)], "verify": [all_valid]})
    agent = ClusterAgent(fb, ClusterAgentConfig(M=3, J=5, k_metadata=2, k_metrics=3, N=2, sanity_probes=0))
    crit = agent.generate_criteria(TEXTS)
    assert [c["kind"] for c in crit.criteria] == ["metadata"] * 2 + ["metric"] * 3
    assert all(n_samples(q) == 5 for q in fb.requests if fb.phase(q) == "generate")
    assert agent.failures["criteria_bad_answers"] == 1  # the garbage answer was retried
    crit.save(tmp_path / "c.json")
    again = Criteria.load(tmp_path / "c.json")
    assert again.criteria == crit.criteria
    # interleaved at the top of the clustering prompt
    assert [c["kind"] for c in again.ordered()] == ["metadata", "metric", "metadata", "metric", "metric"]
    r = agent.score(TEXTS, criteria=again)
    assert r.score == pytest.approx(0.1) and r.criteria["criteria"] == crit.criteria


def test_within_group_mode_draws_from_one_group():
    groups = ["a"] * 20 + ["b"] * 15 + ["c"] * 5
    texts = [f"{g}-{i}" for i, g in enumerate(groups)]

    def by_group(req):
        user = req.messages[-1]["content"]
        samples = re.findall(r"^### Sample \d+\n(.+)$", user, re.M)
        assert len({s.split("-")[0] for s in samples}) == 1
        return assign([1] * 10 if samples[0].startswith("a") else list(range(1, 11)))(req)

    fb = FakeBackend({"cluster": [by_group], "verify": [all_valid]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=3, sanity_probes=0)).score(texts, groups=groups, criteria=CRITERIA,
                                                                          within_group=True)
    assert r.per_group == {"a": pytest.approx(0.1), "b": 10.0}
    assert any("fewer than K" in w for w in r.warnings)


def test_weak_judge_and_sanity_check_warn():
    fb = FakeBackend({"cluster": [assign([1] * 10)], "verify": [all_valid]}, model="smollm2-135m")
    r = ClusterAgent(fb, ClusterAgentConfig(N=2, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    assert not r.signal and any(WEAK_WARNING in w for w in r.warnings)
    # a judge that splits identical samples into singletons fails the sanity check
    fb = FakeBackend({"cluster": [assign(list(range(1, 11)))], "verify": [all_valid]})
    r = ClusterAgent(fb, ClusterAgentConfig(N=2, sanity_probes=1)).score(TEXTS, criteria=CRITERIA)
    assert not r.signal and r.sanity_passed is False and any("sanity check failed" in w for w in r.warnings)
    fb = FakeBackend({"cluster": [assign([1] * 10)], "verify": [all_valid]})
    assert ClusterAgent(fb, ClusterAgentConfig(N=2, sanity_probes=1)).score(TEXTS, criteria=CRITERIA).signal


def test_cluster_agent_by_name_needs_a_backend():
    m = get("cluster_agent")
    with pytest.raises(ValueError, match="judge"):
        m(TEXTS)
    fb = FakeBackend({"cluster": [assign([1, 1, 2, 2, 3, 3, 4, 4, 5, 5])], "verify": [all_valid]})
    r = m(TEXTS, backend=fb, criteria=CRITERIA, N=2, sanity_probes=0)
    assert r.value == pytest.approx(2.5) and r.details["n_scored"] == 2
