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
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from generator.config.stages import GenerateStage, JudgeStage
from generator.core.backend import Backend, Request, RequestFeed, Result, Sampling
from generator.core.errors import SynthgenError, TemplateError
from generator.core.redact import scrub_text
from generator.engine.pipeline import verify
from generator.engine.pipeline.checks import DECONTAM_CHECK, CheckRunner
from generator.engine.pipeline.context import (Contexts, StageOut, judge_messages, make_request, render_stage,
                                               sampling_for, stage_context, stage_seed)
from generator.engine.pipeline.dag import DIALOGUE_KINDS, Pipeline, StageNode
from generator.engine.pipeline.decontam import DECONTAM, row_value
from generator.engine.pipeline.dialogue_driver import DialogueDriver
from generator.engine.pipeline.judge import read_verdict
from generator.engine.pipeline.lineage import attempt_row, single_row
from generator.engine.pipeline.samples import expand
from generator.engine.pipeline.state import Pending, Rec
from generator.engine.pipeline.thinking import Thinking, forced, sample_columns
from generator.engine.planner import Resolved
from generator.engine.requests import classify, make_request as entry_request, retryable
from generator.engine.request_cache import RequestCache

log = logging.getLogger(__name__)


class StallError(SynthgenError):
    """No answer and no check result for `stall_timeout` seconds while records wait on them."""


class PipelineScheduler:
    # how long the end of a run waits for each stream thread once its feed is closed (a backend's
    # stream returns when its feed is exhausted; one that does not is named, not waited on forever)
    JOIN_TIMEOUT_S = 60.0

    def __init__(self, pipeline: Pipeline, resolved: Resolved, backends: dict[str, Backend],
                 cache: RequestCache | None, retries: int, on_rows: Callable[[dict, list[dict]], None],
                 functions: verify.FunctionRunner | None = None, stall_timeout: float | None = None,
                 max_open: int = 4096, check_workers: int = 2, gate: Any = None):
        self.p = pipeline
        self.gate = gate  # engine.budget.Gate: asked before each request is sent (None: no budget)
        self.single = pipeline.single
        self.resolved = resolved
        self.seed = resolved.spec.seed
        self.backends = backends
        self.cache = cache
        self.retries = retries
        self.on_rows = on_rows  # (plan row, every attempt row of the record) once it is final
        self.stall_timeout = stall_timeout
        self.max_open = max(1, max_open)
        self.contexts = Contexts(resolved)
        self.thinking = Thinking(resolved.spec.models, {n: node.cfg for n, node in pipeline.nodes.items()})
        self.renderers = {t.name: t.renderer for node in pipeline.nodes.values() for t, _ in node.templates}
        self.schemas = {t.name: t.output_schema for node in pipeline.nodes.values() for t, _ in node.templates}
        self.model_calls = 0
        self.cache_hits = 0
        self.stuck = 0  # records ended because nothing was left to wait for (should stay 0)
        self.parked = 0  # requests the gate kept back (their records stay unfinished)
        self._held: list[Pending] = []  # requests waiting for the gate (answers in flight may free room)
        self._pending: dict[str, Pending] = {}
        self._ready: collections.deque[tuple[Pending, Result]] = collections.deque()
        self._sampling: dict[tuple[str, str], Sampling] = {}  # (stage, model) -> its sampling
        self._lookups: list[Pending] = []  # submitted, not yet looked up in the cache (one query for all)
        self._events: queue.Queue = queue.Queue()
        self._feeds = {m: RequestFeed() for m in backends}
        self._rows: dict[str, list[dict]] = {}
        self._open: dict[str, Rec] = {}
        self.checks = CheckRunner(pipeline, resolved, functions, check_workers, post=self._events.put,
                                  live=self._live, reject=self._reject, advance=self._advance,
                                  decontaminated=self._decontaminated)
        self.decon = pipeline.decontam
        self.dialogues = DialogueDriver(pipeline, resolved, self.contexts, retries, backends,
                                        submit=self._submit, post=self._events.put, live=self._live,
                                        reject=self._reject, advance=self._advance)

    # ------------------------------------------------------------ the loop
    def run(self, rows: Iterable[dict]) -> None:
        source: Iterator[dict] = iter(rows)
        exhausted = False
        threads = [threading.Thread(target=self._pump, args=(m,), daemon=True, name=f"stream-{m}")
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
                self._drain_ready()
                if not self._open:
                    if exhausted:
                        break
                    continue
                if self._parked_only():
                    break  # the gate closed: what is left waits on requests it will not send
                self._handle(self._next_events())
        finally:
            for feed in self._feeds.values():
                feed.close()
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
                self._store(late)

    def _parked_only(self) -> bool:
        """The gate has closed and every open record waits only on requests it kept back."""
        if self.gate is None or self.gate.closed is None:
            return False
        self._release_held()  # closed from outside (a hopeless target): the held requests are parked
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
            raise self._stall() from None
        batch = [first]
        while True:  # take everything that landed meanwhile: one cache transaction for all
            try:
                batch.append(self._events.get_nowait())
            except queue.Empty:
                return batch

    def _handle(self, batch: list[tuple[str, Any, Any]]) -> None:
        results = [payload for kind, _, payload in batch if kind == "result"]
        self._store(results)  # answers that landed are kept even when a stream failed
        for kind, who, payload in batch:  # in arrival order: what landed before a failure still counts
            if kind == "error":
                raise payload
            if kind == "end":
                raise RuntimeError(f"the {who} stream ended with {len(self._open)} records unfinished")
            if kind == "result":
                pend = self._pending.pop(payload.id, None)
                if pend is not None:
                    self._landed(pend, payload)
            elif kind == "check":
                self.checks.checked(who, payload)
            elif kind == "tool":
                self.dialogues.tool_done(who, payload)
        self._drain_ready()
        if self.gate is not None:
            self._release_held()

    def _pump(self, model: str) -> None:
        try:
            for res in self.backends[model].stream(self._feeds[model]):
                self._events.put(("result", model, res))
        except BaseException as exc:  # surfaced on the scheduler thread
            self._events.put(("error", model, exc))
            return
        self._events.put(("end", model, None))

    def _store(self, results: list[Result]) -> None:
        self.model_calls += len(results)
        if self.gate is not None:
            for res in results:
                pend = self._pending.get(res.id)
                if pend is not None:
                    self.gate.charge(pend.model, pend.reserve, res.prompt_tokens, res.completion_tokens)
        if self.cache is None:
            return
        items = []
        with self.cache.lock:  # counted and stored together: a timed publish never splits them
            for res in results:
                pend = self._pending.get(res.id)
                if pend is None:
                    continue
                failed = res.finish_reason == "error"  # counted, but not an answer worth replaying
                self.cache.meter.answered(pend.model, pend.stage, res.prompt_tokens, res.completion_tokens,
                                          error=failed, reasoning_tokens=res.reasoning_tokens)
                if not failed:
                    items.append((pend.key, res.__dict__, pend.model, pend.stage))
            self.cache.put_many(items)

    def _drain_ready(self) -> None:
        """Send what was submitted (cache hits answer at once) until nothing is left to settle."""
        while self._lookups or self._ready:
            if self._lookups:
                self._flush_lookups()
            while self._ready:
                pend, res = self._ready.popleft()
                self._landed(pend, res)

    # ------------------------------------------------------------ liveness
    def _live(self, rec: Rec) -> None:
        """A record with nothing outstanding must be final; if it is not, end it now."""
        if rec.final or rec.busy:
            return
        self.stuck += 1
        unstarted = [n for n in self.p.nodes if n not in rec.started]
        waits = {n: sorted(self.p.waits_for(n) - set(rec.outputs)) for n in unstarted}
        detail = "; ".join(f"{n} waits for {', '.join(w) or 'nothing'}" for n, w in waits.items()) or "no stage left"
        self._emit(rec, "error", unstarted[0] if unstarted else self.p.output,
                   f"scheduler: record has nothing in flight and is not finished ({detail})", final=True)

    def _stall(self) -> StallError:
        now = time.time()
        oldest = min(self._pending.values(), key=lambda p: p.sent, default=None)
        if oldest is not None:
            return StallError(
                f"no answer for {self.stall_timeout:g}s: record {oldest.rec.row['id']} waits on stage "
                f"'{oldest.stage}' (model {oldest.model}, sent {now - oldest.sent:.0f}s ago; "
                f"{len(self._pending)} requests in flight); check the model backend, or raise run.stall_timeout")
        rec = next(iter(self._open.values()))
        stage = next(iter(rec.waiting), "?")
        return StallError(f"no progress for {self.stall_timeout:g}s: record {rec.row['id']} waits on "
                          f"{rec.waiting.get(stage, 'a check')} in stage '{stage}'; raise run.stall_timeout "
                          f"or fix that check")

    # ------------------------------------------------------------ requests
    def _submit(self, pend: Pending) -> None:
        pend.rec.busy += 1
        pend.request = self.thinking.dress(pend.request, pend.model, pend.stage)
        pend.key = pend.request.payload_hash(pend.model)
        self._lookups.append(pend)

    def _flush_lookups(self) -> None:
        """Answer the submitted requests the cache holds, and put the rest into their models' feeds,
        one query and one put per model for all of them."""
        batch, self._lookups = self._lookups, []
        hits = self.cache.get_many([p.key for p in batch]) if self.cache is not None else {}
        sends: dict[str, list[Request]] = {}
        now = time.time()
        for pend in batch:
            hit = hits.get(pend.key)
            if hit is not None:
                self.cache_hits += 1
                self.cache.meter.hit(pend.model, pend.stage)
                self._ready.append((pend, Result(**hit)))
                continue
            if self.gate is not None and not self._gated(pend):
                continue
            self._sent(pend, now, sends)
        for model, requests in sends.items():
            self._feeds[model].put_many(requests)

    def _sent(self, pend: Pending, now: float, sends: dict[str, list[Request]]) -> None:
        if self.cache is not None:
            self.cache.meter.submitted(pend.model)
        pend.sent = now
        self._pending[pend.request.id] = pend
        sends.setdefault(pend.model, []).append(pend.request)

    def _gated(self, pend: Pending) -> bool:
        """Whether the budget gate lets `pend` go now; else it waits (held) or, once the gate has
        closed, is kept back for good (parked: its record stays open and unfinished)."""
        req = pend.request
        pend.reserve = self.gate.allow(pend.model, sum(len(str(m.get("content") or "")) for m in req.messages),
                                       req.sampling.max_tokens)
        if pend.reserve is not None:
            return True
        if self.gate.closed is None:
            self._held.append(pend)
        else:
            pend.rec.parked += 1
            self.parked += 1
        return False

    def _release_held(self) -> None:
        """Answers landed (or the gate closed): send the held requests that now fit, in order."""
        if not self._held:
            return
        held, self._held = self._held, []
        sends: dict[str, list[Request]] = {}
        now = time.time()
        for i, pend in enumerate(held):
            if self.gate.closed is not None:
                pend.rec.parked += 1
                self.parked += 1
            elif self._gated(pend):
                self._sent(pend, now, sends)
            elif self.gate.closed is None:
                self._held.extend(held[i + 1:])  # the first that waits: the rest keep their order
                break
            # else: _gated closed the gate and parked it
        for model, requests in sends.items():
            self._feeds[model].put_many(requests)

    def _start_model_stage(self, rec: Rec, node: StageNode) -> None:
        rid, row = rec.row["id"], rec.row
        rec.samples[node.name] = {}
        extra: dict[str, Any] = {}
        if node.name == self.p.entry:
            messages, model, template = list(row["messages"]), row["model"], row["template"]
            schema = self.schemas.get(template, node.schema())
            sampling = Sampling(row["temperature"], row["top_p"], int(row["max_tokens"]),
                                repetition_penalty=row.get("repetition_penalty"))
            render_seed = int(row["seed"])
        else:
            model = getattr(node.cfg, "model", None) or row["model"]
            sampling = self._sampling.get((node.name, model))
            if sampling is None:
                sampling = self._sampling[(node.name, model)] = sampling_for(self.resolved, node, model)
            render_seed = stage_seed(self.seed, rid, node.name, rec.attempt, 0)
            if isinstance(node.cfg, GenerateStage):
                ctx = stage_context(self.contexts.base(row), rec.outputs)
                tpl, messages = render_stage(node, ctx, self.seed, rid)
                template, schema = tpl.name, tpl.output_schema
            else:
                messages, schema, extra = judge_messages(node, row, rec.outputs, self.seed, rid)
                template = None
        extra.update({"messages": messages, "template": template, "sampling": sampling, "schema": schema,
                      "renderer": self.renderers.get(template) if template else None, "render_seed": render_seed})
        n = node.cfg.n if isinstance(node.cfg, GenerateStage) else 1
        for k in range(n):
            self._send(rec, node, k, 1, model, extra)

    def _send(self, rec: Rec, node: StageNode, sample: int, tries: int, model: str, extra: dict) -> None:
        rid = rec.row["id"]
        if self.single:  # a regenerated attempt (decontamination) gets fresh seeds, attempt 1 the plan's
            req = entry_request(rec.row, tries + (rec.attempt - 1) * (self.retries + 1), self.schemas)
        else:
            if node.name == self.p.entry and rec.attempt == 1 and sample == 0:
                seed = int(rec.row["seed"])  # the plan's seed
            else:
                seed = stage_seed(self.seed, rid, node.name, rec.attempt, sample)
            req = make_request(rid, node.name, rec.attempt, sample, tries, extra["messages"], extra["sampling"],
                               seed, extra["schema"])
        self._submit(Pending(rec, node.name, rec.epoch.get(node.name, 0), sample, tries, model, req, extra))

    def _landed(self, pend: Pending, res: Result) -> None:
        rec = pend.rec
        rec.busy -= 1
        if not rec.final and pend.epoch == rec.epoch.get(pend.stage, 0) and pend.stage in rec.started:
            self._settle(pend, res)
        # else: an answer for a stage that a rejection reset meanwhile: paid (cached), not used
        self._live(rec)

    def _settle(self, pend: Pending, res: Result) -> None:
        rec = pend.rec
        node = self.p.nodes[pend.stage]
        x = pend.extra
        if "dialog" in x:
            self.dialogues.turn_landed(pend, res)
            return
        answer = classify(res, x["schema"] is not None, x["renderer"], x["render_seed"])
        if pend.tries <= self.retries and retryable(answer.status, x["schema"], pend.request.sampling.max_tokens):
            self._send(rec, node, pend.sample, pend.tries + 1, pend.model, x)
            return
        samples = rec.samples[pend.stage]
        samples[pend.sample] = (pend.request, res, answer)
        n = node.cfg.n if isinstance(node.cfg, GenerateStage) else 1
        if len(samples) < n:
            return
        out = self._model_output(rec, node, pend, [samples[k] for k in range(n)])
        rec.outputs[node.name] = out
        if out.failed:
            self._reject(rec, node, f"{node.name}: {out.reason or out.status}", out.status)
        else:
            self._advance(rec)

    def _model_output(self, rec: Rec, node: StageNode, pend: Pending, samples: list) -> StageOut:
        # the stage's answer is its first usable sample (sample 0 when none is)
        first = next((s for s in samples if s[2].usable), samples[0])
        req, res, answer = first
        out = StageOut(status=answer.status, attempt=rec.attempt, view={}, seed=req.sampling.seed,
                       model=pend.model, template=pend.extra["template"],
                       tries=max(int(r.id.rsplit("#", 1)[1]) for r, _, _ in samples),
                       prompt_tokens=sum(r.prompt_tokens for _, r, _ in samples),
                       completion_tokens=sum(r.completion_tokens for _, r, _ in samples),
                       messages=list(pend.extra["messages"]), completion=res.text,
                       finish_reason=res.finish_reason, error=answer.error, reasoning=res.reasoning,
                       reasoning_tokens=sum(r.reasoning_tokens for _, r, _ in samples),
                       reasoning_forced=forced(res), columns=sample_columns(samples))
        if not answer.usable:
            out.reason = answer.error or answer.status
        if isinstance(node.cfg, JudgeStage):
            self._read_judge(node, out, res.text or "", pend.extra)
            return out
        data = answer.data
        out.view = {"text": answer.text, "json": data if isinstance(data, dict) else {},
                    "texts": [a.text for _, _, a in samples], "prompt": out.messages[-1]["content"],
                    "model": pend.model, "status": answer.status, "completion_tokens": out.completion_tokens,
                    "reasoning": res.reasoning, "reasoning_tokens": res.reasoning_tokens}
        return out

    @staticmethod
    def _read_judge(node: StageNode, out: StageOut, text: str, extra: dict) -> None:
        if out.failed:
            out.view = {"status": out.status}
            return
        view, err = read_verdict(node.cfg, text, extra)
        if err:
            out.status, out.reason = "invalid_json", err
        out.view = {**view, "status": out.status}

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
            self._emit(rec, status, list(self.p.nodes)[-1], None, final=True)

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
                    (self.dialogues.start if node.kind in DIALOGUE_KINDS else self._start_model_stage)(rec, node)
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
            self._emit(rec, "rejected", decided_by, reason, final=False)
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
        self._emit(rec, status, decided_by, reason, final=True)

    def _emit(self, rec: Rec, status: str, decided_by: str, reason: str | None, final: bool) -> None:
        rid = rec.row["id"]
        if self.single:
            if not final:
                return  # a single-stage run keeps one row per record: its last attempt
            row = single_row(rec.row, rec.outputs.get(self.p.output), status, reason)
        else:
            row = attempt_row(self.p, rec.row, rec.outputs, rec.attempt, status, decided_by,
                              scrub_text(reason) if reason else reason, final, rec.seed_id)
        if self.decon is not None:
            row["contamination"] = row_value(rec)
        self._rows.setdefault(rid, []).extend(expand(self.p, row, rec.outputs) if final and not self.single else [row])
        if final:
            rec.final = True
            del self._open[rid]
            self.on_rows(rec.row, self._rows.pop(rid))
