"""The execution core: one continuous scheduler for every spec (a single-stage spec is a one-node
pipeline, `dag.single_stage`).

Each model has one `RequestFeed` and one thread consuming `backend.stream(feed)`; checks (verify
functions, regexes, schemas) run in a small worker pool (`checks.CheckRunner`). Both report back as
events on one queue.
The scheduler thread owns every record's state: when an answer lands it is written to the request
cache at once (a crash loses only requests in flight), its stage settles, and the record's next
stages (or a retry, or a regeneration) go straight into the feeds, so the engines never wait for a
whole stage to finish. Requests already in the cache are answered from it without reaching a model.

Liveness, by construction:
- a record is open only while it has work outstanding (a request in flight, a cached answer
  queued, a check running); when its last piece of work settles and the record is still open,
  it is ended with status `error` and the stages it was waiting on, never left waiting;
- a rejection resets exactly the regenerated stage and what depends on it: each reset bumps that
  stage's epoch, and only answers of a stage's current epoch are used, so an independent branch in
  flight (a judge beside the rejected answer) keeps its answer;
- records are read in as earlier ones end (`max_open`), so memory follows the records in progress,
  not the plan;
- a conversation or agent stage is a driver coroutine (generator.engine.dialogue) run by
  `dialogue_driver.DialogueDriver`: each batch it yields goes out at once (model turns on the same
  feeds, tool calls on a `ToolRunner`, each counted in `busy`), and the driver is sent the batch's
  results when the last one lands;
- a watchdog turns a silent stall (no event for `stall_timeout` seconds) into one line naming a
  waiting record and stage.

Here: the loop, and a record's stage flow (admit, advance, reject, decontamination verdicts, the
liveness guard). Its collaborators: `request_flow.RequestFlow` (cache lookups, the budget gate,
the feeds, storing answers), `model_stages.ModelStages` (generate and judge stages),
`record_rows.RecordRows` (the rows a record hands out), `liveness` (what a stuck record or a
stall says), `checks.CheckRunner` and `dialogue_driver.DialogueDriver`.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

from generator.core.backend import Backend, Result
from generator.core.errors import TemplateError
from generator.engine.pipeline import verify
from generator.engine.pipeline.checks import DECONTAM_CHECK, CheckRunner
from generator.engine.pipeline.context import Contexts, StageOut
from generator.engine.pipeline.dag import DIALOGUE_KINDS, Pipeline, StageNode
from generator.engine.pipeline.decontam import DECONTAM
from generator.engine.pipeline.dialogue_driver import DialogueDriver
from generator.engine.pipeline.liveness import StallError, stall_error, stuck_reason
from generator.engine.pipeline.model_stages import ModelStages
from generator.engine.pipeline.record_rows import RecordRows
from generator.engine.pipeline.request_flow import RequestFlow
from generator.engine.pipeline.state import Pending, Rec
from generator.engine.pipeline.thinking import Thinking
from generator.engine.planner import Resolved
from generator.engine.request_cache import RequestCache

__all__ = ["PipelineScheduler", "StallError"]

log = logging.getLogger(__name__)


class PipelineScheduler:
    # how long the end of a run waits for each stream thread once its feed is closed (a backend's
    # stream returns when its feed is exhausted; one that does not is named, not waited on forever)
    JOIN_TIMEOUT_S = 60.0

    def __init__(self, pipeline: Pipeline, resolved: Resolved, backends: dict[str, Backend],
                 cache: RequestCache | None, retries: int, on_rows: Callable[[dict, list[dict]], None],
                 functions: verify.FunctionRunner | None = None, stall_timeout: float | None = None,
                 max_open: int = 4096, check_workers: int = 2, gate: Any = None,
                 on_flight: Callable[[int], None] | None = None):
        self.p = pipeline
        self.gate = gate  # engine.budget.Gate: asked before each request is sent (None: no budget)
        self.resolved = resolved
        self.backends = backends
        self.stall_timeout = stall_timeout
        self.max_open = max(1, max_open)
        self.contexts = Contexts(resolved)
        self.stuck = 0  # records ended because nothing was left to wait for (should stay 0)
        self._events: queue.Queue = queue.Queue()
        self._open: dict[str, Rec] = {}
        thinking = Thinking(resolved.spec.models, {n: node.cfg for n, node in pipeline.nodes.items()})
        self.flow = RequestFlow(backends, cache, gate, thinking, post=self._events.put, landed=self._landed,
                                on_flight=on_flight)
        self.rows = RecordRows(pipeline, on_rows, self._open)
        self.stages = ModelStages(pipeline, resolved, self.contexts, retries, submit=self.flow.submit,
                                  reject=self._reject, advance=self._advance)
        self.checks = CheckRunner(pipeline, resolved, functions, check_workers, post=self._events.put,
                                  live=self._live, reject=self._reject, advance=self._advance,
                                  decontaminated=self._decontaminated)
        self.decon = pipeline.decontam
        self.dialogues = DialogueDriver(pipeline, resolved, self.contexts, retries, backends,
                                        submit=self.flow.submit, post=self._events.put, live=self._live,
                                        reject=self._reject, advance=self._advance)

    # what the executor reports: model calls, cache hits, requests the gate kept back
    @property
    def model_calls(self) -> int:
        return self.flow.model_calls

    @property
    def cache_hits(self) -> int:
        return self.flow.cache_hits

    @property
    def parked(self) -> int:
        return self.flow.parked

    # ------------------------------------------------------------ the loop
    def run(self, rows: Iterable[dict]) -> None:
        source: Iterator[dict] = iter(rows)
        exhausted = False
        threads = [threading.Thread(target=self.flow.pump, args=(m,), daemon=True, name=f"stream-{m}")
                   for m in self.backends]
        try:
            while True:
                while not exhausted and len(self._open) < self.max_open:
                    if self.gate is not None and self.gate.closed is not None:
                        exhausted = True  # no new record starts once the gate has closed
                        break
                    row = next(source, None)
                    if row is None:
                        exhausted = True
                        break
                    self._admit(row)
                if not threads[0].is_alive() and threads[0].ident is None:
                    for t in threads:  # the engines start on a full first batch, not one request
                        t.start()
                self.flow.drain()
                if not self._open:
                    if exhausted:
                        break
                    continue
                if self._parked_only():
                    break  # the gate closed: what is left waits on requests it will not send
                self._handle(self._next_events())
        finally:
            self.flow.close_feeds()
            for t in threads:
                if t.ident is not None:
                    t.join(timeout=self.JOIN_TIMEOUT_S)
                    if t.is_alive():  # a daemon thread: it cannot keep the process alive
                        log.warning("stream thread %s did not end %.0fs after its feed closed; left running "
                                    "(its backend's stream ignores the closed feed)", t.name, self.JOIN_TIMEOUT_S)
            self.checks.close()
            self.dialogues.close()
            # answers that landed after the loop stopped (an error elsewhere) are paid for: keep them
            late = []
            while True:
                try:
                    kind, _, payload = self._events.get_nowait()
                except queue.Empty:
                    break
                if kind == "result":
                    late.append(payload)
            if late:
                self.flow.store(late)

    def _parked_only(self) -> bool:
        """The gate has closed and every open record waits only on requests it kept back."""
        if self.gate is None or self.gate.closed is None:
            return False
        self.flow.release_held()  # closed from outside (a hopeless target): the held requests are parked
        return all(rec.busy <= rec.parked for rec in self._open.values())

    def abort(self, exc: BaseException) -> None:
        """Stop the run with `exc`, raised on the scheduler thread (callable from any thread)."""
        self._events.put(("error", "abort", exc))

    def _admit(self, row: dict) -> None:
        cell = self.contexts.cells.get(row["topic_id"])
        rec = Rec(row=row, seed_id=getattr(cell, "seed_id", None) or None)
        self._open[row["id"]] = rec
        self._advance(rec)
        self._live(rec)

    def _next_events(self) -> list[tuple[str, Any, Any]]:
        try:
            first = self._events.get(timeout=self.stall_timeout)
        except queue.Empty:
            raise stall_error(self.stall_timeout, self.flow.pending, self._open.values()) from None
        batch = [first]
        while True:  # take everything that landed meanwhile: one cache transaction for all
            try:
                batch.append(self._events.get_nowait())
            except queue.Empty:
                return batch

    def _handle(self, batch: list[tuple[str, Any, Any]]) -> None:
        results = [payload for kind, _, payload in batch if kind == "result"]
        self.flow.store(results)  # answers that landed are kept even when a stream failed
        for kind, who, payload in batch:  # in arrival order: what landed before a failure still counts
            if kind == "error":
                raise payload
            if kind == "end":
                raise RuntimeError(f"the {who} stream ended with {len(self._open)} records unfinished")
            if kind == "result":
                pend = self.flow.pending.pop(payload.id, None)
                if pend is not None:
                    self._landed(pend, payload)
            elif kind == "check":
                self.checks.checked(who, payload)
            elif kind == "tool":
                self.dialogues.tool_done(who, payload)
        if results:
            self.flow.report_flight()
        self.flow.drain()
        if self.gate is not None:
            self.flow.release_held()

    # ------------------------------------------------------------ liveness
    def _live(self, rec: Rec) -> None:
        """A record with nothing outstanding must be final; if it is not, end it now."""
        if rec.final or rec.busy:
            return
        self.stuck += 1
        stage, reason = stuck_reason(self.p, rec)
        self.rows.emit(rec, "error", stage, reason, final=True)

    def _landed(self, pend: Pending, res: Result) -> None:
        rec = pend.rec
        rec.busy -= 1
        if not rec.final and pend.epoch == rec.epoch.get(pend.stage, 0) and pend.stage in rec.started:
            if "dialog" in pend.extra:
                self.dialogues.turn_landed(pend, res)
            else:
                self.stages.settle(pend, res)
        # else: an answer for a stage that a rejection reset meanwhile: paid (cached), not used
        self._live(rec)

    # ------------------------------------------------------------ stage flow
    def _advance(self, rec: Rec) -> None:
        # a filter settles inline and may open a stage listed before it (one gated on it): go round
        # again until nothing more can start
        while self._advance_once(rec):
            pass
        if not rec.final and len(rec.outputs) == len(self.p.nodes):
            if self.decon is not None and rec.decon_attempt != rec.attempt:
                if DECONTAM_CHECK not in rec.waiting:
                    self.checks.decontaminate(rec)
                return
            out = rec.outputs[self.p.output]
            status = "truncated" if out.status == "truncated" else "ok"
            self.rows.emit(rec, status, list(self.p.nodes)[-1], None, final=True)

    def _advance_once(self, rec: Rec) -> bool:
        """Start every stage whose inputs exist; True when a filter settled (so more may start)."""
        settled = False
        for name, node in self.p.nodes.items():
            if rec.final:
                return False
            if name in rec.started or not self.p.waits_for(name) <= set(rec.outputs):
                continue
            rec.started.add(name)
            if node.kind in ("generate", "judge", *DIALOGUE_KINDS):
                try:
                    (self.dialogues.start if node.kind in DIALOGUE_KINDS else self.stages.start)(rec, node)
                except TemplateError as exc:  # e.g. `problem.json.question` of an answer without it
                    rec.outputs[name] = StageOut(status="error", attempt=rec.attempt, view={"status": "error"},
                                                 reason=f"cannot render: {exc.message}")
                    self._reject(rec, node, f"{name}: cannot render: {exc.message}", "error")
                    return False
                continue
            if node.kind == "filter":
                if not self.checks.filter(rec, node):
                    return False  # rejected: _reject already advanced the new attempt (or ended it)
                settled = True
                continue
            done = self.checks.start(rec, node)
            if done is None:
                return False  # rejected at once: _reject already went on
            settled = settled or done
        return settled

    def _decontaminated(self, rec: Rec, hits: list[dict]) -> None:
        """The decontamination verdict of the record's attempt: flag, reject, or regenerate."""
        rec.decon_attempt = rec.attempt
        rec.contamination = hits or None
        if not hits or self.decon.cfg.action == "flag":
            self._advance(rec)
            return
        rule = self.decon.rule
        node = self.p.nodes[rule.regenerate if rule is not None else self.p.output]
        self._reject(rec, node, self.decon.reason(hits), "rejected", rule=rule, decided_by=DECONTAM)

    def _reject(self, rec: Rec, node: StageNode, reason: str, status: str, rule: Any = "stage",
                decided_by: str | None = None) -> None:
        """A failed stage (or, with `rule` and `decided_by`, a decontamination hit): regenerate
        `rule.regenerate` while attempts are left (the stage's own `on_reject` by default), else end."""
        rule = node.cfg.on_reject if rule == "stage" else rule
        decided_by = decided_by or node.name
        if rule is not None and rec.attempt < rule.max_attempts:
            self.rows.emit(rec, "rejected", decided_by, reason, final=False)
            rec.attempt += 1
            rec.contamination = None
            # exactly the regenerated stage and what depends on it start over; their answers still in
            # flight belong to the old epoch and are dropped, every other stage keeps its work
            for s in {rule.regenerate} | self.p.descendants[rule.regenerate]:
                rec.outputs.pop(s, None)
                rec.started.discard(s)
                rec.samples.pop(s, None)
                rec.waiting.pop(s, None)
                rec.epoch[s] = rec.epoch.get(s, 0) + 1
            self._advance(rec)
            return
        self.rows.emit(rec, status, decided_by, reason, final=True)
