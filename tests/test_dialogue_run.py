"""Conversation and agent stages on the one execution core: a scripted backend drives the turns,
real Python tools run in worker processes, rows land in real Parquet shards with a real request
cache. The shipped specs run end to end on the embedded model (slow)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from generator.config.spec import load_spec
from generator.core.backend import Request
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.testing.fake import FakeBackend

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "proj"
ROOT = Path(__file__).resolve().parent.parent

USER_TPL = """---
name: sim_user
description: A user simulator for tests.
purpose: general
variables: [subtopic, s0]
system: You are a curious student.
---
Ask about {{ subtopic }}; you read: {{ s0.text }}
"""
TASK_TPL = """---
name: task
description: An agent task for tests.
purpose: general
variables: [subtopic]
system: You solve tasks with tools.
---
Add two numbers about {{ subtopic }}.
"""
TOOLS_PY = """import time


def add(a, b):
    return a + b


def boom():
    raise ValueError("the tool broke")


def sleepy():
    time.sleep(30)
    return "late"
"""
TOOLS_YAML = """tools:
  - name: add
    description: Add two numbers.
    parameters: {type: object, required: [a, b], properties: {a: {type: number}, b: {type: number}}}
    python: tools_mod:add
  - name: boom
    description: Always fails.
    python: tools_mod:boom
  - name: sleepy
    description: Never answers in time.
    python: tools_mod:sleepy
"""


def _project(tmp_path: Path, stages: str, tools: bool = False) -> Path:
    proj = tmp_path / "proj"
    shutil.copytree(FIXTURES, proj)
    (proj / "templates" / "sim_user.j2").write_text(USER_TPL)
    (proj / "templates" / "task.j2").write_text(TASK_TPL)
    (proj / "tools_mod.py").write_text(TOOLS_PY)
    spec = (proj / "spec.yaml").read_text()
    spec = spec.replace("templates:\n  - template: qa\n    weight: 2\n  - template: card\n", "")
    spec = spec.replace("run:\n  shard_size: 4", "run:\n  shard_size: 4\n  retries: 1\n  stall_timeout: 30")
    (proj / "spec.yaml").write_text(spec + (TOOLS_YAML if tools else "") + "stages:\n"
                                    "  - name: s0\n    kind: generate\n    template: qa\n" + stages)
    return proj


def _parts(r: Request) -> tuple[str, str, int, str]:
    rid, stage, attempt, tag = r.id.rsplit("#", 1)[0].rsplit("/", 3)
    return rid, stage, int(attempt), tag


def _run(proj: Path, backend, limit: int | None = None, out: str = "run"):
    spec = load_spec(proj / "spec.yaml")
    ex = LocalExecutor(backend_factory=lambda cfg, **_: backend)
    run_spec(spec, out=proj / out, executor=ex, score=False, limit=limit)
    rows = pl.read_parquet(proj / out / "generations" / "*.parquet")
    return ex.report(), rows


def _check_once(rows: pl.DataFrame) -> pl.DataFrame:
    final = rows.filter(pl.col("final"))
    assert final["id"].n_unique() == final.height, "a record ended twice"
    assert set(rows["id"].to_list()) == set(final["id"].to_list()), "a record never ended"
    return final


def _well_formed(messages: list[dict]) -> None:
    """Roles alternate: user, assistant, user, ...; an assistant message with tool calls is followed
    by one tool message per call (answering its id), then the assistant again."""
    body = [m for m in messages if m["role"] != "system"]
    assert body and body[0]["role"] == "user"
    open_ids: set[str] = set()
    prev = None
    for m in body:
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_ids, f"tool message answers no call: {m}"
            open_ids.discard(m["tool_call_id"])
            continue
        assert not open_ids, f"calls left unanswered before {m['role']}: {open_ids}"
        if m["role"] == "assistant":
            assert prev in ("user", "tool"), f"assistant after {prev}"
            open_ids = {c["id"] for c in m.get("tool_calls") or []}
            prev = "tool" if open_ids else "assistant"
        else:
            assert m["role"] == "user" and prev in (None, "assistant"), f"user after {prev}"
            prev = "user"
    assert not open_ids


# ---------------------------------------------------------------- conversation

CHAT = """  - name: chat
    kind: conversation
    user: {template: sim_user, sampling: {max_tokens: 20}}
    assistant: {system: "You are a tutor."}
    turns: {min: 3, max: 3}
    stop: {marker: "[END]", expr: "turn >= 2 and assistant == 'stop here'"}
"""


def _mode(rid: str) -> int:
    """How a record's chat goes: 0 marker after one exchange, 1 marker before any, 2 the stop
    expression after two exchanges, 3 all three exchanges."""
    return int(hashlib.sha1(rid.encode()).hexdigest(), 16) % 4


def _chat_responder(modes: bool = True):
    def respond(r: Request) -> str:
        rid, stage, _, tag = _parts(r)
        if stage == "s0":
            return f"fact about {rid}"
        k = int(tag[1:].split(".")[0])
        mode = _mode(rid) if modes else 3
        if tag.endswith(".user"):
            return "[END]" if (mode, k) in ((0, 2), (1, 1)) else f"question {k}"
        return "stop here" if (mode, k) == (2, 2) else f"answer {k}"
    return respond


def test_conversation_turn_limits_marker_and_stop_expression(tmp_path):
    proj = _project(tmp_path, CHAT)
    backend = FakeBackend("smollm2-135m", responder=_chat_responder())
    report, rows = _run(proj, backend)
    assert report.stuck == 0
    final = _check_once(rows)
    assert final.height == 10
    assert len({_mode(rid) for rid in final["id"]}) >= 3
    for row in final.iter_rows(named=True):
        mode = _mode(row["id"])
        if mode == 1:
            assert row["status"] == "empty" and row["decided_by"] == "chat"
            continue
        msgs = json.loads(row["conversation"])
        assert msgs[0] == {"role": "system", "content": "You are a tutor."}
        _well_formed(msgs)
        exchanges = {0: 1, 2: 2, 3: 3}[mode]
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * exchanges
        assert row["status"] == "ok" and row["chat.steps"] == exchanges
        assert row["text"] == msgs[-1]["content"] == row["chat.text"]
        tags = [t["tag"] for t in json.loads(row["chat.turns"])]
        want = [f"t{k}.{r}" for k in range(1, exchanges + 1) for r in ("user", "assistant")]
        assert tags == (want + ["t2.user"] if mode == 0 else want)
    # the simulator sees its own turns as assistant messages, the answers as user messages
    sim = [r for r in backend.calls if r.id.endswith("/t3.user#1")][0]
    assert [m["role"] for m in sim.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sim.sampling.max_tokens == 20
    # one request per turn, ids {rid}/{stage}/{attempt}/{tag}#{tries}, none twice
    ids = [r.id for r in backend.calls]
    assert len(ids) == len(set(ids))
    assert len(ids) == 10 + sum(len(json.loads(t)) for t in final["chat.turns"] if t)


# ---------------------------------------------------------------- agent

AGENT = """  - name: solve
    kind: agent
    template: task
    tools: [add, boom, sleepy]
    max_steps: 3
    tool_timeout: 1
    expect: {{value: "{expect}", extract: number}}
{extra}"""


def _agent_responder(script: dict[int, list[dict]]):
    """script: attempt -> the answers of steps 1, 2, ... (as JSON objects)."""
    def respond(r: Request) -> str:
        rid, stage, attempt, tag = _parts(r)
        if stage == "s0":
            return "context"
        steps = script.get(attempt) or script[max(script)]
        k = int(tag[1:].split(".")[0])
        return json.dumps(steps[min(k, len(steps)) - 1])
    return respond


def _agent_rows(tmp_path, script, expect="5", extra="", limit=2):
    proj = _project(tmp_path, AGENT.format(expect=expect, extra=extra), tools=True)
    backend = FakeBackend("smollm2-135m", responder=_agent_responder(script))
    report, rows = _run(proj, backend, limit=limit)
    assert report.stuck == 0
    return _check_once(rows), rows, backend


def test_agent_calls_a_python_tool_and_answers(tmp_path):
    final, _, backend = _agent_rows(tmp_path, {1: [{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
                                                   {"final_answer": "The sum is 5"}]})
    assert final.height == 2
    for row in final.iter_rows(named=True):
        assert row["status"] == "ok" and row["solve.passed"] is True and row["solve.answer"] == "5"
        msgs = json.loads(row["conversation"])
        _well_formed(msgs)
        assert msgs[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
        assert msgs[3] == {"role": "tool", "tool_call_id": "call_1_1", "name": "add", "content": "5"}
        assert msgs[-1] == {"role": "assistant", "content": "The sum is 5"}
        assert [t["function"]["name"] for t in json.loads(row["tools"])] == ["add", "boom", "sleepy"]
        calls = json.loads(row["solve.tool_calls"])
        assert calls[0]["ok"] and calls[0]["step"] == 1
    # step 2 saw the tool's result as a user message, under the schema of tool calls / final answer
    step2 = [r for r in backend.calls if r.id.endswith("/s2.assistant#1")][0]
    assert step2.messages[-1] == {"role": "user", "content": "Result of add: 5"}
    assert step2.json_schema is not None and "final_answer" in json.dumps(step2.json_schema)


@pytest.mark.parametrize("call,error", [
    ({"name": "boom", "arguments": {}}, "raised ValueError: the tool broke"),
    ({"name": "sleepy", "arguments": {}}, "ran past its 1s timeout"),
    ({"name": "add", "arguments": {"a": "two", "b": 3}}, "arguments break the schema of add"),
])
def test_agent_tool_failures_are_results_and_reject_the_record(tmp_path, call, error):
    final, _, _ = _agent_rows(tmp_path, {1: [{"tool_calls": [call]}, {"final_answer": "5"}]}, limit=1)
    (row,) = final.iter_rows(named=True)
    assert row["status"] == "tool_error" and row["decided_by"] == "solve"
    msgs = json.loads(row["solve.conversation"])
    _well_formed(msgs)
    assert msgs[3]["role"] == "tool" and msgs[3]["content"].startswith("error: ") and error in msgs[3]["content"]
    assert row["solve.failed_calls"] == 1 and error in row["reason"]


def test_agent_failed_call_allowed(tmp_path):
    final, _, _ = _agent_rows(tmp_path, {1: [{"tool_calls": [{"name": "boom", "arguments": {}}]},
                                             {"final_answer": "5"}]},
                              extra="    allow_failed_calls: true\n", limit=1)
    (row,) = final.iter_rows(named=True)
    assert row["status"] == "ok" and row["solve.failed_calls"] == 1 and row["text"] == "5"


def test_agent_verify_rejection_regenerates_the_agent_stage(tmp_path):
    script = {1: [{"final_answer": "4"}], 2: [{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
                                              {"final_answer": "5"}]}
    final, rows, backend = _agent_rows(tmp_path, script, extra="    on_reject: {regenerate: solve, max_attempts: 3}\n")
    assert final.height == 2
    for rid, group in rows.group_by("id"):
        group = group.sort("attempts")
        assert group["status"].to_list() == ["rejected", "ok"]
        assert group["solve.attempt"].to_list() == [1, 2]
        assert group["s0.attempt"].to_list() == [1, 1], "the entry stage is not regenerated"
        assert "final answer 4 is not the expected 5" in group["reason"][0]
    # the entry stage ran once per record; the agent's steps per attempt: 1, then 2
    stages = [_parts(r)[1:3] for r in backend.calls]
    assert stages.count(("s0", 1)) == 2 and stages.count(("solve", 1)) == 2 and stages.count(("solve", 2)) == 4


def test_agent_out_of_steps_without_rule_ends_max_steps(tmp_path):
    loop = {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}
    final, _, backend = _agent_rows(tmp_path, {1: [loop]}, limit=1)
    (row,) = final.iter_rows(named=True)
    assert row["status"] == "max_steps" and row["solve.steps"] == 3 and row["text"] == ""
    assert sum(1 for r in backend.calls if "/solve/" in r.id) == 3


# ---------------------------------------------------------------- kill and resume


class Killed(BaseException):
    pass


class KillAfter(FakeBackend):
    def __init__(self, n: int, **kw):
        super().__init__(**kw)
        self.n = n

    def generate(self, requests, on_result=None):
        for r in requests:
            if len(self.calls) >= self.n:
                raise Killed()
            yield self._one(r, on_result)


def test_killed_conversation_resumes_from_the_cache(tmp_path):
    proj = _project(tmp_path, CHAT.replace("min: 3", "min: 2").replace("max: 3", "max: 4"))
    respond = _chat_responder(modes=False)
    full = FakeBackend("smollm2-135m", responder=respond)
    _, whole = _run(proj, full, out="whole")
    total = len(full.calls)
    assert total > 20

    first = KillAfter(total // 2, model="smollm2-135m", responder=respond)
    with pytest.raises(Killed):
        _run(proj, first)
    answered = len(first.calls)
    second = FakeBackend("smollm2-135m", responder=respond)
    report, rows = _run(proj, second)
    assert report.stuck == 0
    assert len(second.calls) == total - answered, "the cache must replay exactly the turns answered before"
    assert {r.id for r in second.calls}.isdisjoint({r.id for r in first.calls})
    got = _check_once(rows).sort("id").select("id", "conversation", "chat.turns")
    want = whole.filter(pl.col("final")).sort("id").select("id", "conversation", "chat.turns")
    assert got.equals(want)


# ---------------------------------------------------------------- the shipped specs (slow)


@pytest.mark.slow
# the session engine has a 2048-token context: the conversations are kept short enough for it
@pytest.mark.parametrize("name,stage,sets", [
    ("tool_math", "solve", {"stages.1.max_steps": "3", "stages.1.sampling.max_tokens": "160"}),
    ("support_chat", "chat", {"stages.1.turns.max": "3"}),
])
def test_shipped_dialogue_spec_end_to_end(tmp_path, shared_backend_factory, name, stage, sets):
    spec = load_spec(ROOT / "specs" / f"{name}.yaml", sets)
    ex = LocalExecutor(backend_factory=shared_backend_factory)
    run_spec(spec, out=tmp_path / "run", executor=ex, score=False, limit=3)
    assert ex.report().stuck == 0
    rows = pl.read_parquet(tmp_path / "run" / "generations" / "*.parquet")
    final = _check_once(rows)
    assert final.height == 3
    for row in rows.iter_rows(named=True):
        if row.get(f"{stage}.conversation"):
            _well_formed(json.loads(row[f"{stage}.conversation"]))
            turns = json.loads(row[f"{stage}.turns"])
            assert turns and all(t["tag"] for t in turns)
        if row.get("rate.status") == "ok":  # the transcript judge: one score per assistant turn
            said = [m for m in json.loads(row[f"{stage}.conversation"]) if m["role"] == "assistant"]
            assert len(row["rate.turn_scores"]) == len(said) and 1 <= row["rate.mean"] <= 5
    if name == "support_chat":
        assert "rate.turn_scores" in rows.columns and (final["status"] == "ok").any(), \
            final.select("status", "decided_by", "reason")


# ---------------------------------------------------------------- validate


@pytest.mark.parametrize("old,new,key,message", [
    ('expect: {{value: "{expect}", extract: number}}', 'expect: {{value: "{{{{ nosuch.text }}}}"}}', "expect:",
     "cannot render this text"),
    ("    tool_timeout: 1\n", "    tool_timeout: 1\n    on_reject: {{regenerate: s0}}\n", "regenerate:",
     "does not precede 'solve'"),
    ("    template: task\n", "    template: task\n    after: [nosuch]\n", "after:", "'nosuch', which is no stage"),
])
def test_bad_agent_references_fail_validate_in_one_line(tmp_path, old, new, key, message):
    assert old in AGENT
    proj = _project(tmp_path, AGENT.replace(old, new).format(expect="5", extra=""), tools=True)
    _one_line_error(proj, key, message)


def test_bad_stop_expression_and_tool_module_fail_validate_in_one_line(tmp_path):
    proj = _project(tmp_path / "a", CHAT.replace("turn >= 2", "turns >= 2"))
    _one_line_error(proj, "stop:", "`stop.expr` reads turns")
    proj = _project(tmp_path / "b", AGENT.format(expect="5", extra=""), tools=True)
    (proj / "tools_mod.py").unlink()
    _one_line_error(proj, "python: tools_mod:add", "tools_mod")


def _one_line_error(proj: Path, key: str, message: str) -> None:
    import subprocess
    import sys

    spec = proj / "spec.yaml"
    line = next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if key in t)
    proc = subprocess.run([sys.executable, "-m", "generator.cli", "validate", str(spec)], capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {spec}:{line}:") and message in proc.stderr, proc.stderr


def test_view_record_shows_the_final_attempts_turns_and_tool_calls(tmp_path):
    from generator.view import data

    script = {1: [{"final_answer": "4"}], 2: [{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
                                              {"final_answer": "5"}]}
    final, _, _ = _agent_rows(tmp_path, script, extra="    on_reject: {regenerate: solve, max_attempts: 3}\n",
                              limit=1)
    rid = final["id"][0]
    rec = data.record(data.load_run(tmp_path / "proj" / "run"), rid)
    assert rec["lineage"]["attempts"] == 2 and rec["text"] == "5"
    roles = [m["role"] for m in rec["conversation"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert rec["conversation"][2]["tool_calls"][0]["function"]["name"] == "add"
    assert [t["function"]["name"] for t in rec["tools"]] == ["add", "boom", "sleepy"]
    assert "conversation" not in rec["extra"] and "solve.tool_calls" in rec["extra"]
