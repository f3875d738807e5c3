"""Conversation and agent drivers, driven with scripted model results (no engine)."""
from __future__ import annotations

import functools
import json

import pytest

from generator.config.tools import ToolDef
from generator.core.backend import Result
from generator.engine.dialogue import ModelCall, ToolCall, ToolResult, drive
from generator.engine.dialogue.agent import AgentSetup, agent
from generator.engine.dialogue.conversation import ConversationSetup, conversation, drawn_turns
from generator.engine.dialogue.presentation import NativePresentation, SchemaPresentation, step_schema
from generator.engine.dialogue.verify import verify_trajectory
from generator.engine.pipeline.context import stage_seed
from generator.engine.pipeline.expressions import parse
from generator.engine.pipeline.verify import extract_answer

NUMBER = functools.partial(extract_answer, how="number")

PROMPT = ({"role": "system", "content": "You are a bank customer whose card has not arrived."},
          {"role": "user", "content": "Write your first message to the support assistant."})


def setup(**kw) -> ConversationSetup:
    base = dict(spec_seed=7, rid="r1", stage="chat", attempt=1, user_prompt=PROMPT, assistant_system="Be kind.",
                turns_min=3, turns_max=3)
    base.update(kw)
    base["seeds"] = functools.partial(stage_seed, base["spec_seed"], base["rid"], base["stage"], base["attempt"])
    return ConversationSetup(**base)


def ok(text: str, finish: str = "stop", tokens: int = 5) -> Result:
    return Result(id="x", text=text, finish_reason=finish, prompt_tokens=10, completion_tokens=tokens)


def scripted(answers):
    """An `act` that answers model calls in order and records every action."""
    seen = []
    it = iter(answers)

    def act(a):
        seen.append(a)
        out = next(it)
        return out(a) if callable(out) else out
    return act, seen


# ---------------------------------------------------------------- conversation

def test_conversation_runs_the_drawn_turns_with_per_turn_seeds_and_lineage():
    act, seen = scripted([ok(f"msg {i}") for i in range(6)])
    traj = drive(conversation(setup()), act)
    assert traj.status == "ok" and traj.steps == 3
    assert [m["role"] for m in traj.messages] == ["system", "user", "assistant", "user", "assistant", "user",
                                                  "assistant"]
    assert [c.tag for c in seen] == ["t1.user", "t1.assistant", "t2.user", "t2.assistant", "t3.user",
                                     "t3.assistant"]
    assert [c.seed for c in seen] == [stage_seed(7, "r1", "chat", 1, i) for i in range(2, 8)]
    assert len({c.seed for c in seen}) == 6
    # the simulator sees its own turns as assistant and the assistant's as user
    third_user = seen[4]
    assert [m["role"] for m in third_user.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third_user.messages[2]["content"] == "msg 0" and third_user.messages[3]["content"] == "msg 1"
    assert seen[5].messages[0] == {"role": "system", "content": "Be kind."}
    assert traj.turns[1].role == "assistant" and traj.turns[1].completion_tokens == 5
    assert traj.turns[1].seed == stage_seed(7, "r1", "chat", 1, 3) and traj.turns[1].finish_reason == "stop"
    assert traj.final_answer == "msg 5"


def test_turn_count_is_drawn_in_range_and_deterministic():
    counts = [drawn_turns(setup(rid=f"r{i}", turns_min=2, turns_max=5)) for i in range(60)]
    assert set(counts) == {2, 3, 4, 5}
    assert counts == [drawn_turns(setup(rid=f"r{i}", turns_min=2, turns_max=5)) for i in range(60)]


def test_seeds_differ_between_attempts_and_repeat_within_one():
    seeds = lambda attempt: [c.seed for c in scripted_seen(setup(attempt=attempt))]  # noqa: E731
    assert seeds(1) == seeds(1)
    assert not set(seeds(1)) & set(seeds(2))


def scripted_seen(s):
    act, seen = scripted([ok("hi")] * 20)
    drive(conversation(s), act)
    return seen


def test_the_simulator_ends_the_chat_with_the_marker():
    act, seen = scripted([ok("my card?"), ok("It is on its way."), ok("Thanks! [END]")])
    traj = drive(conversation(setup(turns_min=5, turns_max=5)), act)
    assert traj.status == "ok" and traj.steps == 1 and "ended the chat after 1" in traj.reason
    assert traj.messages[-1] == {"role": "assistant", "content": "It is on its way."}
    assert len(seen) == 3


def test_a_marker_on_the_first_turn_is_an_empty_conversation():
    act, _ = scripted([ok("[END]")])
    assert drive(conversation(setup()), act).status == "empty"


def test_the_stop_expression_ends_after_an_exchange():
    act, seen = scripted([ok("q"), ok("long answer " * 5), ok("q2"), ok("done")])
    traj = drive(conversation(setup(turns_min=6, turns_max=6, stop=parse("turn >= 2 or 'bye' in user"))), act)
    assert traj.steps == 2 and len(seen) == 4 and "stop rule" in traj.reason


def test_failures_and_truncation():
    act, _ = scripted([ok("q"), Result(id="x", text="", finish_reason="error", error="engine down")])
    traj = drive(conversation(setup()), act)
    assert traj.status == "error" and "engine down" in traj.reason
    assert [m["role"] for m in traj.messages] == ["system"]  # no unanswered user turn is kept
    act, _ = scripted([ok("q"), ok("cut", finish="length")] + [ok("x")] * 4)
    assert drive(conversation(setup()), act).status == "truncated"


# ---------------------------------------------------------------- agent

CALC = ToolDef(name="add", description="Add two numbers.", python="mytools:add",
               parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                           "required": ["a", "b"], "additionalProperties": False})
WEATHER = ToolDef(name="weather", description="Weather in a city.", simulate={"instruction": "Sunny days."},
                  parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TASK = ({"role": "user", "content": "What is 2 + 3?"},)


def calls(*pairs) -> Result:
    return ok(json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in pairs]}))


def final(text) -> Result:
    return ok(json.dumps({"final_answer": text}))


def agent_setup(**kw) -> AgentSetup:
    base = dict(spec_seed=3, rid="r9", stage="solve", attempt=1, prompt=TASK, tools=(CALC, WEATHER), max_steps=4)
    base.update(kw)
    base["seeds"] = functools.partial(stage_seed, base["spec_seed"], base["rid"], base["stage"], base["attempt"])
    return AgentSetup(**base)


def tool_answer(content="5", error=None):
    return lambda a: ToolResult(a.call_id, content, error, 0.01)


def test_agent_calls_a_tool_then_answers_and_keeps_openai_messages():
    act, seen = scripted([calls(("add", {"a": 2, "b": 3})), tool_answer("5"), final("The answer is 5.")])
    traj = drive(agent(agent_setup()), act)
    assert traj.status == "ok" and traj.final_answer == "The answer is 5." and traj.steps == 2
    assert isinstance(seen[1], ToolCall) and json.loads(seen[1].arguments) == {"a": 2, "b": 3}
    m = traj.messages
    assert m[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
    assert m[2] == {"role": "tool", "tool_call_id": m[1]["tool_calls"][0]["id"], "name": "add", "content": "5"}
    assert m[3] == {"role": "assistant", "content": "The answer is 5."}
    assert traj.tools[0]["function"]["name"] == "add"
    assert [c.seed for c in seen if isinstance(c, ModelCall)] == [stage_seed(3, "r9", "solve", 1, 64),
                                                                    stage_seed(3, "r9", "solve", 1, 128)]
    # the model saw the call as JSON and the result as a user message; its answer is schema-constrained
    second = seen[2]
    assert [x["role"] for x in second.messages] == ["system", "user", "assistant", "user"]
    assert "Result of add: 5" in second.messages[3]["content"] and "add" in second.messages[0]["content"]
    assert second.json_schema == step_schema(traj.tools, 4)
    v = verify_trajectory(traj, {"add": CALC}, expected="5", extract=NUMBER)
    assert v.passed and v.answer == "5"
    v = verify_trajectory(traj, {"add": CALC}, expected="6.0", extract=NUMBER)
    assert not v.passed and "not the expected 6" in v.reason
    assert not verify_trajectory(traj, {"add": CALC}, expected="5").passed  # default: the whole text


def test_step_schema_accepts_calls_and_answers_and_rejects_bad_arguments():
    import jsonschema

    v = jsonschema.Draft202012Validator(step_schema([CALC.openai()], 2))
    assert v.is_valid({"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]})
    assert v.is_valid({"final_answer": "3"})
    assert not v.is_valid({"tool_calls": [{"name": "add", "arguments": {"a": "x", "b": 2}}]})
    assert not v.is_valid({"tool_calls": [{"name": "sub", "arguments": {"a": 1, "b": 2}}]})
    assert not v.is_valid({"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}] * 3})


def test_a_failed_tool_call_is_shown_to_the_model_and_marks_the_record():
    act, seen = scripted([calls(("add", {"a": 2, "b": 3})), tool_answer("", "add ran past its 1s timeout"),
                          final("5")])
    traj = drive(agent(agent_setup()), act)
    assert traj.status == "tool_error" and "timeout" in traj.reason
    assert traj.messages[2]["content"] == "error: add ran past its 1s timeout"
    assert not traj.tool_calls[0].ok
    assert not verify_trajectory(traj, {"add": CALC}).passed
    assert verify_trajectory(traj, {"add": CALC}, allow_failed_calls=True).passed


def test_unknown_tools_and_bad_simulated_arguments_are_error_results_without_running():
    act, seen = scripted([calls(("nope", {}), ("weather", {"town": "Oslo"})), final("none")])
    traj = drive(agent(agent_setup()), act)
    assert len(seen) == 2  # nothing ran between the two model calls
    assert "unknown tool" in traj.tool_calls[0].error and "schema" in traj.tool_calls[1].error


def test_simulated_tools_are_model_calls_with_their_own_seed_and_lineage():
    act, seen = scripted([calls(("weather", {"city": "Oslo"}), ("add", {"a": 1, "b": 1})),
                          lambda a: ok('{"sky": "clear"}'), tool_answer("2"), final("clear, 2")])
    traj = drive(agent(agent_setup()), act)
    sim, run = seen[1], seen[2]
    assert isinstance(sim, ModelCall) and sim.tag == "s1.tool1" and sim.role == "tool"
    assert sim.seed == stage_seed(3, "r9", "solve", 1, 65) and "Sunny days." in sim.messages[0]["content"]
    assert isinstance(run, ToolCall)
    assert [m["content"] for m in traj.messages if m["role"] == "tool"] == ['{"sky": "clear"}', "2"]
    assert [t.role for t in traj.turns] == ["assistant", "tool", "assistant"]


def test_agent_step_budget_and_bad_answers():
    act, _ = scripted([calls(("add", {"a": 1, "b": 1})), tool_answer()] * 2)
    traj = drive(agent(agent_setup(max_steps=2)), act)
    assert traj.status == "max_steps" and traj.steps == 2
    assert not verify_trajectory(traj).passed
    act, _ = scripted([ok("not json")])
    assert drive(agent(agent_setup()), act).status == "invalid_json"
    act, _ = scripted([ok('{"tool_calls": [', finish="length")])
    assert drive(agent(agent_setup()), act).status == "truncated"


def test_verify_checks_every_calls_arguments_against_the_schema():
    act, _ = scripted([calls(("add", {"a": 1, "b": 1})), tool_answer("2"), final("2")])
    traj = drive(agent(agent_setup()), act)
    traj.tool_calls[0].arguments = '{"a": "one"}'
    v = verify_trajectory(traj, {"add": CALC, "weather": WEATHER})
    assert not v.passed and "schema" in v.reason
    traj.steps = 9
    traj.tool_calls[0].arguments = '{"a": 1, "b": 1}'
    assert "budget" in verify_trajectory(traj, {"add": CALC}, max_steps=4).reason


def test_native_presentation_passes_tools_and_reads_server_tool_calls():
    native = NativePresentation()
    act, seen = scripted([Result(id="x", text="", finish_reason="tool_calls", meta={"tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}),
        tool_answer("3"), ok("3")])
    traj = drive(agent(agent_setup(presentation=native)), act)
    assert seen[0].tools == tuple(t.openai() for t in (CALC, WEATHER)) and seen[0].json_schema is None
    assert seen[2].messages[-1]["role"] == "tool" and traj.final_answer == "3"


def test_schema_presentation_merges_one_steps_results_into_one_user_message():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":1,"b":2}'}},
                {"id": "c2", "type": "function", "function": {"name": "add", "arguments": '{"a":3,"b":4}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"},
            {"role": "tool", "tool_call_id": "c2", "content": "7"}]
    out = SchemaPresentation().model_messages(msgs, [CALC.openai()])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[3]["content"] == "Result of add: 3\nResult of add: 7"
    assert json.loads(out[2]["content"])["tool_calls"][1]["arguments"] == {"a": 3, "b": 4}


@pytest.mark.parametrize("bad", [{"python": "x"}, {}, {"python": "m:f", "simulate": {}}])
def test_tool_definitions_need_exactly_one_valid_implementation(bad):
    with pytest.raises(ValueError):
        ToolDef(name="t", description="d", **bad)


def test_the_presentation_follows_the_chat_template():
    from generator.engine.dialogue.presentation import presentation_for

    smol = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}{% endfor %}"
    tooled = "{% if tools %}{{ tools | tojson }}{% endif %}" + smol
    assert isinstance(presentation_for("auto", smol), SchemaPresentation)
    assert isinstance(presentation_for("auto", tooled), NativePresentation)
    assert isinstance(presentation_for("constrained", tooled), SchemaPresentation)
    assert isinstance(presentation_for("auto", None), SchemaPresentation)
