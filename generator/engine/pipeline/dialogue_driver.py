"""Runs conversation and agent stages for the scheduler: each stage of a record is a driver
coroutine (generator.engine.dialogue); each batch it yields goes out at once (model turns as
requests on the scheduler's feeds, tool calls on a `ToolRunner`, each counted in the record's
`busy`), and the driver is sent the batch's results when the last one lands. A finished agent
trajectory is verified (`expect`) before the stage settles.

The scheduler owns every record and every feed; this module reaches them only through the
callbacks it is given (submit a request, post an event, reject or advance a record, end a record
left with nothing to wait for), so the scheduler core stays the one place that changes state
outside a dialogue.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from generator.config.base import SamplingOverride
from generator.config.stages import AgentStage, ConversationStage
from generator.core.backend import Backend, Result, chat_template
from generator.engine.dialogue.agent import AgentSetup, agent
from generator.engine.dialogue.conversation import ConversationSetup, conversation
from generator.engine.dialogue.presentation import Presentation, presentation_for
from generator.engine.dialogue.protocol import ModelCall, ToolCall, ToolResult, Trajectory
from generator.engine.dialogue.tools import ToolRunner
from generator.engine.dialogue.verify import verify_trajectory
from generator.engine.pipeline import expressions, verify
from generator.engine.pipeline.context import (Contexts, StageOut, dialogue_request, render_text, sampling_for,
                                               stage_context, stage_seed)
from generator.engine.pipeline.dag import Pipeline, StageNode
from generator.engine.pipeline.state import Pending, Rec
from generator.engine.planner import Resolved, hash64
from generator.engine.requests import classify, retryable


@dataclass
class Dialog:
    """One conversation or agent stage run of a record (one attempt): the driver and the batch of
    actions whose results it waits for."""

    stage: str
    epoch: int
    driver: Any
    default_model: str
    batch: list = field(default_factory=list)     # ModelCall | ToolCall, in the driver's order
    results: list = field(default_factory=list)   # their results as they land (None: not yet)
    missing: int = 0
    tries: int = 1                                # the most tries any turn needed
    sampling: dict = field(default_factory=dict)  # (role, model) -> Sampling
    trajectory: Trajectory | None = None          # once the driver has returned


class DialogueDriver:
    def __init__(self, pipeline: Pipeline, resolved: Resolved, contexts: Contexts, retries: int,
                 backends: dict[str, Backend], *,
                 submit: Callable[[Pending], None], post: Callable[[tuple], None],
                 live: Callable[[Rec], None], reject: Callable[[Rec, StageNode, str, str], None],
                 advance: Callable[[Rec], None]):
        self.p = pipeline
        self.resolved = resolved
        self.seed = resolved.spec.seed
        self.contexts = contexts
        self.retries = retries
        self.backends = backends
        self.presentations: dict[tuple[str, str], Presentation] = {}  # (agent stage, model) -> how it sees tools
        self._submit_request = submit    # a model turn, as a request on the model's feed
        self._post = post                # a ("tool", token, future) event for the scheduler thread
        self._live_check = live          # end the record if nothing is left outstanding
        self._reject_stage = reject      # a failed stage: regenerate or end the record
        self._advance_rec = advance      # a settled stage: start what waited on it
        self.tool_runners: dict[str, ToolRunner] = {}  # agent stage -> its runner (created on first use)

    def presentation(self, node: StageNode, model: str) -> Presentation:
        """Native tool calling or tools through structured output, for this stage and model: the
        stage's `tool_calling`, else the model's, else (auto) what its chat template can render."""
        key = (node.name, model)
        if key not in self.presentations:
            mode = node.cfg.tool_calling
            if mode == "auto":
                cfg = next((m for m in self.resolved.spec.models if m.name == model), None)
                mode = cfg.tool_calling if cfg is not None else "auto"
            template = chat_template(self.backends.get(model)) if mode == "auto" else None
            self.presentations[key] = presentation_for(mode, template)
        return self.presentations[key]

    def close(self) -> None:
        for runner in self.tool_runners.values():
            runner.close()

    def start(self, rec: Rec, node: StageNode) -> None:
        """Create the stage's driver and send its first batch (drivers always ask something first)."""
        c = node.cfg
        rid, row = rec.row["id"], rec.row
        ctx = stage_context(self.contexts.base(row), rec.outputs)
        seeds = functools.partial(stage_seed, self.seed, rid, node.name, rec.attempt)

        def render(role: str) -> list[dict]:
            tpl = node.roles[role]
            rng = random.Random(hash64(self.seed, "role-template", rid, node.name, role))
            choices = {k: rng.choice(v) for k, v in sorted(tpl.choices.items())}
            return tpl.render_messages({**ctx, **choices})

        if isinstance(c, ConversationStage):
            system = c.assistant.system
            if "assistant" in node.roles:
                system = next((m["content"] for m in render("assistant") if m["role"] == "system"), None)
            stop = expressions.parse(c.stop.expr) if c.stop.expr else None
            driver = conversation(ConversationSetup(
                spec_seed=self.seed, rid=rid, stage=node.name, attempt=rec.attempt, user_prompt=tuple(render("user")),
                seeds=seeds, assistant_system=system, user_model=c.user.model or row["model"],
                assistant_model=c.assistant.model or row["model"], turns_min=c.turns.min, turns_max=c.turns.max,
                marker=c.stop.marker, stop=stop))
        else:
            model = c.model or row["model"]
            driver = agent(AgentSetup(
                spec_seed=self.seed, rid=rid, stage=node.name, attempt=rec.attempt, prompt=tuple(render("task")),
                seeds=seeds, tools=tuple(self.p.tools[t] for t in c.tools), model=model,
                max_steps=c.max_steps, max_calls_per_step=c.max_calls_per_step,
                max_result_chars=c.max_result_chars, presentation=self.presentation(node, model)))
        run = Dialog(stage=node.name, epoch=rec.epoch.get(node.name, 0), driver=driver, default_model=row["model"])
        rec.dialogs[node.name] = run
        self._dialog_step(rec, node, run, None)

    def _dialog_step(self, rec: Rec, node: StageNode, run: Dialog, results: list | None) -> None:
        """Give the driver its results (None: start it) and send out the next batch, or finish."""
        try:
            batch = next(run.driver) if results is None else run.driver.send(results)
        except StopIteration as stop:
            self._dialog_done(rec, node, run, stop.value)
            return
        except Exception as exc:  # a driver fault ends this attempt of the stage, not the run
            self._dialog_done(rec, node, run, Trajectory(messages=[], status="error",
                                                         reason=f"{type(exc).__name__}: {exc}"[:300]))
            return
        run.batch, run.results, run.missing = list(batch), [None] * len(batch), len(batch)
        if not batch:
            self._dialog_step(rec, node, run, [])
            return
        rec.waiting[node.name] = f"{len(batch)} turn(s)/tool call(s)"
        for j, action in enumerate(batch):
            if isinstance(action, ModelCall):
                self._send_turn(rec, node, run, j, 1)
            else:
                self._send_tool(rec, node, run, j, action)

    def _send_turn(self, rec: Rec, node: StageNode, run: Dialog, j: int, tries: int) -> None:
        call: ModelCall = run.batch[j]
        model = call.model or run.default_model
        key = (call.role, model)
        if key not in run.sampling:
            c = node.cfg
            override = (c.user.sampling if call.role == "user" else c.assistant.sampling) \
                if isinstance(c, ConversationStage) else (c.sampling if call.role == "assistant" else SamplingOverride())
            run.sampling[key] = sampling_for(self.resolved, node, model, override)
        run.tries = max(run.tries, tries)
        req = dialogue_request(rec.row["id"], node.name, rec.attempt, call.tag, tries, list(call.messages),
                               run.sampling[key], call.seed, call.json_schema, call.tools)
        self._submit_request(Pending(rec, node.name, run.epoch, j, tries, model, req,
                                     {"dialog": run, "schema": call.json_schema}))

    def turn_landed(self, pend: Pending, res: Result) -> None:
        run: Dialog = pend.extra["dialog"]
        answer = classify(res, pend.extra["schema"] is not None, None, 0)
        node = self.p.nodes[pend.stage]
        called = bool(res.meta.get("tool_calls")) and not res.error  # a server's tool calls: no text, not empty
        if not called and pend.tries <= self.retries and retryable(answer.status, pend.extra["schema"],
                                                                   pend.request.sampling.max_tokens):
            self._send_turn(pend.rec, node, run, pend.sample, pend.tries + 1)
            return
        self._dialog_result(pend.rec, node, run, pend.sample, res)

    def _send_tool(self, rec: Rec, node: StageNode, run: Dialog, j: int, call: ToolCall) -> None:
        rec.busy += 1
        fut = self._tool_runner(node).submit(call)
        token = (rec, node.name, run, j)
        fut.add_done_callback(lambda f: self._post(("tool", token, f)))

    def _tool_runner(self, node: StageNode) -> ToolRunner:
        runner = self.tool_runners.get(node.name)
        if runner is None:
            c: AgentStage = node.cfg
            names = list(c.tools) + ([c.expect.tool] if c.expect is not None and c.expect.tool else [])
            runner = ToolRunner([self.p.tools[n] for n in dict.fromkeys(names)], self.resolved.spec.project_root,
                                timeout=c.tool_timeout, max_result_chars=c.max_result_chars,
                                memory_mb=c.tool_memory_mb,
                                import_paths=verify.project_paths(self.resolved.spec.base_dir))
            self.tool_runners[node.name] = runner
        return runner

    def tool_done(self, token: tuple, fut: concurrent.futures.Future) -> None:
        rec, name, run, j = token
        rec.busy -= 1
        node = self.p.nodes[name]
        try:
            res = fut.result()
        except Exception as exc:  # the runner survives every tool failure; this is a runner fault
            call = run.batch[j] if j >= 0 else None
            res = ToolResult(getattr(call, "call_id", "expect"), "", f"{type(exc).__name__}: {exc}"[:300])
        if self._current(rec, run):
            if j < 0:  # the expected value of an agent's final answer
                self._agent_checked(rec, node, run, res)
            else:
                self._dialog_result(rec, node, run, j, res)
        self._live_check(rec)

    def _current(self, rec: Rec, run: Dialog) -> bool:
        """Whether a landed result belongs to the record's live run of its stage (not a reset one)."""
        return (not rec.final and rec.dialogs.get(run.stage) is run and run.epoch == rec.epoch.get(run.stage, 0)
                and run.stage in rec.started)

    def _dialog_result(self, rec: Rec, node: StageNode, run: Dialog, j: int, result: Any) -> None:
        run.results[j] = result
        run.missing -= 1
        if run.missing == 0:
            rec.waiting.pop(node.name, None)
            self._dialog_step(rec, node, run, list(run.results))

    def _dialog_done(self, rec: Rec, node: StageNode, run: Dialog, traj: Trajectory) -> None:
        run.trajectory = traj
        c = node.cfg
        if isinstance(c, AgentStage) and not traj.failed:
            ctx = stage_context(self.contexts.base(rec.row), rec.outputs)
            e = c.expect
            if e is not None and e.tool:
                try:
                    args = {k: render_text(v, ctx) if isinstance(v, str) else v for k, v in e.arguments.items()}
                except Exception as exc:  # noqa: BLE001 - e.g. a JSON key the earlier answer lacks
                    self._dialog_finish(rec, node, run, verify.Verdict(False, f"expect: cannot render: {exc}"[:300]))
                    return
                rec.waiting[node.name] = f"expect.tool {e.tool}"
                self._send_tool(rec, node, run, -1, ToolCall("expect", e.tool, json.dumps(args)))
                return
            expected = None
            if e is not None:
                try:
                    expected = render_text(e.value, ctx)
                except Exception as exc:  # noqa: BLE001
                    self._dialog_finish(rec, node, run, verify.Verdict(False, f"expect: cannot render: {exc}"[:300]))
                    return
            self._agent_checked(rec, node, run, expected)
            return
        self._dialog_finish(rec, node, run, None)

    def _agent_checked(self, rec: Rec, node: StageNode, run: Dialog, expected: Any) -> None:
        """Verify a finished agent trajectory (`expected`: a value, or the expect tool's ToolResult)."""
        rec.waiting.pop(node.name, None)
        c: AgentStage = node.cfg
        if expected is not None and not isinstance(expected, str):  # a ToolResult
            if expected.error:
                self._dialog_finish(rec, node, run, verify.Verdict(False, f"expect.tool {c.expect.tool} failed: "
                                                                          f"{expected.error}"[:300]))
                return
            expected = expected.content
        how = c.expect.extract if c.expect is not None else "text"
        v = verify_trajectory(run.trajectory, {t: self.p.tools[t] for t in c.tools}, expected,
                              functools.partial(verify.extract_answer, how=how), c.max_steps, c.allow_failed_calls)
        self._dialog_finish(rec, node, run, v)

    def _dialog_finish(self, rec: Rec, node: StageNode, run: Dialog, verdict: Any) -> None:
        traj: Trajectory = run.trajectory
        view = traj.view()
        view["model"] = getattr(node.cfg, "model", None) or run.default_model
        status, reason = traj.status, traj.reason
        if verdict is not None:
            view.update({"passed": verdict.passed, "answer": verdict.answer, "expected": verdict.majority})
            if verdict.passed:
                status = "truncated" if traj.status == "truncated" else "ok"
            else:
                status = traj.status if traj.failed or traj.status == "tool_error" else "rejected"
                reason = verdict.reason
        view["status"] = status
        final = traj.messages[-1] if traj.messages and traj.messages[-1].get("role") == "assistant" else None
        before = traj.messages[:-1] if final is not None else traj.messages
        last = traj.turns[-1] if traj.turns else None
        out = StageOut(status=status, attempt=rec.attempt, view=view, reason=reason, model=view["model"],
                       tries=run.tries, prompt_tokens=traj.prompt_tokens, completion_tokens=traj.completion_tokens,
                       messages=[{"role": m["role"], "content": m.get("content") or ""} for m in before],
                       completion=traj.final_answer, finish_reason=last.finish_reason if last else None,
                       columns=traj.columns())
        rec.outputs[node.name] = out
        if out.failed:
            self._reject_stage(rec, node, f"{node.name}: {reason or status}", status)
        else:
            self._advance_rec(rec)
