"""Judges and checks over conversation and agent stages, on the one execution core with a scripted
backend: the judge reads the rendered transcript, per-turn scores line up with the assistant turns,
a failed judge or check regenerates the conversation with the usual accounting, `compare:` picks
the better of two conversations, a regex reads the last turn, every turn or the transcript, and a
user function gets the messages with their tool calls."""
from __future__ import annotations

import json
import re

import polars as pl
import pytest

from generator.config.spec import load_spec
from generator.core.backend import Request
from generator.engine.dialogue.transcript import failed_call_ids, render
from generator.engine.planner import resolve_spec, validate
from generator.testing.fake import FakeBackend
from test_dialogue_run import AGENT, _check_once, _one_line_error, _parts, _project, _run

CHAT = """  - name: chat
    kind: conversation
    user: {template: sim_user}
    assistant: {system: "You are a tutor."}
    turns: {min: 3, max: 3}
"""
RATE = """  - name: rate
    kind: judge
    target: chat
    per_turn: true
    transcript_chars: 4000
    criteria:
      - {name: helpful, description: "5 = helps; 1 = does not"}
"""


def _turn_blocks(prompt: str) -> dict[str, str]:
    """`turn_k` -> the body of `[assistant k]` in a judge prompt."""
    return {f"turn_{k}": body for k, body in re.findall(r"\[assistant (\d+)\]\n(.*?)(?=\n\n\[|\n$)", prompt, re.S)}


def _responder(bad_turn: dict[int, int] | None = None, judge_fails: set[int] = frozenset()):
    """Chat turns say which attempt and turn they are; in attempt a, assistant turn bad_turn[a]
    says 'bad'. The judge scores each turn shown 1 when it says 'bad', else 4."""
    bad_turn = bad_turn or {}

    def respond(r: Request) -> str:
        rid, stage, attempt, tag = _parts(r)
        if stage == "s0":
            return f"fact about {rid}"
        if stage == "rate":
            if attempt in judge_fails:
                return "not json"
            turns = r.json_schema["properties"]["turns"]["properties"] if "turns" in r.json_schema["properties"] else {}
            blocks = _turn_blocks(r.messages[-1]["content"])
            scores = {k: {"reason": "r", "score": 1 if "bad" in blocks[k] else 4} for k in turns}
            return json.dumps({"turns": scores, "helpful": {"reason": "fine", "score": 4}})
        k = int(tag[1:].split(".")[0])
        if tag.endswith(".user"):
            return f"question {k}"
        return f"bad answer {k}" if bad_turn.get(attempt) == k else f"answer {k} of attempt {attempt}"
    return respond


def _tokens(backend: FakeBackend, respond) -> int:
    """Completion tokens of every answer a row keeps: a request's last try (as for any stage, an
    answer that was retried is counted in the usage ledger, not in the rows)."""
    ids = {r.id for r in backend.calls}
    last = [r for r in backend.calls if f"{r.id.rsplit('#', 1)[0]}#{int(r.id.rsplit('#', 1)[1]) + 1}" not in ids]
    return sum(len(respond(r).split()) for r in last)


def test_a_transcript_judge_scores_each_turn_and_its_filter_regenerates_the_conversation(tmp_path):
    keep = '  - {name: keep, kind: filter, expr: "rate.turn_min >= 3", on_reject: {regenerate: chat, max_attempts: 3}}\n'
    proj = _project(tmp_path, CHAT + RATE + keep)
    respond = _responder(bad_turn={1: 2})
    backend = FakeBackend("smollm2-135m", responder=respond)
    report, rows = _run(proj, backend, limit=3)
    assert report.stuck == 0
    final = _check_once(rows)
    assert final.height == 3
    for rid, group in rows.group_by("id"):
        first, second = group.sort("attempts").iter_rows(named=True)
        assert (first["status"], first["decided_by"], first["final"]) == ("rejected", "keep", False)
        assert first["reason"] == "filter false: rate.turn_min >= 3"
        assert (second["status"], second["final"], second["chat.attempt"], second["s0.attempt"]) == ("ok", True, 2, 1)
        for row in (first, second):
            msgs = json.loads(row["chat.conversation"])
            said = [m["content"] for m in msgs if m["role"] == "assistant"]
            # one score per assistant turn, in order: 1 exactly where that turn said 'bad'
            assert row["rate.turn_scores"] == [1.0 if "bad" in s else 4.0 for s in said]
            assert row["rate.turn_min"] == min(row["rate.turn_scores"]) and row["rate.helpful"] == 4.0
            assert len(json.loads(row["rate.turn_reasons"])) == len(said) == 3
        assert "bad" in json.loads(first["chat.conversation"])[4]["content"]
    # the judge read exactly the rendered transcript of the kept conversation
    row = final.row(0, named=True)
    asked = [r for r in backend.calls if r.id.startswith(f"{row['id']}/rate/2/")][0]
    shown = render(json.loads(row["chat.conversation"]), 4000)
    assert f"# Conversation\n{shown.text}\n" in asked.messages[-1]["content"]
    assert asked.json_schema["properties"]["turns"]["required"] == ["turn_1", "turn_2", "turn_3"]
    # the conversation ran again with fresh requests; every answered token is in exactly one row
    stages = [_parts(r)[1:3] for r in backend.calls]
    assert stages.count(("chat", 1)) == stages.count(("chat", 2)) == 3 * 6 and stages.count(("s0", 1)) == 3
    assert rows["completion_tokens"].sum() == _tokens(backend, respond)


def test_a_judge_that_fails_regenerates_the_conversation_through_its_on_reject(tmp_path):
    rate = RATE + "    on_reject: {regenerate: chat, max_attempts: 2}\n"
    proj = _project(tmp_path, CHAT + rate)
    respond = _responder(judge_fails={1})
    backend = FakeBackend("smollm2-135m", responder=respond)
    report, rows = _run(proj, backend, limit=2)
    assert report.stuck == 0 and _check_once(rows).height == 2
    for _, group in rows.group_by("id"):
        first, second = group.sort("attempts").iter_rows(named=True)
        assert (first["status"], first["decided_by"], first["rate.status"]) == ("rejected", "rate", "invalid_json")
        assert second["status"] == "ok" and second["chat.attempt"] == 2 and second["rate.turn_min"] == 4.0
    judged = [r.id.split("/", 1)[1] for r in backend.calls if "/rate/" in r.id]
    assert sorted(set(judged)) == ["rate/1/0#1", "rate/1/0#2", "rate/2/0#1"]  # retried once, then regenerated
    assert rows["completion_tokens"].sum() == _tokens(backend, respond)


def test_compare_picks_the_better_of_two_conversations_in_a_seeded_order(tmp_path):
    pair = (CHAT.replace("name: chat", "name: terse") +
            CHAT.replace("name: chat", "name: kind").replace("You are a tutor.", "You are patient."))
    pick = "  - {name: pick, kind: judge, compare: [terse, kind]}\n"
    proj = _project(tmp_path, pair + pick)

    def respond(r: Request) -> str:
        rid, stage, _, tag = _parts(r)
        if stage == "pick":
            a = r.messages[-1]["content"].split("# Conversation B")[0]
            return json.dumps({"reason": "kinder", "better": "A" if "You are patient." in a else "B"})
        return _responder()(r)
    backend = FakeBackend("smollm2-135m", responder=respond)
    report, rows = _run(proj, backend)
    final = _check_once(rows)
    assert report.stuck == 0 and final.height == 10 and set(final["status"]) == {"ok"}
    assert set(final["pick.winner"]) == {"kind"}
    assert final["pick.chosen"].to_list() == final["kind.conversation"].to_list()
    assert final["pick.rejected"].to_list() == final["terse.conversation"].to_list()
    firsts = {"kind" if "You are patient." in r.messages[-1]["content"].split("# Conversation B")[0] else "terse"
              for r in backend.calls if "/pick/" in r.id}
    assert firsts == {"kind", "terse"}, "both orders are shown"
    from generator.core.errors import SynthgenError
    from generator.mix.preference import write_preference

    with pytest.raises(SynthgenError, match="judge 'pick' compares conversations \\(terse, kind\\)"):
        write_preference([proj / "run"], tmp_path / "pref")


@pytest.mark.parametrize("scope,pattern,passed,reason", [
    ("last", "^answer 3 of", True, None),
    ("last", "^answer 2 of", False, "the last assistant turn: pattern '^answer 2 of' not found"),
    ("every", "^answer \\d of", False, "assistant turn 2 of 3: pattern '^answer \\\\d of' not found"),
    ("every", "answer \\d", True, None),
    ("transcript", "\\[user\\]\\nquestion 3\\n\\n\\[assistant 3\\]\\nanswer 3", True, None),
    ("transcript", "\\[assistant 4\\]", False, "pattern '\\\\[assistant 4\\\\]' not found"),
    (None, "^answer 2 of", False, "the last assistant turn: pattern '^answer 2 of' not found"),  # default: last
])
def test_a_regex_reads_the_last_turn_every_turn_or_the_transcript(tmp_path, scope, pattern, passed, reason):
    where = f"    scope: {scope}\n" if scope else ""
    check = f"  - name: chk\n    kind: verify\n    check: regex\n    target: chat\n    pattern: '{pattern}'\n{where}"
    proj = _project(tmp_path, CHAT + check)
    report, rows = _run(proj, FakeBackend("smollm2-135m", responder=_responder(bad_turn={1: 2})), limit=2)
    final = _check_once(rows)
    assert report.stuck == 0 and final.height == 2
    for row in final.iter_rows(named=True):
        assert row["chk.passed"] is passed and row["chk.reason"] == (None if passed else reason)
        assert row["status"] == ("ok" if passed else "rejected")


CHECKS_PY = """def called_add(row):
    msgs = row["solve"]["messages"]
    calls = [c["function"] for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    results = {m["name"]: m["content"] for m in msgs if m["role"] == "tool"}
    want = [{"name": "add", "arguments": '{"a": 2, "b": 3}'}, {"name": "boom", "arguments": "{}"}]
    ok = calls == want and results["add"] == "5" and results["boom"].startswith("error: ")
    return ok, f"calls {calls}, results {results}"
"""


def test_a_function_and_a_judge_get_an_agents_messages_with_its_tool_calls(tmp_path):
    stages = (AGENT.format(expect="5", extra="    allow_failed_calls: true\n") +
              "  - {name: used, kind: verify, check: function, target: solve, function: 'checks_mod:called_add'}\n"
              "  - name: rate\n    kind: judge\n    target: solve\n    per_turn: true\n"
              "    criteria: [{name: tools, description: '5 = right tools'}]\n")
    proj = _project(tmp_path, stages, tools=True)
    (proj / "checks_mod.py").write_text(CHECKS_PY)
    steps = [{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}, {"name": "boom", "arguments": {}}]},
             {"final_answer": "The sum is 5"}]

    def respond(r: Request) -> str:
        rid, stage, _, tag = _parts(r)
        if stage == "s0":
            return "context"
        if stage == "rate":
            keys = r.json_schema["properties"]["turns"]["required"]
            return json.dumps({"turns": {k: {"reason": "r", "score": 3} for k in keys},
                               "tools": {"reason": "ok", "score": 5}})
        return json.dumps(steps[int(tag[1:].split(".")[0]) - 1])
    backend = FakeBackend("smollm2-135m", responder=respond)
    report, rows = _run(proj, backend, limit=1)
    (row,) = _check_once(rows).iter_rows(named=True)
    assert report.stuck == 0 and row["status"] == "ok" and row["solve.failed_calls"] == 1
    assert row["used.passed"] is True, row["reason"]
    assert row["rate.turn_scores"] == [3.0, 3.0] and row["rate.tools"] == 5.0
    prompt = [r for r in backend.calls if "/rate/" in r.id][0].messages[-1]["content"]
    shown = render(json.loads(row["solve.conversation"]), 12000, failed_call_ids(row["solve.tool_calls"]))
    assert shown.text in prompt and "[tool boom, call_1_2, failed]\nerror: " in prompt
    assert '-> call call_1_1 add({"a": 2, "b": 3})' in prompt


# ---------------------------------------------------------------- validate


def test_validate_accepts_judges_and_checks_over_transcripts(tmp_path):
    stages = (CHAT + RATE + CHAT.replace("name: chat", "name: other") +
              "  - {name: pick, kind: judge, compare: [chat, other]}\n"
              "  - {name: chk, kind: verify, check: regex, target: chat, pattern: x, scope: every}\n"
              "  - {name: shape, kind: verify, check: json_schema, target: chat, json_schema: {type: object}}\n"
              '  - {name: keep, kind: filter, expr: "rate.turn_min >= 2 and rate.mean >= 2 and pick.winner == \'chat\'"}\n')
    proj = _project(tmp_path, stages)
    resolved = resolve_spec(load_spec(proj / "spec.yaml"))
    validate(resolved)


@pytest.mark.parametrize("stages,key,message", [
    ("  - {name: rate, kind: judge, target: s0, per_turn: true, criteria: [{name: a, description: b}]}\n",
     "name: rate", "`per_turn: true` scores assistant turns, and 's0' is a generate stage"),
    ("  - {name: pick, kind: judge, compare: [s0, chat]}\n", "name: pick",
     "names a generate stage and a conversation/agent stage"),
    ("  - {name: chk, kind: verify, check: regex, target: s0, pattern: x, scope: every}\n", "name: chk",
     "`scope` picks turns of a conversation or agent stage"),
    ("  - {name: keep, kind: filter, expr: 'chat.steps > 1'}\n  - {name: rate, kind: judge, target: keep, "
     "criteria: [{name: a, description: b}]}\n", "name: rate", "('keep' is a filter stage)"),
    ("  - {name: chk, kind: verify, check: json_schema, target: chat, json_schema: {}, scope: transcript}\n",
     "name: chk", "`scope: transcript` is for regex checks"),
    ("  - {name: rate, kind: judge, target: chat, criteria: [{name: turn_min, description: b}]}\n", "name: rate",
     "criterion name 'turn_min' is a judge column"),
    ("  - {name: rate, kind: judge, target: chat, criteria: [{name: a, description: b}]}\n"
     "  - {name: keep, kind: filter, expr: 'rate.turn_min >= 3'}\n", "name: keep", "reads 'rate.turn_min'"),
])
def test_validate_refuses_nonsense_in_one_line(tmp_path, stages, key, message):
    proj = _project(tmp_path, CHAT + stages)
    _one_line_error(proj, key, message)
