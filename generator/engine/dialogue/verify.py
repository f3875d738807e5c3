"""Checks of a finished trajectory, as one `Verdict` like verify stages give: the run ended well,
every call's arguments match its tool's schema, no call failed, the step budget held, and the final
answer matches the expected value (from a seed column, a rendered value, or a tool's result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from generator.config.tools import ToolDef
from generator.engine.dialogue.protocol import ToolCall, Trajectory
from generator.engine.dialogue.tools import ToolRunner, check_arguments


@dataclass
class Verdict:
    """The fields of generator.engine.pipeline.verify.Verdict (they become `<stage>.<field>` columns);
    defined here so the pipeline may import this package without a cycle."""

    passed: bool
    reason: str
    agree: int | None = None
    answer: str | None = None
    majority: str | None = None  # the expected value, as extracted


def expected_by_tool(runner: ToolRunner, tool: str, arguments: str) -> tuple[str | None, str | None]:
    """(value, None) or (None, why): the expected answer computed by a tool."""
    res = runner.run(ToolCall(call_id="expect", name=tool, arguments=arguments))
    return (None, f"expect.tool {tool} failed: {res.error}") if res.error else (res.content, None)


def verify_trajectory(traj: Trajectory, tools: dict[str, ToolDef] | None = None, expected: str | None = None,
                      extract: Callable[[str | None], str | None] | None = None, max_steps: int | None = None,
                      allow_failed_calls: bool = False) -> Verdict:
    """`extract` turns a text into the comparable answer; the scheduler passes
    `functools.partial(generator.engine.pipeline.verify.extract_answer, how=expect.extract)`
    (default: the whitespace-normalised, lower-cased text)."""
    extract = extract or (lambda t: " ".join(t.split()).lower() or None if t else None)
    if traj.failed:
        return Verdict(False, f"status {traj.status}: {traj.reason}")
    for call in traj.tool_calls:
        tool = (tools or {}).get(call.name)
        if tools is not None and tool is None:
            return Verdict(False, f"{call.call_id}: unknown tool '{call.name}'")
        if tool is not None:
            _, err = check_arguments(tool, call.arguments)
            if err:
                return Verdict(False, f"{call.call_id}: {err}")
    failed = [c for c in traj.tool_calls if not c.ok]
    if failed and not allow_failed_calls:
        return Verdict(False, f"{len(failed)} tool call(s) failed (first: {failed[0].name}: {failed[0].error})"[:300])
    if max_steps is not None and traj.steps > max_steps:
        return Verdict(False, f"{traj.steps} steps, over the budget of {max_steps}")
    if expected is None:
        return Verdict(True, f"{traj.steps} step(s), {len(traj.tool_calls)} tool call(s), none failed"
                       if not failed else f"{traj.steps} step(s); {len(failed)} failed call(s) allowed")
    want = extract(str(expected))
    got = extract(traj.final_answer)
    if want is None:
        return Verdict(False, f"no answer found in the expected value {str(expected)[:80]!r}", answer=got)
    if got is None:
        return Verdict(False, "no answer found in the final answer", majority=want)
    if got != want:
        return Verdict(False, f"final answer {got} is not the expected {want}", answer=got, majority=want)
    return Verdict(True, f"final answer {got} matches the expected value", answer=got, majority=want)
