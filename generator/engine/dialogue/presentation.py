"""How tools are shown to a model, and how its answer is read back as tool calls or a final answer.

The kept trajectory is always OpenAI form. A model whose chat template has no tool support (the
embedded SmolLM2) gets `SchemaPresentation`: the tools described in its system prompt, its answer
constrained to `{"tool_calls": [...]}` or `{"final_answer": "..."}` by a JSON schema built from the
tools' schemas, and tool results as user messages. `NativePresentation` passes the messages and
`tools` unchanged for a template (and server) with native tool calling.
"""
from __future__ import annotations

import json
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
    """For a chat template with tool support: messages and tools go to the server unchanged, and
    the server's parsed tool calls come back in `Result.meta["tool_calls"]` (OpenAI form)."""

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
                return Parsed(calls=[(c["function"]["name"], c["function"].get("arguments") or "{}") for c in calls])
            except (KeyError, TypeError):
                return Parsed(error="the server's tool_calls are not in OpenAI form")
        return Parsed(final=result.text)


def presentation_for(chat_template: str | None, native_tools: bool = False) -> Presentation:
    """Native tool calling only where the model's chat template renders `tools` and the backend
    parses tool calls (`native_tools`, e.g. a vLLM server started with a tool parser); otherwise
    tool calls through structured output (the embedded SmolLM2's template has no `tools`)."""
    if native_tools and chat_template and "tools" in chat_template:
        return NativePresentation()
    return SchemaPresentation()
