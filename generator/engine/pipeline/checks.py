"""Runs the scheduler's checks: filter expressions and answer agreement settle inline on the
scheduler thread; the other verify checks (JSON schema, regex, user functions) run in a small
worker pool and their verdict comes back to the scheduler as a `check` event on its queue, so
the scheduler thread still settles every stage.

The scheduler owns every record; this module reaches it only through the callbacks it is given
(post an event, reject or advance a record, end a record left with nothing to wait for), like
`dialogue_driver.DialogueDriver`.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any, Callable

import jinja2

from generator.config.stages import VerifyStage
from generator.core.errors import SynthgenError
from generator.engine.dialogue import transcript
from generator.engine.pipeline import expressions, samples, verify
from generator.engine.pipeline.context import Contexts, StageOut, render_text, stage_context
from generator.engine.pipeline.dag import Pipeline, StageNode
from generator.engine.pipeline.state import Rec
from generator.engine.planner import Resolved

DECONTAM_CHECK = "decontaminate"  # the waiting label and token name of a record's decontamination check
log = logging.getLogger(__name__)


def gym_check(text: str | None, cell: Any, how: str, min_score: float) -> verify.Verdict:
    """The reasoning-gym task's own score of the final answer (taken by `how`) for the record's problem."""
    from generator.library import reasoning_gym

    answer = verify.extract_answer(text, how)
    if answer is None:
        return verify.Verdict(False, "no final answer found in the solution")
    got = reasoning_gym.score(cell, answer)
    if got.reason:
        return verify.Verdict(False, got.reason, answer=answer, reference=got.expected or None)
    passed = got.score >= min_score
    return verify.Verdict(passed, f"score {got.score:g} (needs {min_score:g}): answer {answer[:60]!r}, expected "
                          f"{got.expected[:60]!r}", answer=answer, reference=got.expected)


class CheckRunner:
    def __init__(self, pipeline: Pipeline, resolved: Resolved, functions: verify.FunctionRunner | None,
                 workers: int, *, post: Callable[[tuple], None], live: Callable[[Rec], None],
                 reject: Callable[[Rec, StageNode, str, str], None], advance: Callable[[Rec], None],
                 decontaminated: Callable[[Rec, list[dict]], None] | None = None):
        self.p = pipeline
        self.resolved = resolved
        # user verify functions: the caller's (it closes them), or made here on first use and closed
        # by `close`; the worker threads ask for it at once, so it is made under a lock (two would
        # each start a worker process, and the one not kept would never be closed)
        self.functions = functions
        self._functions_lock = threading.Lock()
        self._own_functions = False
        self.filters = {n: expressions.parse(node.cfg.expr) for n, node in pipeline.nodes.items()
                        if node.kind == "filter"}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="checks")
        self._post = post                # a ("check", token, future) event for the scheduler thread
        self._live_check = live          # end the record if nothing is left outstanding
        self._reject_stage = reject      # a failed stage: regenerate or end the record
        self._advance_rec = advance      # a settled stage: start what waited on it
        self._decontaminated = decontaminated  # a decontamination verdict: keep, reject or regenerate
        self._contexts: Contexts | None = None  # template contexts for `reference:` (made on first use)
        self._cells: dict[str, Any] | None = None  # topic cells by id, for check: reasoning_gym (first use)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._own_functions and self.functions is not None:
            self.functions.close()

    def filter(self, rec: Rec, node: StageNode) -> bool:
        """A filter stage, settled at once; False when it rejected the record (regenerated or ended)."""
        ok = self.filters[node.name].passes(self._env(rec))
        reason = None if ok else f"filter false: {node.cfg.expr}"
        out = StageOut(status="passed" if ok else "rejected", attempt=rec.attempt,
                       view={"passed": ok, "reason": reason, "status": "passed" if ok else "rejected"},
                       reason=reason)
        return self._finish(rec, node, out)

    def start(self, rec: Rec, node: StageNode) -> bool | None:
        """A verify stage: answer agreement is settled at once (a few microseconds; True when it
        passed, None when it rejected); the other checks run in the worker pool and their verdict
        comes back as a `check` event (False: not settled yet)."""
        c: VerifyStage = node.cfg
        args = self._args(rec, c)
        if c.check in ("agreement", "reference"):
            return self._finish(rec, node, self._out(rec, self._run(c, args))) or None
        token = (rec, node.name, rec.epoch.get(node.name, 0))
        rec.busy += 1
        rec.waiting[node.name] = f"check {c.check}"
        fut = self._pool.submit(self._run, c, args)
        fut.add_done_callback(lambda f: self._post(("check", token, f)))
        return False

    def decontaminate(self, rec: Rec) -> None:
        """Match the attempt's texts against the benchmark index on a worker; the hits come back as
        a `check` event (the scheduler thread only gathers the texts)."""
        decon = self.p.decontam
        token = (rec, DECONTAM_CHECK, rec.attempt)
        rec.busy += 1
        rec.waiting[DECONTAM_CHECK] = "decontamination check"
        fut = self._pool.submit(decon.check, decon.texts(rec))
        fut.add_done_callback(lambda f: self._post(("check", token, f)))

    def checked(self, token: tuple, fut: concurrent.futures.Future) -> None:
        """A `check` event, on the scheduler thread: settle the stage unless a rejection reset it meanwhile."""
        rec, name, epoch = token
        rec.busy -= 1
        rec.waiting.pop(name, None)
        if name == DECONTAM_CHECK:
            if not rec.final and epoch == rec.attempt:
                try:
                    hits = fut.result()
                except Exception as exc:  # a broken index must not pass data silently: the run stops
                    raise RuntimeError(f"decontamination check failed: {type(exc).__name__}: {exc}") from exc
                self._decontaminated(rec, hits)
            self._live_check(rec)
            return
        if not rec.final and epoch == rec.epoch.get(name, 0) and name in rec.started:
            try:
                v = fut.result()
            except Exception as exc:  # a check that breaks rejects the record, the run goes on
                v = verify.Verdict(False, f"check failed: {type(exc).__name__}: {exc}"[:300])
            if self._finish(rec, self.p.nodes[name], self._out(rec, v)):
                self._advance_rec(rec)
        self._live_check(rec)

    def _args(self, rec: Rec, c: VerifyStage, text: str | None = None) -> Any:
        """The check's arguments (`text`: one sample's answer in place of the target's; with
        `keep:`, a list of arguments, one per sample)."""
        if c.keep is not None and text is None:
            return [self._args(rec, c, t) for t in samples.texts(rec.outputs[c.target])]
        target = rec.outputs[c.target].view
        answer = target.get("text") if text is None else text
        if c.check == "agreement":
            return answer, rec.outputs[c.against].view.get("texts") or []
        if c.check == "reference":
            return answer, self._reference(rec, c)
        if c.check == "reasoning_gym":
            return answer, self._cell(rec)
        if c.check == "function":
            env = self._env(rec)
            env[c.target] = {**env[c.target], "text": answer}
            return (verify.to_jsonable(env),)
        if self.p.nodes[c.name].judged == "transcript":  # regex, json_schema: the turns `scope` picks
            messages = target.get("messages") or []
            if c.scope == "transcript":
                failed = transcript.failed_call_ids(rec.outputs[c.target].columns.get("tool_calls"))
                return (transcript.render(messages, failed=failed).text,)
            turns = transcript.assistant_turns(messages)
            return (turns if c.scope == "every" else turns[-1:] or [""],)
        return (answer,)

    def _reference(self, rec: Rec, c: VerifyStage) -> str | None:
        if self._contexts is None:
            self._contexts = Contexts(self.resolved)
        try:
            return render_text(c.reference, stage_context(self._contexts.base(rec.row), rec.outputs))
        except (jinja2.TemplateError, SynthgenError) as exc:  # e.g. an answer without the named key: no reference
            log.debug("reference of %s: %s", rec.row.get("id"), exc)
            return None

    def _cell(self, rec: Rec) -> Any:
        """The record's topic cell (a reasoning-gym problem for check: reasoning_gym)."""
        if self._cells is None:
            self._cells = {c.id: c for c in self.resolved.cells}
        return self._cells.get(rec.row.get("topic_id"))

    def _run(self, c: VerifyStage, args: Any) -> verify.Verdict:
        if isinstance(args, list):  # `keep:`: every sample apart
            return samples.combine(c.keep, [self._run_one(c, a) for a in args], c.min_correct)
        return self._run_one(c, args)

    def _run_one(self, c: VerifyStage, args: tuple) -> verify.Verdict:
        if c.check == "reference":
            return verify.reference_check(args[0], args[1], c.extract)
        if c.check == "reasoning_gym":
            return gym_check(args[0], args[1], c.extract, c.min_score)
        if c.check == "agreement":
            return verify.agreement(args[0], args[1], c.extract, c.min_agree)
        if c.check == "function":
            return self.function_runner()(c.function, args[0], c.timeout)
        if isinstance(args[0], list):  # assistant turns: every one must pass
            return verify.every_turn(args[0], lambda text: self._run(c, (text,)), last=c.scope != "every")
        if c.check == "json_schema":
            return verify.json_schema_check(args[0], c.json_schema)
        return verify.regex_check(args[0], c.pattern)

    def function_runner(self) -> verify.FunctionRunner:
        """The runner of user verify functions: one per CheckRunner, whichever thread asks first."""
        with self._functions_lock:
            if self.functions is None:
                self.functions = verify.FunctionRunner(self.resolved.spec.base_dir)
                self._own_functions = True
            return self.functions

    @staticmethod
    def _out(rec: Rec, v: verify.Verdict) -> StageOut:
        status = "passed" if v.passed else "rejected"
        view = {"passed": v.passed, "agree": v.agree, "answer": v.answer, "majority": v.majority,
                "reason": v.reason, "status": status}
        if v.reference is not None:
            view["reference"] = v.reference
        if v.verdicts is not None:
            view.update({"verdicts": v.verdicts, "pass_rate": v.pass_rate, "kept": v.kept})
        return StageOut(status=status, attempt=rec.attempt, reason=None if v.passed else v.reason, view=view)

    def _finish(self, rec: Rec, node: StageNode, out: StageOut) -> bool:
        """Record a check's outcome; False when it rejected the record (regenerated or ended)."""
        rec.outputs[node.name] = out
        if out.failed:
            self._reject_stage(rec, node, out.reason or f"{node.name} rejected", "rejected")
            return False
        return True

    @staticmethod
    def _env(rec: Rec) -> dict[str, Any]:
        """What a filter expression or a verify function sees of a record."""
        r = rec.row
        env: dict[str, Any] = {k: r.get(k) for k in ("topic", "subtopic", "level", "topic_id", "template", "model",
                                                       "generation")}
        env.update({"seed_id": rec.seed_id, "attempt": rec.attempt})
        env.update({name: out.view for name, out in rec.outputs.items()})
        return env
