"""The transcript a judge reads (generator.engine.dialogue.transcript): every shape of conversation
and agent trajectory renders deterministically, marks what it cuts, and fits the judge's budget."""
from __future__ import annotations

import copy
import functools
import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from generator.core.backend import Result
from generator.engine.dialogue import drive
from generator.engine.dialogue.conversation import ConversationSetup, conversation
from generator.engine.dialogue.transcript import (MIN_BUDGET, assistant_turns, failed_call_ids, render,
                                                  shorten)
from generator.engine.pipeline import judge
from generator.engine.pipeline.context import stage_seed


def _call(cid: str, name: str, args: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


AGENT = [
    {"role": "system", "content": "You solve tasks with tools."},
    {"role": "user", "content": "Add 2 and 3, then check the weather."},
    {"role": "assistant", "content": "", "tool_calls": [_call("call_1_1", "add", '{"a": 2, "b": 3}'),
                                                        _call("call_1_2", "boom", "{}")]},
    {"role": "tool", "tool_call_id": "call_1_1", "name": "add", "content": "5"},
    {"role": "tool", "tool_call_id": "call_1_2", "name": "boom", "content": "error: raised ValueError: broke"},
    {"role": "assistant", "content": "The sum is 5."},
]
LINEAGE = json.dumps([{"call_id": "call_1_1", "name": "add", "ok": True},
                      {"call_id": "call_1_2", "name": "boom", "ok": False, "error": "raised ValueError: broke"}])


def test_an_agent_trajectory_shows_calls_with_arguments_results_and_failures():
    r = render(AGENT, failed=failed_call_ids(LINEAGE))
    assert r.text == (
        "[system]\nYou solve tasks with tools.\n\n"
        "[user]\nAdd 2 and 3, then check the weather.\n\n"
        '[assistant 1]\n-> call call_1_1 add({"a": 2, "b": 3})\n-> call call_1_2 boom({})\n\n'
        "[tool add, call_1_1]\n5\n\n"
        "[tool boom, call_1_2, failed]\nerror: raised ValueError: broke\n\n"
        "[assistant 2]\nThe sum is 5.")
    assert (r.turns, r.shown) == (2, (1, 2))
    assert assistant_turns(AGENT) == ['-> call call_1_1 add({"a": 2, "b": 3})\n-> call call_1_2 boom({})',
                                      "The sum is 5."]


def test_empty_turns_odd_content_and_missing_names_render_readably():
    msgs = [{"role": "user", "content": ""}, {"role": "assistant", "content": None},
            {"role": "assistant", "content": [{"type": "text", "text": "part one"}, {"text": "two"}]},
            {"role": "tool", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c" * 200, "function": {
                "name": "t", "arguments": {"k": 1}}}]}]
    text = render(msgs).text
    assert text.startswith("[user]\n(empty)\n\n[assistant 1]\n(empty)\n\n[assistant 2]\npart one\ntwo\n\n[tool ?]\nx")
    assert '-> call ' + "c" * 45 + '... t({"k": 1})' in text  # a long call id is cut in the header


def test_a_huge_tool_result_is_shortened_with_the_cut_marked():
    huge = "".join(f"row {i}; " for i in range(100_000)).strip()
    msgs = AGENT[:3] + [{"role": "tool", "tool_call_id": "call_1_1", "name": "add", "content": huge}] + AGENT[4:]
    r = render(msgs, 4000)
    assert len(r.text) <= 4000 and r.shown == (1, 2)
    (cut,) = re.findall(r"\[\.\.\. (\d+) characters cut \.\.\.\]", r.text)
    block = r.text.split("[tool add, call_1_1]\n")[1].split("\n\n")[0]
    assert len(block) == 4000 // 5 and int(cut) == len(huge) - (len(block) - len(f"\n[... {cut} characters cut ...]\n"))
    assert block.startswith("row 0; row 1;") and block.endswith(huge[-20:])
    assert "The sum is 5." in r.text and "[assistant 1]" in r.text  # every other message whole


def test_shorten_is_exact():
    assert shorten("abc", 10) == "abc"
    for n in (11, 999, 1000, 10_000, 123_457):
        text = "x" * n
        for cap in (200, 333, 1000):
            if n > cap:
                out = shorten(text, cap)
                assert len(out) == cap and f"[... {n - out.count('x')} characters cut ...]" in out


def test_a_long_conversation_keeps_its_first_and_last_turns_and_marks_the_elided_middle():
    msgs = [{"role": "system", "content": "Be kind."}]
    for k in range(1, 31):
        msgs += [{"role": "user", "content": f"question {k} " + "q" * 300},
                 {"role": "assistant", "content": f"answer {k} " + "a" * 300}]
    r = render(msgs, 3000)
    assert len(r.text) <= 3000 and r.turns == 30
    (marker,) = re.findall(r"\[\.\.\. (\d+) messages elided: assistant turns (\d+)-(\d+) \.\.\.\]", r.text)
    elided, first, last = map(int, marker)
    assert r.shown == tuple(k for k in range(1, 31) if not first <= k <= last)
    assert r.text.startswith("[system]\nBe kind.\n\n[user]\nquestion 1 ") and r.text.endswith("answer 30 " + "a" * 300)
    kept = re.findall(r"^\[(?:system|user|assistant \d+)\]$", r.text, re.M)
    assert 1 in r.shown and 30 in r.shown and elided == len(msgs) - len(kept)  # every message accounted for
    assert render(copy.deepcopy(msgs), 3000) == r  # deterministic
    assert render(msgs, 100_000).shown == tuple(range(1, 31)) and "elided" not in render(msgs, 100_000).text


def test_a_conversation_ended_by_the_simulators_marker_renders_without_the_marker():
    answers = iter(["My card is late.", "Sorry to hear that; it ships in 3 days.", "Thanks! [END]"])
    s = ConversationSetup(spec_seed=7, rid="r1", stage="chat", attempt=1,
                          user_prompt=({"role": "user", "content": "You are a customer."},),
                          seeds=functools.partial(stage_seed, 7, "r1", "chat", 1), assistant_system="Be kind.",
                          turns_min=4, turns_max=4)
    traj = drive(conversation(s), lambda call: Result(id="x", text=next(answers), finish_reason="stop"))
    assert traj.status == "ok" and "ended the chat after 1 exchanges" in traj.reason
    r = render(traj.messages, 2000)
    assert r.text == ("[system]\nBe kind.\n\n[user]\nMy card is late.\n\n"
                      "[assistant 1]\nSorry to hear that; it ships in 3 days.")
    assert "[END]" not in r.text and r == render(json.loads(json.dumps(traj.messages)), 2000)


_message = st.one_of(
    st.builds(lambda role, text: {"role": role, "content": text}, st.sampled_from(["system", "user", "assistant"]),
              st.text(max_size=3000)),
    st.builds(lambda n, args, text: {"role": "assistant", "content": text,
                                     "tool_calls": [_call(f"call_{j}", f"tool{j}" * 20, args) for j in range(n)]},
              st.integers(1, 4), st.text(max_size=2000), st.sampled_from(["", "ok"])),
    st.builds(lambda text, cid: {"role": "tool", "tool_call_id": cid, "name": "t" * 90, "content": text},
              st.text(max_size=20_000), st.sampled_from(["call_0", "call_1"])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_message, max_size=40), st.integers(MIN_BUDGET, 8000))
def test_every_transcript_fits_its_budget(messages, budget):
    r = render(messages, budget, failed={"call_1"})
    assert len(r.text) <= budget
    assert r == render(copy.deepcopy(messages), budget, failed={"call_1"})
    turns = sum(m["role"] == "assistant" for m in messages)
    assert r.turns == turns and set(r.shown) <= set(range(1, turns + 1)) and list(r.shown) == sorted(r.shown)
    for k in r.shown:
        assert f"[assistant {k}]" in r.text
    if messages:
        assert r.text.startswith(render(messages[:1], failed={"call_1"}).text.split("\n")[0])
        if messages[-1]["role"] == "assistant":
            assert turns in r.shown  # the last turn is always kept
    whole = render(messages, failed={"call_1"})
    if len(whole.text) <= budget:
        assert r == whole


def test_a_budget_below_the_minimum_is_refused_only_when_it_matters():
    short = AGENT[:2]
    assert len(render(short).text) < 100 and render(short, 100) == render(short)
    with pytest.raises(ValueError, match="below"):
        render(AGENT * 10, 500)


# ---------------------------------------------------------------- the per-turn verdict


class C:
    def __init__(self, name):
        self.name, self.description = name, f"{name}: 5 good, 1 bad"


def test_per_turn_scores_line_up_with_assistant_turns_and_leave_elided_turns_empty():
    schema = judge.transcript_schema([C("helpful")], (1, 2, 5))
    assert list(schema["properties"]) == ["turns", "helpful"] and schema["required"][0] == "turns"
    assert schema["properties"]["turns"]["required"] == ["turn_1", "turn_2", "turn_5"]
    from generator.library.schema_bounds import unbounded

    assert unbounded(schema) == []  # bounded, so structured decoding closes it
    verdict = json.dumps({"turns": {"turn_1": {"reason": "r", "score": 4}, "turn_2": {"reason": "s", "score": 2},
                                    "turn_5": {"reason": "t", "score": 5}}, "helpful": {"reason": "ok", "score": 3}})
    view, err = judge.read_verdict(type("J", (), {"criteria": [C("helpful")]})(), verdict, {"turns": (5, (1, 2, 5))})
    assert err is None and view["helpful"] == 3.0 and view["mean"] == 3.0
    assert view["turn_scores"] == [4.0, 2.0, None, None, 5.0] and view["turn_min"] == 2.0
    assert view["turn_reasons"] == ["r", "s", None, None, "t"]
    missing = json.dumps({"turns": {"turn_1": {"reason": "r", "score": 4}}, "helpful": {"reason": "ok", "score": 3}})
    view, err = judge.read_verdict(type("J", (), {"criteria": [C("helpful")]})(), missing, {"turns": (2, (1, 2))})
    assert view == {} and err == "judge gave no 1-5 score for assistant turn 2"


def test_the_manual_shows_what_the_renderer_and_the_judge_really_produce():
    """docs/conversations.md: the worked agent trajectory rendered, and the support chat judge's prompt."""
    from pathlib import Path

    from generator.config.spec import load_spec

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "conversations.md").read_text()
    agent_msgs, chat = (json.loads(b) for b in re.findall(r"```json\n(\[.*?\])\n```", doc, re.S))
    assert f"```text\n{render(agent_msgs).text}\n```" in doc
    rate = next(s for s in load_spec(root / "specs" / "support_chat.yaml").stages if s.name == "rate")
    shown = render(chat, rate.transcript_chars)
    prompt = judge.transcript_messages(rate.criteria, "", shown.text, shown.shown)[1]["content"]
    assert f"```text\n{prompt}```" in doc
