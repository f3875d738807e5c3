"""Running a spec with `stages:`: plan the entry stage, schedule every stage, write the run folder.

The run folder is the same as a single-stage run's (plan.parquet, generations/*.parquet shards,
cache.sqlite, manifest.json); shards hold one row per attempt of each record (see `lineage`), and
the manifest gains a `pipeline` section with each stage's pass and rejection rates.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import polars as pl

from generator.config.spec import Spec
from generator.config.stages import GenerateStage, VerifyStage
from generator.core.errors import SpecError
from generator.engine.pipeline import verify
from generator.engine.pipeline.context import validate_templates
from generator.engine.pipeline.dag import Pipeline, build
from generator.engine.pipeline.lineage import pipeline_schema, stage_rates
from generator.engine.pipeline.scheduler import PipelineScheduler
from generator.engine.planner import (Record, Resolved, _spec_error, expand, limit_records, resolve_spec,
                                      validate as validate_entry)
from generator.engine.run_folder import RunFolder
from generator.engine.runner import (ExecStats, Progress, RunResult, _card, assign_shards, reconcile,
                                     run_manifest, score_run)
from generator.library.catalog import load_template, resolve


def _templates_loader(spec: Spec):
    def load(i: int, refs) -> list:
        out = []
        for j, ref in enumerate(refs):
            key = ("stages", i, "template") if spec.stages[i].template else ("stages", i, "templates", j, "template")
            try:
                out.append((load_template(resolve("templates", ref.template, spec.base_dir)), ref.weight))
            except FileNotFoundError as exc:
                raise _spec_error(spec, key, f"{exc}; `synthgen library` lists the templates") from None
        return out
    return load


def prepare(spec: Spec) -> tuple[Resolved, Pipeline]:
    """Resolve and check a pipeline spec without loading a model."""
    pipeline = build(spec, _templates_loader(spec))
    entry: GenerateStage = pipeline.nodes[pipeline.entry].cfg
    # the plan is the entry stage's: a spec whose templates, model and sampling are that stage's
    models = [m for m in spec.models if m.name == entry.model] if entry.model else list(spec.models)
    sampling = spec.sampling.model_copy(update={k: v for k, v in entry.sampling.model_dump().items() if v is not None})
    planned = spec.model_copy(update={"templates": entry.template_refs(), "models": models, "sampling": sampling,
                                      "stages": None})
    planned._file, planned._located = spec._file, spec._located
    resolved = resolve_spec(planned)
    validate_entry(resolved)
    validate_templates(dataclasses.replace(resolved, spec=spec, models=list(spec.models)), pipeline,
                       lambda name: pipeline.ancestors[name])
    for node in pipeline.nodes.values():
        c = node.cfg
        if isinstance(c, VerifyStage) and c.check == "function":
            problem = verify.check_importable(c.function, spec.base_dir)
            if problem:
                raise _spec_error(spec, ("stages", node.index, "function"), f"{problem}; fix `function:`")
        if isinstance(c, VerifyStage) and c.check == "json_schema":
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(c.json_schema)
            except jsonschema.SchemaError as exc:
                raise _spec_error(spec, ("stages", node.index, "json_schema"),
                                  f"not a valid JSON schema: {exc.message}") from None
    return resolved, pipeline


def plan_pipeline(spec: Spec, limit: int | None = None) -> tuple[Resolved, Pipeline, list[Record]]:
    resolved, pipeline = prepare(spec)
    records = expand(resolved)
    if limit is not None:
        records = limit_records(records, limit)
    return resolved, pipeline, records


class _Shards:
    """Writes a shard once every record in it is final (all its attempt rows, in plan order)."""

    def __init__(self, folder: RunFolder, shards: dict[str, list[dict]], schema: dict):
        self.folder, self.schema = folder, schema
        self.order = {name: [r["id"] for r in rows] for name, rows in shards.items()}
        self.owner = {r["id"]: name for name, rows in shards.items() for r in rows}
        self.done: dict[str, dict[str, list[dict]]] = {name: {} for name in shards}
        self.written: list[str] = []

    def add(self, plan_row: dict, rows: list[dict]) -> None:
        name = self.owner[plan_row["id"]]
        self.done[name][plan_row["id"]] = rows
        if len(self.done[name]) == len(self.order[name]):
            ordered = [r for rid in self.order[name] for r in self.done[name][rid]]
            self.folder.write_shard(name, ordered, schema=self.schema)
            del self.done[name]
            self.written.append(name)


def _backends(spec: Spec, models: set[str], executor) -> tuple[dict, float]:
    from generator.engine.executors.local import LocalExecutor

    if not isinstance(executor, LocalExecutor):
        raise SpecError("a spec with `stages:` runs on the local executor (drop --executor ray)", file=spec.file)
    kwargs = {"window": spec.run.window} if spec.run.window else {}
    out, load = {}, 0.0
    cfgs = {m.name: m for m in spec.models}
    for name in sorted(models):
        if name not in executor.backends:
            b = executor.backend_factory(cfgs[name], **kwargs)
            executor.backends[name] = b
            load += float(getattr(b, "load_seconds", 0.0) or 0.0)
        out[name] = executor.backends[name]
    return out, load


def run_pipeline(spec: Spec, out: str | Path | None = None, limit: int | None = None, executor=None,
                 progress: Progress | None = None, score: bool = True) -> RunResult:
    t0 = time.time()
    emit = progress or (lambda event, data: None)
    resolved, pipeline, records = plan_pipeline(spec, limit)
    plan_seconds = time.time() - t0
    folder = RunFolder(out or spec.output_dir())
    old_plan, new = reconcile(folder, records)
    folder.create()
    plan = assign_shards(old_plan, new, spec.run.shard_size)
    if new:
        folder.write_plan(plan)
    manifest = run_manifest(folder, spec, resolved, limit)
    manifest["templates"] = {t.name: t.hash for n in pipeline.nodes.values() for t, _ in n.templates}
    emit("plan", {"records": plan.height, "new": len(new), "seconds": plan_seconds})
    own = executor is None
    if own:
        from generator.engine.executors.local import LocalExecutor

        executor = LocalExecutor()
    stats = ExecStats()
    try:
        stats = _execute(folder, resolved, pipeline, plan, executor, emit, manifest)
    finally:
        if own:
            executor.close()
    return _finish(spec, folder, manifest, resolved, pipeline, plan, stats, plan_seconds, score, emit, t0)


def _execute(folder: RunFolder, resolved: Resolved, pipeline: Pipeline, plan: pl.DataFrame, executor, emit,
             manifest: dict) -> ExecStats:
    spec = resolved.spec
    done = folder.completed_shards()
    pending = plan.filter(~pl.col("shard").is_in(list(done)))
    shards: dict[str, list[dict]] = {}
    for (name,), group in pending.group_by(["shard"], maintain_order=True):
        shards[name] = group.drop("shard").to_dicts()
    rows = [r for rs in shards.values() for r in rs]
    stats = ExecStats(pending_records=len(rows))
    emit("start", {"records": plan.height, "pending": len(rows), "shards": len(shards), "done_shards": len(done)})
    if not rows:
        return stats
    t1 = time.time()
    backends, stats.load_seconds = _backends(spec, pipeline.models_used(spec.models[0].name) |
                                             set(pending["model"].unique().to_list()), executor)
    emit("engine_ready", {})
    writer = _Shards(folder, shards, pipeline_schema(pipeline))

    def on_rows(plan_row: dict, out_rows: list[dict]) -> None:
        stats.completion_tokens += sum(r["completion_tokens"] or 0 for r in out_rows)
        writer.add(plan_row, out_rows)
        emit("record", out_rows[-1])
        while writer.written:
            emit("shard", {"name": writer.written.pop(0), "records": None})

    full = dataclasses.replace(resolved, spec=spec, models=list(spec.models))
    cache = folder.cache()
    sched = PipelineScheduler(pipeline, full, backends, cache, spec.run.retries, on_rows)
    try:
        sched.run(rows)
    finally:
        cache.close()
        if sched.functions is not None:
            sched.functions.close()
        stats.model_calls = sched.model_calls
        stats.gen_seconds = time.time() - t1
        manifest["models"] = {n: b.describe() for n, b in backends.items()}
    return stats


def _finish(spec: Spec, folder: RunFolder, manifest: dict, resolved: Resolved, pipeline: Pipeline,
            plan: pl.DataFrame, stats: ExecStats, plan_seconds: float, score: bool, emit, t0: float) -> RunResult:
    frame = folder.read_generations()
    final = frame.filter(pl.col("final")) if "final" in frame.columns else frame
    statuses = dict(final.group_by("status").len().iter_rows()) if final.height else {}
    rows_by_status = dict(frame.group_by("status").len().iter_rows()) if frame.height else {}
    tokens = {"prompt": int(frame["prompt_tokens"].sum() or 0), "completion": int(frame["completion_tokens"].sum() or 0)}
    manifest["counts"] = {"planned": plan.height, "generated": final.height, "status": statuses, "rows": frame.height,
                          "row_status": rows_by_status, "tokens": tokens, "shards": len(folder.completed_shards())}
    decided = dict(final.group_by("decided_by").len().iter_rows()) if final.height else {}
    manifest["pipeline"] = {
        "entry": pipeline.entry, "output": pipeline.output, "order": pipeline.order,
        "stages": stage_rates(frame, pipeline.order) if frame.height else {},
        "decided_by": decided,
        "attempts": {"max": int(frame["attempts"].max() or 0) if frame.height else 0,
                     "rejected_rows": int((frame["status"] == "rejected").sum()) if frame.height else 0},
    }
    decode = max(stats.gen_seconds - stats.load_seconds, 1e-6)
    manifest.setdefault("timings", []).append({
        "plan_s": round(plan_seconds, 3), "generate_s": round(stats.gen_seconds, 3),
        "model_load_s": round(stats.load_seconds, 3), "records_this_session": stats.pending_records,
        "model_calls": stats.model_calls,
        "completion_tokens_per_s": round(stats.completion_tokens / decode, 2) if stats.pending_records else None})
    manifest["updated_at"] = time.time()
    folder.write_manifest(manifest)
    _card(folder, manifest, resolved)
    scores = score_run(folder, spec) if score and spec.scoring is not None and final.height else None
    emit("done", {"seconds": time.time() - t0})
    return RunResult(run_dir=folder.path, manifest=manifest, planned=plan.height, generated=final.height,
                     model_calls=stats.model_calls, statuses=statuses, scores=scores)
