"""Liveness of the one execution core over random pipelines (hypothesis): branches, joins, judges
(of answers and of transcripts, per turn), checks (regexes over turns and transcripts), filters, `n > 1`, conversation and agent stages (Python and simulated tools, native and
constrained tool calling), regenerate targets at every depth, on a backend that answers in a random
order and sometimes fails. Every record ends exactly once, no run hangs, the rejections add up."""
from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from generator.config.spec import load_spec
from generator.core.backend import Request, RequestFeed, Result
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.library.schema_examples import minimal_instance

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "proj"

def _template(name: str, description: str, body: str) -> str:
    return (f"---\nname: {name}\ndescription: {description}\npurpose: general\nvariables: [subtopic]\n---\n"
            f"{body}\n")


STAGE_TEMPLATE = _template("step", "A later stage for scheduler tests.", "Continue about {{ subtopic }}.")
USER_TEMPLATE = _template("sim_user", "A user simulator for scheduler tests.", "Ask about {{ subtopic }}.")
TASK_TEMPLATE = _template("task", "An agent task for scheduler tests.", "Add two numbers about {{ subtopic }}.")
TOOLS_PY = "def add(a, b):\n    return a + b\n"
TOOLS = [{"name": "add", "description": "Add two numbers.", "python": "liveness_tools:add",
          "parameters": {"type": "object", "required": ["a", "b"],
                         "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}},
         {"name": "guess", "description": "Guess a number.", "simulate": {"instruction": "Say a number."},
          "parameters": {"type": "object", "properties": {"hint": {"type": "string"}}}}]
DIALOGUE = ("conversation", "agent")


class ShuffledBackend:
    """Answers whatever is queued in a seeded random order; some answers are empty or fail, and
    free-text answers hold a digit half of the time (so regex checks pass and fail)."""

    def __init__(self, model: str, seed: int):
        self.model = model
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.calls = 0

    def _answer(self, r: Request) -> Result:
        with self.lock:
            self.calls += 1
            roll = self.rng.random()
        if roll < 0.08:
            return Result(id=r.id, text="", finish_reason="error", error="injected failure")
        if roll < 0.14:
            return Result(id=r.id, text="", finish_reason="stop")
        if r.tools is not None or (r.json_schema is not None and "final_answer" in json.dumps(r.json_schema)):
            return self._agent_step(r, roll)
        if r.json_schema is not None:
            data = minimal_instance(r.json_schema, r.id)
            if "scores" in str(r.json_schema) or isinstance(data, dict):
                data = _vary(data, roll)
            return Result(id=r.id, text=json.dumps(data), finish_reason="stop", prompt_tokens=3, completion_tokens=5)
        text = f"answer {int(roll * 1000)}" if roll < 0.6 else "no digits here"
        if 0.55 < roll < 0.62:
            text += " [END]"  # a conversation's simulator ends the chat
        return Result(id=r.id, text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=2)

    @staticmethod
    def _agent_step(r: Request, roll: float) -> Result:
        """An agent step: a final answer, or calls (some with arguments that break the schema, some
        to the simulated tool), as Hermes text for native tool calling or JSON under the schema."""
        if roll < 0.45:
            calls = []
            answer = f"answer {int(roll * 100)}"
        else:
            calls = [{"name": "add", "arguments": {"a": 1, "b": 2 if roll < 0.8 else "x"}}]
            if roll > 0.7:
                calls.append({"name": "guess", "arguments": {"hint": "small"}})
        if r.tools is not None:
            text = "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in calls) if calls else answer
        else:
            text = json.dumps({"tool_calls": calls} if calls else {"final_answer": answer})
        return Result(id=r.id, text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=4)

    def generate(self, requests, on_result=None):
        for r in requests:
            yield self._answer(r)

    def stream(self, feed: RequestFeed, on_result=None):
        held: list[Request] = []
        while True:
            held.extend(feed.take(timeout=0.0 if held else None))
            if not held:
                if feed.exhausted():
                    return
                continue
            with self.lock:
                i = self.rng.randrange(len(held))
            yield self._answer(held.pop(i))

    def describe(self):
        return {"backend": "shuffled", "name": self.model}

    def close(self):
        pass


def _vary(data, roll):
    """Rubric scores from 1 to 5, so filters on a judge's mean pass and fail."""
    if isinstance(data, dict):
        return {k: _vary(v, roll) for k, v in data.items()}
    if isinstance(data, int) and not isinstance(data, bool):
        return 1 + int(roll * 5) % 5
    return data


@st.composite
def pipelines(draw):
    """A random stage list (YAML text) over the fixture project's entry template."""
    n_later = draw(st.integers(1, 6))
    stages = [{"name": "s0", "kind": "generate", "template": "qa"}]
    generates = ["s0"]
    talks: list[str] = []  # conversation and agent stages
    for i in range(1, n_later + 1):
        name = f"s{i}"
        earlier = [s["name"] for s in stages]
        kind = draw(st.sampled_from(["generate", "generate", "judge", "verify", "filter", *DIALOGUE]))
        stage: dict = {"name": name, "kind": kind}
        if kind in DIALOGUE:
            if kind == "conversation":
                stage.update({"user": {"template": "sim_user"}, "assistant": {"system": "You help."},
                              "turns": {"min": 1, "max": draw(st.integers(1, 3))}, "stop": {"marker": "[END]"}})
            else:
                stage.update({"template": "task", "tools": draw(st.sampled_from([["add"], ["add", "guess"]])),
                              "max_steps": draw(st.integers(1, 3)), "tool_timeout": 10,
                              "tool_calling": draw(st.sampled_from(["native", "constrained"]))})
            stage["after"] = draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True))
        elif kind == "generate":
            stage["template"] = "step"
            stage["n"] = draw(st.integers(1, 3))
            after = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))
            stage["after"] = after or [draw(st.sampled_from(earlier))]
        elif kind == "judge":  # a generate stage's answer or a conversation's/agent's transcript
            stage["target"] = draw(st.sampled_from(generates + talks))
            stage["criteria"] = [{"name": "quality", "description": "5 good, 1 bad"}]
            if stage["target"] in talks and draw(st.booleans()):
                stage["per_turn"] = True
        elif kind == "verify":
            stage["check"] = "regex"
            stage["target"] = draw(st.sampled_from(generates + talks))
            stage["pattern"] = "[0-9]"
            if stage["target"] in talks:
                stage["scope"] = draw(st.sampled_from(["last", "every", "transcript"]))
        else:
            judges = [s for s in stages if s["kind"] == "judge"]
            verifies = [s for s in stages if s["kind"] == "verify"]
            dialogues = [s for s in stages if s["kind"] in DIALOGUE]
            options = ["attempt >= 1"] + [f"{j['name']}.mean >= 3" for j in judges] + \
                      [f"{j['name']}.turn_min >= 2" for j in judges if j.get("per_turn")] + \
                      [f"{v['name']}.passed" for v in verifies] + [f"{d['name']}.steps >= 2" for d in dialogues]
            stage["expr"] = draw(st.sampled_from(options))
        if kind not in ("generate", *DIALOGUE) or draw(st.booleans()):
            # regenerate: itself (a generate, conversation or agent stage) or any such stage it depends
            # on (resolved below)
            if draw(st.booleans()):
                stage["on_reject"] = {"regenerate": None, "max_attempts": draw(st.integers(1, 3))}
        stages.append(stage)
        if kind == "generate":
            generates.append(name)
        if kind in DIALOGUE:
            talks.append(name)
    return stages


def _ancestors(stages: list[dict]) -> dict[str, set[str]]:
    deps = {}
    for s in stages:
        d = set(s.get("after", []))
        for k in ("target",):
            if s.get(k):
                d.add(s[k])
        if s["kind"] == "filter":
            d |= {p.split(".")[0] for p in s["expr"].split() if "." in p}
        deps[s["name"]] = d
    anc: dict[str, set[str]] = {}
    for s in stages:
        anc[s["name"]] = set(deps[s["name"]]).union(*(anc[d] for d in deps[s["name"]]))
    return anc


def _yaml(stages: list[dict], pick) -> str:
    import yaml

    anc = _ancestors(stages)
    kinds = {s["name"]: s["kind"] for s in stages}
    for s in stages:
        rule = s.get("on_reject")
        if rule is None:
            continue
        options = sorted(a for a in anc[s["name"]] if kinds[a] in ("generate", *DIALOGUE))
        if s["kind"] in ("generate", *DIALOGUE):
            options.append(s["name"])
        if not options:
            del s["on_reject"]
        else:
            rule["regenerate"] = pick(options)
    spec = (FIXTURES / "spec.yaml").read_text().replace("generations_per_topic: 2", "generations_per_topic: 3")
    spec = spec.replace("templates:\n  - template: qa\n    weight: 2\n  - template: card\n", "")
    spec = spec.replace("run:\n  shard_size: 4", "run:\n  shard_size: 4\n  retries: 1\n  stall_timeout: 20")
    tools = {"tools": TOOLS} if any(s["kind"] == "agent" for s in stages) else {}
    return spec + yaml.safe_dump({**tools, "stages": stages}, sort_keys=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(stages=pipelines(), order_seed=st.integers(0, 2**16), pick_seed=st.integers(0, 2**16))
def test_every_record_ends_exactly_once_on_random_pipelines(tmp_path_factory, stages, order_seed, pick_seed):
    proj = tmp_path_factory.mktemp("proj")
    shutil.copytree(FIXTURES, proj, dirs_exist_ok=True)
    (proj / "templates" / "step.j2").write_text(STAGE_TEMPLATE)
    (proj / "templates" / "sim_user.j2").write_text(USER_TEMPLATE)
    (proj / "templates" / "task.j2").write_text(TASK_TEMPLATE)
    (proj / "liveness_tools.py").write_text(TOOLS_PY)
    rng = random.Random(pick_seed)
    (proj / "spec.yaml").write_text(_yaml(stages, lambda opts: rng.choice(opts)))
    spec = load_spec(proj / "spec.yaml")
    ex = LocalExecutor(backend_factory=lambda cfg, **_: ShuffledBackend(cfg.name, order_seed))
    res = run_spec(spec, out=proj / "run", executor=ex, score=False)
    report = ex.report()
    assert report.stuck == 0, "the liveness guard had to end a record: the scheduler lost track of one"

    rows = pl.read_parquet(proj / "run" / "generations" / "*.parquet")
    plan = pl.read_parquet(proj / "run" / "plan.parquet")
    final = rows.filter(pl.col("final"))
    assert sorted(final["id"].to_list()) == sorted(plan["id"].to_list()), "a record ended twice or never"
    assert res.generated == plan.height
    rules = {s["name"]: s["on_reject"]["max_attempts"] for s in stages if s.get("on_reject")}
    for rid, group in rows.group_by("id"):
        group = group.sort("attempts")
        attempts = group["attempts"].to_list()
        assert attempts == list(range(1, len(attempts) + 1)), f"{rid}: attempts {attempts}"
        assert group["final"].to_list() == [False] * (len(attempts) - 1) + [True]
        assert set(group["status"].to_list()[:-1]) <= {"rejected"}
        assert len(attempts) <= max(rules.values(), default=1)
    statuses = set(final["status"].to_list())
    assert statuses <= {"ok", "truncated", "rejected", "error", "empty", "invalid_json", "max_steps", "tool_error"}


def test_a_rejection_keeps_an_independent_branch_in_flight(tmp_path):
    """The shape a new user writes: problem -> solution, a judge on problem, a filter on solution
    that regenerates solution. When the solution lands (and is rejected) before the judge answers,
    the judge's answer must still count: the record ends, and the judge is asked once."""
    proj = tmp_path / "proj"
    shutil.copytree(FIXTURES, proj)
    (proj / "templates" / "step.j2").write_text(STAGE_TEMPLATE)
    spec_text = (FIXTURES / "spec.yaml").read_text().replace("generations_per_topic: 2", "generations_per_topic: 1")
    spec_text = spec_text.replace("templates:\n  - template: qa\n    weight: 2\n  - template: card\n", "")
    spec_text += """stages:
  - {name: problem, kind: generate, template: qa}
  - {name: solution, kind: generate, template: step, after: [problem]}
  - name: rating
    kind: judge
    target: problem
    criteria: [{name: clarity, description: "5 clear, 1 unclear"}]
  - name: keep
    kind: filter
    expr: "solution.text != 'bad'"
    on_reject: {regenerate: solution, max_attempts: 3}
"""
    (proj / "spec.yaml").write_text(spec_text)
    spec = load_spec(proj / "spec.yaml")

    class JudgeLast(ShuffledBackend):
        """Holds every judge request until nothing else is queued; the first solution is 'bad'."""

        def __init__(self, model):
            super().__init__(model, 0)
            self.judged = 0
            self.solved: set[str] = set()

        def _answer(self, r):
            if "/rating/" in r.id:
                self.judged += 1
                return Result(id=r.id, text='{"clarity": {"reason": "clear", "score": 4}}',
                              finish_reason="stop")
            if "/solution/" in r.id:
                rid = r.id.split("/")[0]
                first = rid not in self.solved
                self.solved.add(rid)
                return Result(id=r.id, text="bad" if first else "good", finish_reason="stop")
            return Result(id=r.id, text="a problem", finish_reason="stop")

        def stream(self, feed, on_result=None):
            held: list[Request] = []
            while True:
                held.extend(feed.take(timeout=0.0 if held else None))
                if not held:
                    if feed.exhausted():
                        return
                    continue
                others = [r for r in held if "/rating/" not in r.id]
                pick = others[0] if others else held[0]
                held.remove(pick)
                yield self._answer(pick)

    backend = JudgeLast("smollm2-135m")
    ex = LocalExecutor(backend_factory=lambda cfg, **_: backend)
    res = run_spec(spec, out=proj / "run", executor=ex, score=False)
    rows = pl.read_parquet(proj / "run" / "generations" / "*.parquet")
    final = rows.filter(pl.col("final"))
    assert final.height == res.planned
    assert set(final["status"].to_list()) == {"ok"}
    assert backend.judged == res.planned, "the judge was asked again or its answer was dropped"
    assert (final["rating.clarity"] == 4).all()
    assert ex.report().stuck == 0
