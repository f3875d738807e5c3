"""Generate and judge stages for the scheduler: a stage's requests (its `n` samples, each with its
seed; the entry stage's from the plan row), the retry of a retryable answer, and the stage's
output once every sample has landed (a judge's verdict read from its answer).

The scheduler owns every record; this module reaches it only through the callbacks it is given
(submit a request, reject or advance a record), like `checks.CheckRunner`.
"""
from __future__ import annotations

from typing import Any, Callable

from generator.config.stages import GenerateStage, JudgeStage
from generator.core.backend import Result, Sampling
from generator.engine.pipeline.context import (Contexts, StageOut, judge_messages, make_request, render_stage,
                                               sampling_for, stage_context, stage_seed)
from generator.engine.pipeline.dag import Pipeline, StageNode
from generator.engine.pipeline.judge import read_verdict
from generator.engine.pipeline.state import Pending, Rec
from generator.engine.pipeline.thinking import forced, sample_columns
from generator.engine.planner import Resolved
from generator.engine.requests import classify, make_request as entry_request, retryable


class ModelStages:
    def __init__(self, pipeline: Pipeline, resolved: Resolved, contexts: Contexts, retries: int, *,
                 submit: Callable[[Pending], None], reject: Callable[[Rec, StageNode, str, str], None],
                 advance: Callable[[Rec], None]):
        self.p = pipeline
        self.single = pipeline.single
        self.resolved = resolved
        self.seed = resolved.spec.seed
        self.contexts = contexts
        self.retries = retries
        self.renderers = {t.name: t.renderer for node in pipeline.nodes.values() for t, _ in node.templates}
        self.schemas = {t.name: t.output_schema for node in pipeline.nodes.values() for t, _ in node.templates}
        self._sampling: dict[tuple[str, str], Sampling] = {}  # (stage, model) -> its sampling
        self._submit = submit            # a request, looked up in the cache or sent to its model
        self._reject_stage = reject      # a failed stage: regenerate or end the record
        self._advance_rec = advance      # a settled stage: start what waited on it

    def start(self, rec: Rec, node: StageNode) -> None:
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

    def settle(self, pend: Pending, res: Result) -> None:
        """An answer of the stage's current epoch: retry it, or keep it; the last sample settles the stage."""
        rec = pend.rec
        node = self.p.nodes[pend.stage]
        x = pend.extra
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
            self._reject_stage(rec, node, f"{node.name}: {out.reason or out.status}", out.status)
        else:
            self._advance_rec(rec)

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
