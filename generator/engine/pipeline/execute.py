"""Running a spec with `stages:`: the runner plans the entry stage as usual, then hands the
pending records here; every stage is scheduled until each record is final.

The run folder is the same as a single-stage run's (plan.parquet, generations/*.parquet shards,
cache.sqlite, manifest.json); shards hold one row per attempt of each record (see `lineage`), and
the manifest gains a `pipeline` section with each stage's pass and rejection rates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import polars as pl

from generator.config.stages import VerifyStage
from generator.core.errors import SpecError
from generator.engine.pipeline import verify
from generator.engine.pipeline.context import validate_templates
from generator.engine.pipeline.dag import Pipeline, build
from generator.engine.pipeline.lineage import pipeline_schema, stage_rates
from generator.engine.pipeline.scheduler import PipelineScheduler
from generator.engine.planner import Resolved, _spec_error
from generator.engine.run_folder import RunFolder


def prepare(resolved: Resolved) -> Pipeline:
    """Compile and check a pipeline spec's stages (its entry stage is already resolved and
    validated by the planner) without loading a model."""
    spec = resolved.spec
    entry = resolved.templates

    def load(i: int, refs) -> list:
        if i == 0:
            return entry
        from generator.engine.planner import _resolve, template_roots
        from generator.library.catalog import load_template

        confine = spec.confinement()  # stage templates are confined like the entry stage's
        roots = template_roots(spec, confine)
        out = []
        for j, ref in enumerate(refs):
            key = ("stages", i, "template") if spec.stages[i].template else ("stages", i, "templates", j, "template")
            path = _resolve(spec, "templates", ref.template, confine, key, "`synthgen library` lists the templates")
            out.append((load_template(path, roots=roots, confine=confine), ref.weight))
        return out

    pipeline = build(spec, load)
    validate_templates(resolved, pipeline, lambda name: pipeline.ancestors[name])
    _check_signal(spec, pipeline)
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
    return pipeline


def _check_signal(spec, pipeline: Pipeline) -> None:
    """`rounds.signal_column` names a judge's score column (checked before any round runs)."""
    column = spec.rounds.signal_column if spec.rounds is not None and spec.rounds.signal == "judge" else None
    if column is None:
        return
    stage, _, name = column.partition(".")
    node = pipeline.nodes.get(stage)
    if node is None or node.kind != "judge" or not node.cfg.criteria or name not in node.fields() - {"reasons", "status"}:
        judges = [f"{n}.{f}" for n, x in pipeline.nodes.items() if x.kind == "judge" and x.cfg.criteria
                  for f in sorted(x.fields() - {"reasons", "status"})]
        raise _spec_error(spec, ("rounds", "signal_column"), f"'{column}' is no judge score column; "
                          f"choose from {', '.join(judges) or '(no rubric judge stage)'}")


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


def backends_for(resolved: Resolved, models: set[str], executor, backend_kwargs: dict) -> tuple[dict, float]:
    """One backend per model from the executor's factory, kept by the executor (so a later call
    reuses the engines and the executor's owner closes them); the load seconds of new ones."""
    if not getattr(executor, "runs_stages", False):  # stages hand answers between models in one process
        raise SpecError("a spec with `stages:` runs on the local executor (drop --executor ray)",
                        file=resolved.spec.file)
    factory = executor.backend_factory
    cfgs = {m.name: m for m in resolved.spec.models}
    out, load = {}, 0.0
    for name in sorted(models):
        if name not in executor.backends:
            b = factory(cfgs[name], **backend_kwargs)
            executor.backends[name] = b
            load += float(getattr(b, "load_seconds", 0.0) or 0.0)
        out[name] = executor.backends[name]
    return out, load


@dataclass
class PipelineStats:
    model_calls: int = 0
    cache_hits: int = 0
    load_seconds: float = 0.0
    backends: dict[str, Any] | None = None


def execute_pipeline(folder: RunFolder, resolved: Resolved, pipeline: Pipeline, pending: pl.DataFrame, executor,
                     backend_kwargs: dict, on_record: Callable[[dict], None],
                     on_shard: Callable[[str], None], on_ready: Callable[[], None],
                     session: str | None = None) -> PipelineStats:
    """Run every stage of the records in `pending` (plan rows of shards not written yet)."""
    spec = resolved.spec
    shards: dict[str, list[dict]] = {}
    for (name,), group in pending.group_by(["shard"], maintain_order=True):
        shards[name] = group.drop("shard").to_dicts()
    rows = [r for rs in shards.values() for r in rs]
    stats = PipelineStats()
    if not rows:
        return stats
    models = pipeline.models_used(spec.models[0].name) | set(pending["model"].unique().to_list())
    # a stage without `model:` runs on the record's model: every model a record may draw
    models |= {m.name for m in resolved.models}
    backends, stats.load_seconds = backends_for(resolved, models, executor, backend_kwargs)
    stats.backends = {n: b.describe() for n, b in backends.items()}
    on_ready()
    writer = _Shards(folder, shards, pipeline_schema(pipeline))

    def on_rows(plan_row: dict, out_rows: list[dict]) -> None:
        writer.add(plan_row, out_rows)
        for r in out_rows:
            on_record(r)
        while writer.written:
            on_shard(writer.written.pop(0))

    cache = folder.cache(session=session)
    sched = PipelineScheduler(pipeline, resolved, backends, cache, spec.run.retries, on_rows)
    try:
        sched.run(rows)
    finally:
        cache.close()
        if sched.functions is not None:
            sched.functions.close()
        stats.model_calls, stats.cache_hits = sched.model_calls, sched.cache_hits
    return stats


def summary(frame: pl.DataFrame, pipeline: Pipeline) -> dict[str, Any]:
    """The manifest's `pipeline` section: stage order, per-stage rates, who decided each record."""
    final = frame.filter(pl.col("final")) if "final" in frame.columns else frame.clear()
    return {
        "entry": pipeline.entry, "output": pipeline.output, "order": pipeline.order,
        "kinds": {n: node.kind for n, node in pipeline.nodes.items()},
        "stages": stage_rates(frame, pipeline.order) if frame.height else {},
        "decided_by": dict(sorted(final.group_by("decided_by").len().iter_rows())) if final.height else {},
        "rows": frame.height,
        "rows_by_status": dict(sorted(frame.group_by("status").len().iter_rows())) if frame.height else {},
        "max_attempt": int(frame["attempts"].max() or 0) if frame.height else 0,
    }
