"""`tools:`, `conversation` and `agent` stages in the spec, and the shipped tool specs' tools."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from generator.config.spec import load_spec
from generator.core.backend import Result
from generator.core.errors import SpecError
from generator.engine.dialogue import ToolCall, drive
from generator.engine.dialogue.agent import AgentSetup, agent
from generator.engine.dialogue.tools import ToolRunner
from generator.engine.dialogue.verify import expected_by_tool, verify_trajectory
from generator.engine.pipeline.context import stage_seed
from generator.engine.pipeline.verify import check_importable, extract_answer, project_paths

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
name: t
topics:
  - items: [Arithmetic]
tools:
  - name: add
    description: Add.
    parameters: {type: object, properties: {a: {type: number}}}
    python: mytools:add
  - name: weather
    description: Weather.
    simulate: {instruction: Always sunny.}
  - name: echo
    description: Echo.
    mcp: {command: [python, server.py], tool: shout}
stages:
  - name: ask
    kind: generate
    template: pipeline/math_problem
  - name: chat
    kind: conversation
    user: {template: dialogue/support_user}
    assistant: {system: Be brief.}
    turns: {min: 2, max: 3}
    stop: {marker: "[DONE]", expr: "turn >= 2"}
  - name: solve
    kind: agent
    template: dialogue/tool_solver
    tools: [add, weather]
    max_steps: 3
    expect: {tool: add, arguments: {a: "{{ ask.text }}"}}
"""


def _load(tmp_path: Path, text: str):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return load_spec(p)


def test_a_spec_with_tools_conversation_and_agent_stages_loads(tmp_path):
    spec = _load(tmp_path, BASE)
    assert [t.kind for t in spec.tools] == ["python", "simulate", "mcp"]
    chat, solve = spec.stages[1], spec.stages[2]
    assert chat.turns.min == 2 and chat.stop.marker == "[DONE]" and chat.assistant.system == "Be brief."
    assert solve.tools == ["add", "weather"] and solve.tool_timeout == 10 and solve.expect.extract == "number"
    assert spec.tools[0].openai() == {"type": "function", "function": {
        "name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}


@pytest.mark.parametrize("old,new,message", [
    ("tools: [add, weather]", "tools: [add, nope]", "tool 'nope' is not in `tools:`"),
    ("    simulate: {instruction: Always sunny.}", "    simulate: {}\n    python: m:f", "exactly one of"),
    ("parameters: {type: object, properties: {a: {type: number}}}", "parameters: {type: array}", "type: object"),
    ("parameters: {type: object, properties: {a: {type: number}}}",
     "parameters: {type: object, properties: {a: {type: 7}}}", "not a valid JSON Schema"),
    ("turns: {min: 2, max: 3}", "turns: {min: 4, max: 3}", "turns.min (4) is above turns.max (3)"),
    ("    python: mytools:add", "    python: mytools.add", "`module:function`"),
    ("expect: {tool: add, arguments: {a: \"{{ ask.text }}\"}}", "expect: {value: x, tool: add}", "exactly one of"),
    ("  - name: echo", "  - name: add", "'add' is defined twice"),
    ("    max_steps: 3", "    max_steps: 3\n    max_step: 4", "unknown key 'max_step'"),
    ("assistant: {system: Be brief.}", "assistant: {system: Be brief., template: x}", "not both"),
])
def test_bad_tool_and_stage_config_is_one_located_error(tmp_path, old, new, message):
    assert old in BASE
    with pytest.raises(SpecError) as err:
        _load(tmp_path, BASE.replace(old, new))
    assert message in str(err.value) and "spec.yaml:" in str(err.value)


def test_a_bad_tool_fails_validate_as_one_line_exit_2(tmp_path):
    (tmp_path / "spec.yaml").write_text(BASE.replace("tools: [add, weather]", "tools: [add, nope]"))
    proc = subprocess.run([sys.executable, "-m", "generator.cli", "validate", str(tmp_path / "spec.yaml")],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {tmp_path / 'spec.yaml'}:") and "tool 'nope'" in proc.stderr


def test_specs_without_tools_keep_their_hash():
    spec = load_spec(ROOT / "specs" / "math.yaml")
    assert "tools" not in json.loads(spec.canonical_json())


def test_the_shipped_tool_specs_load_and_their_tools_resolve():
    math = load_spec(ROOT / "specs" / "tool_math.yaml")
    assert [s.kind for s in math.stages] == ["generate", "agent"]
    for tool in math.tools:
        assert check_importable(tool.python, math.base_dir) is None
    chat = load_spec(ROOT / "specs" / "support_chat.yaml")
    talk = next(s for s in chat.stages if s.name == "chat")
    assert talk.kind == "conversation" and talk.turns.max == 5
    rate = next(s for s in chat.stages if s.kind == "judge")
    assert rate.target == "chat" and rate.per_turn


def test_the_math_tools_compute_exactly():
    sys.path.insert(0, str(ROOT / "specs"))
    try:
        import math_tools
    finally:
        sys.path.remove(str(ROOT / "specs"))
    assert math_tools.calculate("(12 + 8) * 3 / 4") == 15 and math_tools.calculate("2^10") == 1024
    assert math_tools.calculate("7 / 2") == 3.5
    with pytest.raises(ValueError):
        math_tools.calculate("__import__('os')")
    with pytest.raises(ValueError):
        math_tools.calculate("9 ** 999")
    assert math_tools.convert_units(5, "km", "m") == {"value": 5000, "unit": "m"}
    assert math_tools.convert_units(212, "f", "c")["value"] == 100
    assert math_tools.convert_units(1, "mi", "km")["value"] == 1.609344
    with pytest.raises(ValueError):
        math_tools.convert_units(1, "kg", "km")


def test_a_tool_math_trajectory_runs_its_real_tools_and_verifies_against_the_calculator():
    spec = load_spec(ROOT / "specs" / "tool_math.yaml")
    stage = spec.stages[1]
    answers = iter([
        Result("a", json.dumps({"tool_calls": [
            {"name": "convert_units", "arguments": {"value": 3, "from_unit": "km", "to_unit": "m"}},
            {"name": "calculate", "arguments": {"expression": "3000 / 4"}}]}), "stop"),
        Result("b", json.dumps({"final_answer": "750 m"}), "stop")])
    setup = AgentSetup(spec_seed=spec.seed, rid="r1", stage=stage.name, attempt=1,
                       prompt=({"role": "user", "content": "3 km in 4 equal parts: how many metres each?"},),
                       tools=tuple(spec.tools), max_steps=stage.max_steps,
                       seeds=functools.partial(stage_seed, spec.seed, "r1", stage.name, 1))
    with ToolRunner(spec.tools, spec.project_root, timeout=stage.tool_timeout, max_result_chars=stage.max_result_chars,
                    import_paths=project_paths(spec.base_dir), workers=1) as runner:
        traj = drive(agent(setup), lambda a: runner.submit(a).result(timeout=60) if isinstance(a, ToolCall)
                     else next(answers))
        assert [m["content"] for m in traj.messages if m["role"] == "tool"] == ['{"value": 3000, "unit": "m"}', "750"]
        want, err = expected_by_tool(runner, "calculate", json.dumps({"expression": "3000 / 4"}))
    assert err is None and want == "750"
    v = verify_trajectory(traj, {t.name: t for t in spec.tools}, expected=want,
                          extract=functools.partial(extract_answer, how="number"), max_steps=stage.max_steps)
    assert v.passed, v.reason
