"""Checks of a finished trajectory, as one `Verdict` like verify stages give: the run ended well,
every call's arguments match its tool's schema, no call failed, the step budget held, and the final
answer matches the expected value (from a seed column, a rendered value, or a tool's result)."""
from __future__ import annotations

from generator.config.tools import ToolDef
from generator.engine.dialogue.protocol import ToolCall, Trajectory
from generator.engine.dialogue.tools import ToolRunner, check_arguments
from generator.engine.pipeline.verify import Verdict, extract_answer


def expected_by_tool(runner: ToolRunner, tool: str, arguments: str) -> tuple[str | None, str | None]:
    """(value, None) or (None, why): the expected answer computed by a tool."""
    res = runner.run(ToolCall(call_id="expect", name=tool, arguments=arguments))
    return (None, f"expect.tool {tool} failed: {res.error}") if res.error else (res.content, None)


def verify_trajectory(traj: Trajectory, tools: dict[str, ToolDef] | None = None, expected: str | None = None,
                      extract: str = "number", max_steps: int | None = None,
                      allow_failed_calls: bool = False) -> Verdict:
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
    want = extract_answer(str(expected), extract)
    got = extract_answer(traj.final_answer, extract)
    if want is None:
        return Verdict(False, f"the expected value {str(expected)[:80]!r} has no {extract} answer", answer=got)
    if got is None:
        return Verdict(False, f"no {extract} answer in the final answer", majority=want)
    if got != want:
        return Verdict(False, f"final answer {got} is not the expected {want}", answer=got, majority=want)
    return Verdict(True, f"final answer {got} matches the expected value", answer=got, majority=want)
