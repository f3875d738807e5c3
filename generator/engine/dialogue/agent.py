"""The agent driver: a model with tools, step by step, up to `max_steps` model calls.

Step k is one assistant call (tag `s{k}.assistant`, seed `seeds(64k)`, `seeds` being the stage's
seed rule as in conversation.py); when it answers with tool calls, they are run as one parallel
batch: `ToolCall`s for Python and MCP tools (the scheduler's `ToolRunner`), a `ModelCall` (tag
`s{k}.tool{j}`, seed `seeds(64k + j)`) for a simulated tool.
Each call gets a result, an error result included; the model sees them and goes on. A final answer
ends the run: status `ok`, or `tool_error` when some call failed. No final answer within the
budget: `max_steps`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from generator.config.tools import ToolDef
from generator.engine.dialogue.presentation import Presentation, SchemaPresentation
from generator.engine.dialogue.protocol import (Driver, ModelCall, ToolCall, ToolRecord, ToolResult, Trajectory,
                                                TurnRecord)
from generator.engine.dialogue.tools import check_arguments

SIMULATE_SYSTEM = ("You are the tool `{name}`: {description}\nIts arguments follow this JSON Schema: {schema}\n"
                   "{instruction}Answer with the tool's result only, as it would return it (JSON or plain text), "
                   "nothing else.")


@dataclass(frozen=True)
class AgentSetup:
    spec_seed: int
    rid: str
    stage: str
    attempt: int
    prompt: tuple[dict, ...]           # the rendered task template
    seeds: Callable[[int], int]        # sample -> seed: the stage's seed rule for this record and attempt
    tools: tuple[ToolDef, ...]
    model: str | None = None
    max_steps: int = 6
    max_calls_per_step: int = 4
    max_result_chars: int = 4000
    presentation: Presentation = field(default_factory=SchemaPresentation)


def simulate_call(tool: ToolDef, arguments: str, seed: int, tag: str) -> ModelCall:
    sim = tool.simulate
    system = SIMULATE_SYSTEM.format(name=tool.name, description=tool.description,
                                    schema=json.dumps(tool.parameters, sort_keys=True),
                                    instruction=f"{sim.instruction}\n" if sim and sim.instruction else "")
    return ModelCall(messages=({"role": "system", "content": system}, {"role": "user", "content": arguments}),
                     model=sim.model if sim else None, seed=seed, tag=tag, role="tool")


def agent(s: AgentSetup) -> Driver:
    by_name = {t.name: t for t in s.tools}
    defs = [t.openai() for t in s.tools]
    messages: list[dict] = [dict(m) for m in s.prompt]
    traj = Trajectory(messages=messages, tools=defs)

    def finish(status: str, reason: str) -> Trajectory:
        failed = [c for c in traj.tool_calls if not c.ok]
        if status == "ok" and failed:
            status = "tool_error"
            reason = f"{reason}; {len(failed)} tool call(s) failed (first: {failed[0].name}: {failed[0].error})"
        traj.status, traj.reason = status, reason
        return traj

    for step in range(1, s.max_steps + 1):
        traj.steps = step
        call = ModelCall(messages=tuple(s.presentation.model_messages(messages, defs)), model=s.model,
                         seed=s.seeds(64 * step),
                         json_schema=s.presentation.schema(defs, s.max_calls_per_step), tag=f"s{step}.assistant",
                         tools=s.presentation.tools_param(defs))
        (res,) = yield [call]
        traj.turns.append(TurnRecord(tag=call.tag, role="assistant", text=res.text or "", seed=call.seed,
                                     model=call.model, prompt_tokens=res.prompt_tokens,
                                     completion_tokens=res.completion_tokens, finish_reason=res.finish_reason,
                                     error=res.error))
        if res.error:
            return finish("error", f"step {step}: the model call failed: {res.error}")
        parsed = s.presentation.parse(res)
        if parsed.error:
            status = "truncated" if res.finish_reason == "length" else "invalid_json"
            return finish(status, f"step {step}: {parsed.error}")
        if parsed.final is not None:
            if not parsed.final.strip():
                return finish("empty", f"step {step}: the final answer is empty")
            messages.append({"role": "assistant", "content": parsed.final})
            traj.final_answer = parsed.final
            return finish("ok", f"final answer after {step} step(s), {len(traj.tool_calls)} tool call(s)")

        calls = parsed.calls[:s.max_calls_per_step]
        ids = [f"call_{step}_{j}" for j in range(1, len(calls) + 1)]
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, (name, args) in zip(ids, calls)]})
        actions: list = []
        early: dict[int, ToolResult] = {}   # calls answered without running anything
        for j, (cid, (name, args)) in enumerate(zip(ids, calls), start=1):
            tool = by_name.get(name)
            if tool is None:
                early[j] = ToolResult(cid, "", f"unknown tool '{name}'; the tools are {', '.join(by_name)}")
                continue
            if tool.kind == "simulate":
                _, err = check_arguments(tool, args)
                if err:
                    early[j] = ToolResult(cid, "", err)
                    continue
                actions.append(simulate_call(tool, args, s.seeds(64 * step + j), f"s{step}.tool{j}"))
            else:
                actions.append(ToolCall(call_id=cid, name=name, arguments=args))
        outcomes = iter((yield actions) if actions else [])
        for j, (cid, (name, args)) in enumerate(zip(ids, calls), start=1):
            if j in early:
                out = early[j]
            else:
                got = next(outcomes)
                if isinstance(got, ToolResult):
                    out = got
                else:  # a simulated tool's model answer
                    sim = actions[[getattr(a, "tag", "") for a in actions].index(f"s{step}.tool{j}")]
                    traj.turns.append(TurnRecord(tag=sim.tag, role="tool", text=got.text or "", seed=sim.seed,
                                                 model=sim.model, prompt_tokens=got.prompt_tokens,
                                                 completion_tokens=got.completion_tokens,
                                                 finish_reason=got.finish_reason, error=got.error))
                    text = (got.text or "").strip()
                    err = got.error or (None if text else "the simulated tool answered nothing")
                    if not err and len(text) > s.max_result_chars:
                        err = f"result of {len(text)} chars is over max_result_chars {s.max_result_chars}"
                    out = ToolResult(cid, "" if err else text, err)
            traj.tool_calls.append(ToolRecord(call_id=cid, name=name, arguments=args, ok=out.ok, error=out.error,
                                              seconds=out.seconds, step=step))
            content = out.content if out.ok else f"error: {out.error}"
            messages.append({"role": "tool", "tool_call_id": cid, "name": name, "content": content})
    return finish("max_steps", f"no final answer within max_steps {s.max_steps}")
