"""Model calls outside a spec's run take the request path too: `topics expand`, `personas expand`
and a cluster-agent judge answer from the request cache, retry failed answers and are counted by
`synthgen usage`. The scripted fake backend stands in for the model (control flow only)."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from generator.cli.main import main
from generator.core.backend import Request, Sampling
from generator.runs import request_session
from generator.testing.fake import FakeBackend
from scoring.cluster_agent import ClusterAgent, ClusterAgentConfig
from test_scoring_cluster_agent import CRITERIA, TEXTS, FakeBackend as JudgeFake, all_valid, assign

SUBTOPICS = json.dumps({"subtopics": [{"name": "Comparing fractions", "keywords": ["half", "order", "size"]},
                                      {"name": "Fraction word problems", "keywords": ["recipe", "share", "part"]}]})


@pytest.fixture
def model(monkeypatch):
    """The fake every CLI command of this file gets from make_backend (it counts the calls)."""
    fake = FakeBackend(responder=lambda r: SUBTOPICS)
    monkeypatch.setattr("generator.engine.backends.make_backend", lambda cfg, **_: fake)
    return fake


def usage(run_dir) -> dict:
    res = CliRunner().invoke(main, ["usage", str(run_dir), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_topics_expand_is_counted_and_a_rerun_is_served_from_the_cache(model, tmp_path):
    tree = tmp_path / "t.yaml"
    tree.write_text(yaml.safe_dump({"name": "t", "description": "d", "nodes": [
        {"name": "Fractions", "children": [{"name": "Adding fractions", "keywords": ["a", "b", "c"]}]}]}))
    cmd = ["topics", "expand", str(tree), "Fractions", "--out", str(tmp_path / "t2.yaml"),
           "--run-dir", str(tmp_path / "calls")]
    first = CliRunner().invoke(main, cmd, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert len(model.calls) == 2 and "2 model calls, 0 answers from the cache" in first.stderr
    u = usage(tmp_path / "calls")
    assert u["total"]["requests"] == 2 and u["total"]["cache_hits"] == 0
    assert u["by"]["stage"][0]["stage"] == "topics_expand"
    written = (tmp_path / "t2.yaml").read_text()

    again = CliRunner().invoke(main, cmd, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert len(model.calls) == 2  # no new model call
    assert "0 model calls, 2 answers from the cache" in again.stderr
    assert (tmp_path / "t2.yaml").read_text() == written
    u = usage(tmp_path / "calls")
    assert u["total"]["requests"] == 2 and u["total"]["cache_hits"] == 2 and len(u["sessions"]) == 2
    manifest = json.loads((tmp_path / "calls" / "manifest.json").read_text())
    assert manifest["name"] == "topics expand" and manifest["details"]["node"] == "Fractions"


def test_personas_expand_is_counted_in_its_run_dir(monkeypatch, tmp_path):
    fake = FakeBackend()  # minimal valid JSON for the persona schema
    monkeypatch.setattr("generator.engine.backends.make_backend", lambda cfg, **_: fake)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["personas", "expand", "core", "-n", "2", "--out", "p.jsonl"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert usage(tmp_path / "runs" / "personas-expand")["total"]["requests"] == len(fake.calls) > 0


def test_a_failed_answer_is_retried_with_the_next_seed_and_replayed(tmp_path):
    fake = FakeBackend(script={"*": ["not json", '{"x": 1}']})
    req = Request(id="a", messages=({"role": "user", "content": "hi"},), json_schema={"type": "object"},
                  sampling=Sampling(seed=5, max_tokens=20))
    with request_session(tmp_path / "calls", fake, "test", "probe") as path:
        [res] = list(path.generate([req]))
    assert res.id == "a" and res.text == '{"x": 1}'
    assert [c.sampling.seed for c in fake.calls] == [5, 6] and path.model_calls == 2
    with request_session(tmp_path / "calls", fake, "test", "probe") as path:
        [again] = list(path.generate([req]))
    assert again.text == res.text and path.model_calls == 0 and path.cache_hits == 2 and len(fake.calls) == 2


def test_cluster_agent_calls_are_counted_and_replayed(tmp_path):
    def judge():
        return JudgeFake({"cluster": [assign([1, 1, 1, 1, 1, 2, 2, 2, 3, 4])], "verify": [all_valid]})

    fb = judge()
    with request_session(tmp_path / "judge", fb, "cluster agent", "cluster_agent") as path:
        first = ClusterAgent(path, ClusterAgentConfig(N=4, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    assert path.model_calls == len(fb.requests) > 0
    u = usage(tmp_path / "judge")
    assert u["total"]["requests"] == len(fb.requests)
    assert u["models"][0]["model"] == "fake-judge" and u["total"]["prompt_tokens"] == 100 * len(fb.requests)
    fb2 = judge()
    with request_session(tmp_path / "judge", fb2, "cluster agent", "cluster_agent") as path:
        second = ClusterAgent(path, ClusterAgentConfig(N=4, sanity_probes=0)).score(TEXTS, criteria=CRITERIA)
    assert fb2.requests == [] and second.score == first.score
    assert usage(tmp_path / "judge")["total"]["cache_hits"] == len(fb.requests)
