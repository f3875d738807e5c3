"""ToolRunner with real worker processes and a real stdio MCP server."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from generator.config.tools import ToolDef
from generator.engine.dialogue import ToolCall
from generator.engine.dialogue.tools import ToolRunner
from helpers import importorskip_ci

FIXTURES = Path(__file__).resolve().parent / "fixtures"

TOOLS_PY = '''
import os, time

def add(a, b):
    return a + b

def read(path):
    with open(path) as f:
        return f.read()

def listing(path):
    return sorted(os.listdir(path))

def shell():
    import subprocess
    return subprocess.run(["cat", "/etc/hostname"], capture_output=True, text=True).stdout

def sleep(seconds):
    time.sleep(seconds)
    return "woke"

def crash():
    os._exit(3)

def hog(mb):
    return len(bytearray(mb * 1024 * 1024))

def huge(n):
    return "x" * n

def odd():
    return {1, 2, 3}

def boom():
    raise RuntimeError("kaput")
'''

OBJ = {"type": "object"}


def tool(name, params=None, **kw) -> ToolDef:
    return ToolDef(name=name, description=name, python=f"mytools:{name}", parameters=params or OBJ, **kw)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    proj = tmp_path_factory.mktemp("proj")
    (proj / "mytools.py").write_text(TOOLS_PY)
    (proj / "notes.txt").write_text("inside the project")
    num = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
           "required": ["a", "b"], "additionalProperties": False}
    tools = [tool("add", num), tool("read"), tool("listing"), tool("shell"), tool("sleep"), tool("crash"),
             tool("hog"), tool("huge"), tool("odd"), tool("boom")]
    r = ToolRunner(tools, proj, timeout=2.0, max_result_chars=100, memory_mb=512, workers=1)
    yield r
    r.close()


def call(runner, name, **args):
    return runner.submit(ToolCall(call_id="c", name=name, arguments=json.dumps(args))).result(timeout=60)


def test_a_python_tool_runs_in_the_project_folder(runner):
    res = call(runner, "add", a=2, b=3.5)
    assert res.ok and res.content == "5.5" and res.seconds > 0
    assert call(runner, "read", path="notes.txt").content == "inside the project"  # cwd: the project


def test_arguments_that_break_the_schema_are_refused_before_running(runner):
    res = call(runner, "add", a="two", b=1)
    assert not res.ok and "schema" in res.error and "a" in res.error
    res = runner.run(ToolCall(call_id="c", name="add", arguments="{not json"))
    assert "not JSON" in res.error


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/hostname", "../outside.txt"])
def test_a_tool_cannot_read_outside_the_project(runner, path):
    res = call(runner, "read", path=path)
    assert not res.ok and "outside the project" in res.error


def test_a_tool_cannot_list_outside_the_project_or_start_processes(runner):
    assert "outside the project" in call(runner, "listing", path="/etc").error
    assert "mytools.py" in call(runner, "listing", path=".").content
    assert "start processes" in call(runner, "shell").error


def test_a_hang_a_crash_and_a_memory_hog_give_error_results_and_the_runner_survives(runner):
    t = time.monotonic()
    res = call(runner, "sleep", seconds=30)
    assert "timeout" in res.error and time.monotonic() - t < 15
    assert "died" in call(runner, "crash").error
    res = call(runner, "hog", mb=2048)
    assert not res.ok and ("MemoryError" in res.error or "died" in res.error)
    assert call(runner, "add", a=1, b=1).content == "2"  # the replaced worker answers


def test_huge_non_json_and_raising_results_are_errors(runner):
    res = call(runner, "huge", n=5000)
    assert "over max_result_chars 100" in res.error and "xxxx" in res.error and len(res.error) < 400
    assert "not JSON-serialisable (set)" in call(runner, "odd").error
    assert "RuntimeError: kaput" in call(runner, "boom").error
    assert "unknown tool" in call(runner, "nope").error


def test_an_mcp_server_is_listed_and_called(tmp_path):
    importorskip_ci("mcp")
    cmd = [sys.executable, str(FIXTURES / "mcp_server.py")]
    tools = [ToolDef(name="add", description="Add.", mcp={"command": cmd},
                     parameters={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                                 "required": ["a", "b"]}),
             ToolDef(name="loud", description="Shout.", mcp={"command": cmd, "tool": "shout"},
                     parameters={"type": "object", "properties": {"text": {"type": "string"}}}),
             ToolDef(name="broken", description="Fails.", mcp={"command": cmd},
                     parameters={"type": "object", "properties": {"text": {"type": "string"}}}),
             ToolDef(name="nap", description="Hangs.", mcp={"command": cmd},
                     parameters={"type": "object", "properties": {"seconds": {"type": "number"}}})]
    with ToolRunner(tools, tmp_path, timeout=3) as r:
        assert {"add", "shout", "broken"} <= set(r.list_mcp_tools(cmd))
        res = r.submit(ToolCall("c1", "add", '{"a": 2, "b": 40}')).result(timeout=60)
        assert res.ok and float(res.content) == 42
        assert r.run(ToolCall("c2", "loud", '{"text": "hi"}')).content == "HI"
        bad = r.run(ToolCall("c3", "broken", '{"text": "x"}'))
        assert not bad.ok and "reported an error" in bad.error and "broken" in bad.error
        assert "schema" in r.run(ToolCall("c4", "add", '{"a": "x", "b": 1}')).error
        t = time.monotonic()
        hung = r.run(ToolCall("c5", "nap", '{"seconds": 60}'))
        assert "did not answer within 3s" in hung.error and time.monotonic() - t < 10
        assert r.run(ToolCall("c6", "loud", '{"text": "still here"}')).content == "STILL HERE"
        assert len(r._mcp) == 1  # one session per server command
