"""The continuous pipeline scheduler.

Each model has one `RequestFeed` and one thread consuming `backend.stream(feed)`. The main thread
owns every record's state: when an answer lands it is written to the request cache at once (a
crash loses only requests in flight), its stage settles, and the record's next stages (or a
retry, or a regeneration) go straight into the feeds, so the engines never wait for a whole stage
to finish. Verify and filter stages run on the main thread as soon as their inputs exist.
Requests already in the cache are answered from it without reaching a model.
"""
from __future__ import annotations

import collections
import json
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from generator.config.stages import GenerateStage, JudgeStage, VerifyStage
from generator.core.backend import Backend, Request, RequestFeed, Result, Sampling, stream_in_windows
from generator.core.errors import TemplateError
from generator.engine.pipeline import expressions, verify
from generator.engine.pipeline.context import (Contexts, StageOut, judge_messages, make_request, render_stage,
                                               sampling_for, stage_context, stage_seed)
from generator.engine.pipeline.dag import Pipeline, StageNode
from generator.engine.pipeline.judge import read_compare, read_rubric
from generator.engine.pipeline.lineage import attempt_row
from generator.engine.planner import Resolved
from generator.engine.requests import retryable
from generator.engine.run_folder import RequestCache


@dataclass
class Rec:
    row: dict
    seed_id: str | None
    attempt: int = 1
    outputs: dict[str, StageOut] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    samples: dict[str, dict[int, tuple[Request, Result, str]]] = field(default_factory=dict)
    final: bool = False


@dataclass
class Pending:
    rec: Rec
    stage: str
    attempt: int
    sample: int
    tries: int
    model: str
    request: Request
    extra: dict = field(default_factory=dict)


def gathered_windows(backend: Backend, feed: RequestFeed, window: int, linger: float = 0.05,
                     busy: Callable[[], bool] | None = None):
    """`stream` for a backend with only `generate`, in windows that gather follow-ups (see
    `stream_in_windows`)."""
    return stream_in_windows(backend, feed, window=window, linger=linger, busy=busy)


def sample_status(res: Result, structured: bool) -> str:
    if res.finish_reason == "error" or res.error:
        return "error"
    if not (res.text or "").strip():
        return "empty"
    if structured:
        try:
            json.loads(res.text)
        except json.JSONDecodeError:
            return "truncated" if res.finish_reason == "length" else "invalid_json"
    return "truncated" if res.finish_reason == "length" else "ok"


class PipelineScheduler:
    def __init__(self, pipeline: Pipeline, resolved: Resolved, backends: dict[str, Backend],
                 cache: RequestCache | None, retries: int, on_rows: Callable[[dict, list[dict]], None],
                 functions: verify.FunctionRunner | None = None):
        self.p = pipeline
        self.resolved = resolved
        self.seed = resolved.spec.seed
        self.backends = backends
        self.cache = cache
        self.retries = retries
        self.on_rows = on_rows  # (plan row, every attempt row of the record) once it is final
        self.functions = functions
        self.contexts = Contexts(resolved)
        self.filters = {n: expressions.parse(node.cfg.expr) for n, node in pipeline.nodes.items()
                        if node.kind == "filter"}
        self.model_calls = 0
        self.cache_hits = 0
        self._pending: dict[str, Pending] = {}
        self._ready: collections.deque[tuple[Pending, Result]] = collections.deque()
        self._events: queue.Queue = queue.Queue()
        self._feeds = {m: RequestFeed() for m in backends}
        self._rows: dict[str, list[dict]] = {}
        self._open = 0
        self._unsettled = 0  # answers received from a stream and not yet settled
        self._count = threading.Lock()

    # ------------------------------------------------------------ the loop
    def run(self, rows: list[dict]) -> None:
        cells = self.contexts.cells
        recs = [Rec(row=r, seed_id=getattr(cells.get(r["topic_id"]), "seed_id", None) or None) for r in rows]
        self._open = len(recs)
        threads = [threading.Thread(target=self._pump, args=(m,), daemon=True, name=f"stream-{m}")
                   for m in self.backends]
        for t in threads:
            t.start()
        try:
            for rec in recs:
                self._advance(rec)
                self._drain_ready()
            while self._open:
                self._drain_ready()
                if not self._open:
                    break
                kind, model, payload = self._events.get()
                batch = [(kind, model, payload)]
                while True:  # take everything that landed meanwhile: one cache transaction for all
                    try:
                        batch.append(self._events.get_nowait())
                    except queue.Empty:
                        break
                results = [payload for kind, _, payload in batch if kind == "result"]
                self._store(results)  # answers that landed are kept even when a stream failed
                for kind, model, payload in batch:
                    if kind == "error":
                        raise payload
                    if kind == "end":
                        raise RuntimeError(f"the {model} stream ended with {self._open} records unfinished")
                for res in results:
                    pend = self._pending.pop(res.id, None)
                    if pend is not None:
                        self._settle(pend, res)
                    with self._count:  # its follow-ups are in the feeds now
                        self._unsettled -= 1
        finally:
            for feed in self._feeds.values():
                feed.close()
            for t in threads:
                t.join()

    def _pump(self, model: str) -> None:
        try:
            backend = self.backends[model]
            native = getattr(backend, "stream", None)
            # a backend without a native stream is fed in windows of `generate` (its own window size)
            stream = native(self._feeds[model]) if native is not None else gathered_windows(
                backend, self._feeds[model], window=int(getattr(backend, "window", None) or 64),
                busy=lambda: self._unsettled > 0)
            for res in stream:
                with self._count:
                    self._unsettled += 1
                self._events.put(("result", model, res))
        except BaseException as exc:  # surfaced on the main thread
            self._events.put(("error", model, exc))
            return
        self._events.put(("end", model, None))

    def _store(self, results: list[Result]) -> None:
        self.model_calls += len(results)
        if self.cache is None:
            return
        items = []
        for res in results:
            pend = self._pending.get(res.id)
            if pend is None:
                continue
            failed = res.finish_reason == "error"  # counted, but not an answer worth replaying
            self.cache.meter.answered(pend.model, pend.stage, res.prompt_tokens, res.completion_tokens, error=failed)
            if not failed:
                items.append((pend.request.payload_hash(pend.model), res.__dict__))
        self.cache.put_many(items)

    def _drain_ready(self) -> None:
        while self._ready:
            pend, res = self._ready.popleft()
            self._settle(pend, res)

    # ------------------------------------------------------------ requests
    def _submit(self, pend: Pending) -> None:
        hit = self.cache.get(pend.request.payload_hash(pend.model)) if self.cache is not None else None
        if hit is not None:
            self.cache_hits += 1
            self.cache.meter.hit(pend.model, pend.stage)
            self._ready.append((pend, Result(**hit)))
            return
        if self.cache is not None:
            self.cache.meter.submitted(pend.model)
        self._pending[pend.request.id] = pend
        self._feeds[pend.model].put(pend.request)

    def _start_model_stage(self, rec: Rec, node: StageNode) -> None:
        rid, row = rec.row["id"], rec.row
        rec.samples[node.name] = {}
        extra: dict[str, Any] = {}
        if node.name == self.p.entry:
            messages, model, template = list(row["messages"]), row["model"], row["template"]
            schema = next((t.output_schema for t, _ in node.templates if t.name == template), node.schema())
            sampling = Sampling(row["temperature"], row["top_p"], int(row["max_tokens"]),
                                repetition_penalty=row.get("repetition_penalty"))
        else:
            model = getattr(node.cfg, "model", None) or row["model"]
            sampling = sampling_for(self.resolved, node, model)
            if isinstance(node.cfg, GenerateStage):
                ctx = stage_context(self.contexts.base(row), rec.outputs)
                tpl, messages = render_stage(node, ctx, self.seed, rid)
                template, schema = tpl.name, tpl.output_schema
            else:
                messages, schema, extra = judge_messages(node, row, rec.outputs, self.seed, rid)
                if node.cfg.compare:  # the verdict names A or B: keep the compared texts at hand
                    extra["texts"] = {s: rec.outputs[s].view.get("text") for s in node.cfg.compare}
                template = None
        extra.update({"messages": messages, "template": template, "sampling": sampling, "schema": schema})
        n = node.cfg.n if isinstance(node.cfg, GenerateStage) else 1
        for k in range(n):
            self._send(rec, node, k, 1, model, extra)

    def _send(self, rec: Rec, node: StageNode, sample: int, tries: int, model: str, extra: dict) -> None:
        rid = rec.row["id"]
        if node.name == self.p.entry and rec.attempt == 1 and sample == 0:
            seed = int(rec.row["seed"])  # the plan's seed
        else:
            seed = stage_seed(self.seed, rid, node.name, rec.attempt, sample)
        req = make_request(rid, node.name, rec.attempt, sample, tries, extra["messages"], extra["sampling"], seed,
                           extra["schema"])
        self._submit(Pending(rec, node.name, rec.attempt, sample, tries, model, req, extra))

    def _settle(self, pend: Pending, res: Result) -> None:
        rec = pend.rec
        if rec.final or pend.attempt != rec.attempt or pend.stage not in rec.started:
            return  # an answer for an attempt that was rejected meanwhile: paid (cached), not used
        node = self.p.nodes[pend.stage]
        status = sample_status(res, pend.extra["schema"] is not None)
        if pend.tries <= self.retries and retryable(status, pend.extra["schema"], pend.request.sampling.max_tokens):
            self._send(rec, node, pend.sample, pend.tries + 1, pend.model, pend.extra)
            return
        samples = rec.samples[pend.stage]
        samples[pend.sample] = (pend.request, res, status)
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
        req0, res0, status0 = samples[0]
        statuses = [s for _, _, s in samples]
        status = status0 if len(samples) == 1 or status0 in ("ok", "truncated") else \
            next((s for s in statuses if s in ("ok", "truncated")), status0)
        out = StageOut(status=status, attempt=rec.attempt, view={}, seed=req0.sampling.seed,
                       model=pend.model, template=pend.extra["template"],
                       tries=max(int(r.id.rsplit("#", 1)[1]) for r, _, _ in samples),
                       prompt_tokens=sum(r.prompt_tokens for _, r, _ in samples),
                       completion_tokens=sum(r.completion_tokens for _, r, _ in samples),
                       messages=list(pend.extra["messages"]), completion=res0.text)
        if status not in ("ok", "truncated"):
            out.reason = res0.error or status
        if isinstance(node.cfg, JudgeStage):
            self._read_judge(node, out, res0.text or "", pend.extra)
            return out
        text = (res0.text or "").strip()
        data = None
        if pend.extra["schema"] is not None and status in ("ok", "truncated"):
            try:
                data = json.loads(res0.text)
            except json.JSONDecodeError:
                data = None
        out.view = {"text": text, "json": data if isinstance(data, dict) else {},
                    "texts": [(r.text or "").strip() for _, r, _ in samples], "prompt": out.messages[-1]["content"],
                    "model": pend.model, "status": status, "completion_tokens": out.completion_tokens}
        return out

    def _read_judge(self, node: StageNode, out: StageOut, text: str, extra: dict) -> None:
        c: JudgeStage = node.cfg
        if out.failed:
            out.view = {"status": out.status}
            return
        if c.criteria:
            view, err = read_rubric(text, c.criteria)
            out.view = {**view, "status": out.status}
        else:
            better, reason, err = read_compare(text)
            out.view = {"status": out.status, "reason": reason}
            if better is not None:
                win = extra[better]
                lose = extra["B" if better == "A" else "A"]
                out.view["winner"] = win
                out.view["chosen"], out.view["rejected"] = extra["texts"][win], extra["texts"][lose]
        if err:
            out.status, out.reason = "invalid_json", err
            out.view["status"] = out.status

    # ------------------------------------------------------------ stage flow
    def _advance(self, rec: Rec) -> None:
        for name, node in self.p.nodes.items():
            if rec.final:
                return
            if name in rec.started or not self.p.waits_for(name) <= set(rec.outputs):
                continue
            rec.started.add(name)
            if node.kind in ("generate", "judge"):
                try:
                    self._start_model_stage(rec, node)
                except TemplateError as exc:  # e.g. `problem.json.question` of an answer without it
                    rec.outputs[name] = StageOut(status="error", attempt=rec.attempt, view={"status": "error"},
                                                 reason=f"cannot render: {exc.message}")
                    self._reject(rec, node, f"{name}: cannot render: {exc.message}", "error")
                    return
                continue
            out = self._check(rec, node)
            rec.outputs[name] = out
            if out.failed:
                self._reject(rec, node, out.reason or f"{name} rejected", "rejected")
                return
        if not rec.final and len(rec.outputs) == len(self.p.nodes):
            out = rec.outputs[self.p.output]
            status = "truncated" if out.status == "truncated" else "ok"
            self._emit(rec, status, list(self.p.nodes)[-1], None, final=True)

    def _check(self, rec: Rec, node: StageNode) -> StageOut:
        c = node.cfg
        if node.kind == "filter":
            env = self._env(rec)
            ok = self.filters[node.name].passes(env)
            return StageOut(status="passed" if ok else "rejected", attempt=rec.attempt,
                            view={"passed": ok, "reason": None if ok else f"filter false: {c.expr}",
                                  "status": "passed" if ok else "rejected"},
                            reason=None if ok else f"filter false: {c.expr}")
        v = self._verify(rec, c)
        status = "passed" if v.passed else "rejected"
        return StageOut(status=status, attempt=rec.attempt, reason=None if v.passed else v.reason,
                        view={"passed": v.passed, "agree": v.agree, "answer": v.answer, "majority": v.majority,
                              "reason": v.reason, "status": status})

    def _verify(self, rec: Rec, c: VerifyStage) -> verify.Verdict:
        target = rec.outputs[c.target].view
        if c.check == "agreement":
            return verify.agreement(target.get("text"), rec.outputs[c.against].view.get("texts") or [],
                                    c.extract, c.min_agree)
        if c.check == "json_schema":
            return verify.json_schema_check(target.get("text"), c.json_schema)
        if c.check == "regex":
            return verify.regex_check(target.get("text"), c.pattern)
        if self.functions is None:
            self.functions = verify.FunctionRunner(self.resolved.spec.base_dir)
        return self.functions(c.function, verify.to_jsonable(self._env(rec)), c.timeout)

    def _env(self, rec: Rec) -> dict[str, Any]:
        r = rec.row
        env: dict[str, Any] = {k: r.get(k) for k in ("topic", "subtopic", "level", "topic_id", "template", "model",
                                                       "generation")}
        env.update({"seed_id": rec.seed_id, "attempt": rec.attempt})
        env.update({name: out.view for name, out in rec.outputs.items()})
        return env

    def _reject(self, rec: Rec, node: StageNode, reason: str, status: str) -> None:
        rule = node.cfg.on_reject
        if rule is not None and rec.attempt < rule.max_attempts:
            self._emit(rec, "rejected", node.name, reason, final=False)
            redo = {rule.regenerate} | self.p.descendants[rule.regenerate]
            rec.attempt += 1
            for s in redo:
                rec.outputs.pop(s, None)
                rec.started.discard(s)
                rec.samples.pop(s, None)
            self._advance(rec)
            return
        self._emit(rec, status, node.name, reason, final=True)

    def _emit(self, rec: Rec, status: str, decided_by: str, reason: str | None, final: bool) -> None:
        row = attempt_row(self.p, rec.row, rec.outputs, rec.attempt, status, decided_by, reason, final, rec.seed_id)
        self._rows.setdefault(rec.row["id"], []).append(row)
        if final:
            rec.final = True
            self._open -= 1
            self.on_rows(rec.row, self._rows.pop(rec.row["id"]))
