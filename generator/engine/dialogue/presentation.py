"""How tools are shown to a model, and how its answer is read back as tool calls or a final answer.

The kept trajectory is always OpenAI form. `NativePresentation` passes the messages unchanged with
`tools` on the request: the model's chat template renders them (offline vLLM) or the server does,
and the tool calls come back as the server's `tool_calls` or are read from the answer's text
(Hermes-style `<tool_call>{...}</tool_call>` blocks, or the whole answer as one call object). A
model whose chat template has no tool support (the embedded SmolLM2) gets `SchemaPresentation`:
the tools described in its system prompt, its answer constrained to `{"tool_calls": [...]}` or
`{"final_answer": "..."}` by a JSON schema built from the tools' schemas, and tool results as user
messages. `presentation_for` chooses (`tool_calling: auto | native | constrained`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from generator.core.backend import Result


@dataclass
class Parsed:
    final: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments as JSON text)
    error: str | None = None


class Presentation(Protocol):
    def model_messages(self, messages: list[dict], tools: list[dict]) -> list[dict]: ...
    def schema(self, tools: list[dict], max_calls: int) -> dict | None: ...
    def tools_param(self, tools: list[dict]) -> tuple[dict, ...] | None: ...
    def parse(self, result: Result) -> Parsed: ...


def step_schema(tools: list[dict], max_calls: int) -> dict:
    """One step's answer: tool calls (each name tied to its own arguments schema) or a final answer."""
    call = {"anyOf": [{"type": "object", "properties": {"name": {"enum": [t["function"]["name"]]},
                                                        "arguments": t["function"]["parameters"]},
                       "required": ["name", "arguments"], "additionalProperties": False} for t in tools]}
    return {"anyOf": [
        {"type": "object", "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1,
                                                         "maxItems": max_calls}},
         "required": ["tool_calls"], "additionalProperties": False},
        {"type": "object", "properties": {"final_answer": {"type": "string"}},
         "required": ["final_answer"], "additionalProperties": False},
    ]}


def tools_prompt(tools: list[dict]) -> str:
    lines = ["You can call these tools (JSON Schema of each one's arguments):"]
    for t in tools:
        f = t["function"]
        lines.append(f"- {f['name']}: {f['description']} Arguments: {json.dumps(f['parameters'], sort_keys=True)}")
    lines.append('Answer only with JSON: {"tool_calls": [{"name": ..., "arguments": {...}}]} to call tools '
                 '(their results come back to you), or {"final_answer": "..."} once you know the answer.')
    return "\n".join(lines)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


class SchemaPresentation:
    """Tool calling through structured output, for chat templates without tool support."""

    def model_messages(self, messages: list[dict], tools: list[dict]) -> list[dict]:
        out: list[dict] = []
        system = tools_prompt(tools)
        rest = messages
        if messages and messages[0]["role"] == "system":
            system = f"{messages[0]['content']}\n\n{system}"
            rest = messages[1:]
        out.append({"role": "system", "content": system})
        names = {}
        for m in rest:
            if m["role"] == "assistant" and m.get("tool_calls"):
                calls = [{"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
                         for c in m["tool_calls"]]
                names.update({c["id"]: c["function"]["name"] for c in m["tool_calls"]})
                out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
            elif m["role"] == "tool":
                line = f"Result of {m.get('name') or names.get(m.get('tool_call_id'), 'the tool')}: {m['content']}"
                if out[-1]["role"] == "user" and out[-1].get("_tool"):
                    out[-1]["content"] += "\n" + line  # one user message per step: roles keep alternating
                else:
                    out.append({"role": "user", "content": line, "_tool": True})
            else:
                out.append({"role": m["role"], "content": m.get("content") or ""})
        return [{k: v for k, v in m.items() if k != "_tool"} for m in out]

    def schema(self, tools: list[dict], max_calls: int) -> dict | None:
        return step_schema(tools, max_calls)

    def tools_param(self, tools: list[dict]) -> tuple[dict, ...] | None:
        return None

    def parse(self, result: Result) -> Parsed:
        try:
            data = json.loads(result.text)
        except (TypeError, ValueError) as exc:
            return Parsed(error=f"the answer is not JSON ({exc})"[:200])
        if isinstance(data, dict) and isinstance(data.get("final_answer"), str):
            return Parsed(final=data["final_answer"])
        calls = data.get("tool_calls") if isinstance(data, dict) else None
        if isinstance(calls, list) and calls and all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                     for c in calls):
            return Parsed(calls=[(c["name"], c["arguments"] if isinstance(c.get("arguments"), str)
                                  else json.dumps(c.get("arguments", {}), ensure_ascii=False)) for c in calls])
        return Parsed(error='the answer is neither {"tool_calls": [...]} nor {"final_answer": "..."}')


class NativePresentation:
    """For a chat template with tool support: messages go unchanged and `tools` ride on the request;
    the tool calls are the server's (`Result.meta["tool_calls"]`, OpenAI form) or, where the answer
    is plain text (offline vLLM, a server without a tool parser), read from it (`text_tool_calls`)."""

    def model_messages(self, messages: list[dict], tools: list[dict]) -> list[dict]:
        return [dict(m) for m in messages]

    def schema(self, tools: list[dict], max_calls: int) -> dict | None:
        return None

    def tools_param(self, tools: list[dict]) -> tuple[dict, ...] | None:
        return tuple(tools)

    def parse(self, result: Result) -> Parsed:
        calls = result.meta.get("tool_calls") or []
        if calls:
            try:
                return Parsed(calls=[(c["function"]["name"], _argument_text(c["function"].get("arguments")))
                                     for c in calls])
            except (KeyError, TypeError):
                return Parsed(error="the server's tool_calls are not in OpenAI form")
        return text_tool_calls(result.text or "")


TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def _argument_text(arguments: Any) -> str:
    if arguments is None:
        return "{}"
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _call(obj: Any) -> tuple[str, str] | None:
    """One call object: {"name": ..., "arguments": {...}} (Hermes, Qwen) or "parameters" (Llama 3)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if isinstance(obj.get("function"), dict):  # an OpenAI-form call written out as text
        return _call(obj["function"])
    return obj["name"], _argument_text(obj.get("arguments", obj.get("parameters")))


def text_tool_calls(text: str) -> Parsed:
    """Tool calls written in an answer's text by a model whose template offers tools: Hermes-style
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (an unclosed last block, cut by
    max_tokens, still counts), or the whole answer one call object or a list of them. Any other
    answer is the final answer."""
    if "<tool_call>" in text:
        calls = []
        for block in TOOL_CALL_BLOCK.findall(text):
            try:
                call = _call(json.loads(block))
            except ValueError as exc:
                return Parsed(error=f"a <tool_call> block is not JSON ({exc})"[:200])
            if call is None:
                return Parsed(error='a <tool_call> block is not {"name": ..., "arguments": {...}}')
            calls.append(call)
        return Parsed(calls=calls)
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            data = json.loads(stripped)
        except ValueError:
            return Parsed(final=text)
        items = data if isinstance(data, list) else [data]
        calls = [_call(x) for x in items]
        if items and all(calls):
            return Parsed(calls=calls)
    return Parsed(final=text)


TOOLS_IN_TEMPLATE = re.compile(r"\{[{%][^}]*\btools\b")


def template_has_tools(chat_template: str | dict | None) -> bool:
    """Whether a chat template renders `tools` (a Jinja expression or statement naming it); a
    tokenizer with several named templates counts when any of them does."""
    if isinstance(chat_template, dict):
        return any(template_has_tools(t) for t in chat_template.values())
    return bool(chat_template) and TOOLS_IN_TEMPLATE.search(chat_template) is not None


def presentation_for(mode: str, chat_template: str | dict | None) -> Presentation:
    """`native` and `constrained` are what they say; `auto` is native where the model's chat
    template renders `tools` and constrained otherwise (the embedded SmolLM2's has no `tools`; a
    server's template is not visible: None)."""
    if mode == "native" or (mode == "auto" and template_has_tools(chat_template)):
        return NativePresentation()
    return SchemaPresentation()
