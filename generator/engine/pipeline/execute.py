"""Running a spec's records: the runner plans the entry stage, then hands the pending records
here; every stage (one, for a single-stage spec) is scheduled until each record is final, and
each shard is written the moment its last record ends.

A pipeline's run folder is a single-stage run's (plan.parquet, generations/*.parquet shards,
answers/*.parquet, manifest.json) with one row per attempt of each record (see `lineage`), and the
manifest gains a `pipeline` section with each stage's pass and rejection rates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import polars as pl

from generator.config.stages import VerifyStage
from generator.core.errors import SpecError
from generator.engine.pipeline import decontam, difficulty, verify
from generator.engine.pipeline.context import validate_templates
from generator.engine.pipeline.dag import Pipeline, build, single_stage
from generator.engine.pipeline.lineage import pipeline_schema, stage_rates
from generator.engine.pipeline.scheduler import PipelineScheduler
from generator.engine.planner import Resolved, spec_error
from generator.engine.requests import ShardStats
from generator.engine.run_folder import GENERATION_SCHEMA, RunFolder


def compile_spec(resolved: Resolved) -> Pipeline:
    """Every spec as a pipeline: its `stages:` compiled and checked, or a single-stage spec as one node."""
    pipeline = single_stage(resolved.templates) if resolved.spec.stages is None else prepare(resolved)
    pipeline.decontam = decontam.prepare(resolved, pipeline)
    return pipeline


def prepare(resolved: Resolved) -> Pipeline:
    """Compile and check a pipeline spec's stages (its entry stage is already resolved and
    validated by the planner) without loading a model."""
    spec = resolved.spec
    entry = resolved.templates

    def load(i: int, refs) -> list:  # every file was loaded once, by resolve_spec
        return entry if i == 0 else resolved.stage_templates[i]

    pipeline = build(spec, load, lambda i: resolved.role_templates.get(i, {}))
    validate_templates(resolved, pipeline, lambda name: pipeline.ancestors[name])
    _check_signal(spec, pipeline)
    for i, tool in enumerate(spec.tools):
        if tool.python is not None:
            problem = verify.check_importable(tool.python, spec.base_dir)
            if problem:
                raise spec_error(spec, ("tools", i, "python"), f"{problem}; fix `python:`")
    for node in pipeline.nodes.values():
        c = node.cfg
        if isinstance(c, VerifyStage) and c.check == "function":
            problem = verify.check_importable(c.function, spec.base_dir)
            if problem:
                raise spec_error(spec, ("stages", node.index, "function"), f"{problem}; fix `function:`")
        if isinstance(c, VerifyStage) and c.check == "json_schema":
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(c.json_schema)
            except jsonschema.SchemaError as exc:
                raise spec_error(spec, ("stages", node.index, "json_schema"),
                                  f"not a valid JSON schema: {exc.message}") from None
    return pipeline


def _check_signal(spec, pipeline: Pipeline) -> None:
    """`rounds.signal_column` names a judge's score column (checked before any round runs)."""
    column = spec.rounds.signal_column if spec.rounds is not None and spec.rounds.signal == "judge" else None
    if column is None:
        return
    stage, _, name = column.partition(".")
    node = pipeline.nodes.get(stage)
    not_scores = {"reasons", "status", "turn_scores", "turn_reasons"}
    if node is None or node.kind != "judge" or not node.cfg.criteria or name not in node.fields() - not_scores:
        judges = [f"{n}.{f}" for n, x in pipeline.nodes.items() if x.kind == "judge" and x.cfg.criteria
                  for f in sorted(x.fields() - not_scores)]
        raise spec_error(spec, ("rounds", "signal_column"), f"'{column}' is no judge score column; "
                          f"choose from {', '.join(judges) or '(no rubric judge stage)'}")


class ShardWriter:
    """Writes a shard once every record in it is final (all its rows, in plan order). Records
    arrive in plan order, so a shard's rows are ordered by arrival; only open shards are held."""

    def __init__(self, folder: RunFolder, sizes: dict[str, int], schema: dict | None,
                 before_write: Callable[[], None] = lambda: None):
        self.folder, self.sizes, self.schema = folder, sizes, schema
        self.before_write = before_write
        self.seq: dict[str, int] = {}                       # record id -> arrival index
        self.owner: dict[str, str] = {}                     # record id -> shard (open records only)
        self.done: dict[str, list[tuple[int, list[dict]]]] = {}
        self.started = time.time()

    def admit(self, row: dict) -> dict:
        """Take a plan row (with its `shard`); returns the row without it."""
        row = dict(row)
        self.owner[row["id"]] = row.pop("shard")
        self.seq[row["id"]] = len(self.seq)
        return row

    def add(self, plan_row: dict, rows: list[dict]) -> ShardStats | None:
        rid = plan_row["id"]
        name = self.owner.pop(rid)
        bucket = self.done.setdefault(name, [])
        bucket.append((self.seq.pop(rid), rows))
        if len(bucket) < self.sizes[name]:
            return None
        ordered = [r for _, rs in sorted(bucket, key=lambda x: x[0]) for r in rs]
        self.before_write()
        self.folder.write_shard(name, ordered, schema=self.schema)
        del self.done[name]
        return ShardStats(name=name, records=len(bucket)).count([r for r in ordered if r.get("final", True)],
                                                               self.started)


@dataclass
class PipelineStats:
    model_calls: int = 0
    cache_hits: int = 0
    stuck: int = 0
    parked: int = 0


def run_records(folder: RunFolder, resolved: Resolved, pipeline: Pipeline, rows: Iterable[dict],
                sizes: dict[str, int], backends: dict[str, Any], session: str | None,
                on_record: Callable[[dict], None], on_shard: Callable[[ShardStats], None],
                gate: Any = None, on_flight: Callable[[int], None] | None = None) -> PipelineStats:
    """Run every stage of the plan rows in `rows` (each with its `shard`; `sizes`: records per
    pending shard) on `backends`, writing each shard as its last record ends. `gate`
    (engine.budget.Gate) is asked before each request; the records it keeps waiting stay unwritten."""
    spec = resolved.spec
    cache = folder.cache(session=session)
    # a shard is written after its answers are published: every written shard's calls are counted
    schema = GENERATION_SCHEMA if pipeline.single else pipeline_schema(pipeline)
    if pipeline.decontam is not None:
        schema = {**schema, "contamination": pl.Utf8}
    writer = ShardWriter(folder, sizes, schema, cache.flush)

    def on_rows(plan_row: dict, out_rows: list[dict]) -> None:
        landed = writer.add(plan_row, out_rows)
        for r in out_rows:
            on_record(r)
        if landed is not None:
            on_shard(landed)

    stall = spec.run.stall_timeout
    if any(getattr(b, "batch", False) for b in backends.values()):
        stall = None  # a batch job answers everything at once, hours later
    sched = PipelineScheduler(pipeline, resolved, backends, cache, spec.run.retries, on_rows,
                              stall_timeout=stall, max_open=spec.run.max_open, gate=gate, on_flight=on_flight)
    stats = PipelineStats()
    # another run took the folder over (the lock heartbeat saw its token): stop now, not at the next write
    unsubscribe = folder.on_lock_lost(sched.abort)
    try:
        sched.run(writer.admit(r) for r in rows)
    finally:
        unsubscribe()
        cache.close()  # raises when the lock is lost: nothing more is published (the scheduler
        # closed its checks, and the verify-function worker with them)
        stats.model_calls, stats.cache_hits, stats.stuck = sched.model_calls, sched.cache_hits, sched.stuck
        stats.parked = sched.parked
    return stats


def summary_columns(pipeline: Pipeline) -> list[str]:
    """The columns `summary` reads (so a large run's shards are read only for these)."""
    return ["final", "decided_by", "status", "attempts", *(f"{s}.attempt" for s in pipeline.order),
            *(f"{s}.pass_rate" for s in _keepers(pipeline)),
            *(f"{difficulty.names(d)['band']}.passed" for d in pipeline.difficulty.values())]


def _keepers(pipeline: Pipeline) -> list[str]:
    return [n for n, node in pipeline.nodes.items() if node.kind == "verify" and node.cfg.keep is not None]


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
        # `keep:` stages: each record's pass rate over its samples (its final row), their count and mean
        **({"pass_rates": {s: {"records": final[f"{s}.pass_rate"].drop_nulls().len(),
                               "mean": final[f"{s}.pass_rate"].mean()} for s in _keepers(pipeline)
                           if f"{s}.pass_rate" in final.columns}} if _keepers(pipeline) else {}),
        # difficulty stages: the band, the solvers, and how many problems had each pass rate
        **({"difficulty": difficulty.summary(frame, pipeline.difficulty)} if pipeline.difficulty else {}),
    }


def answer_rows(resolved: Resolved, rows: Iterable[dict], backends: dict[str, Any],
                on_final: Callable[[dict], None], cache=None, retries: int | None = None) -> int:
    """Single-stage plan rows answered on the one core without a run folder (`synthgen preview`,
    benches): `on_final(row)` gets each finished generation row. Returns the model calls made."""
    sched = PipelineScheduler(single_stage(resolved.templates), resolved, backends, cache,
                              resolved.spec.run.retries if retries is None else retries,
                              lambda plan_row, out: on_final(out[-1]), max_open=resolved.spec.run.max_open)
    sched.run(rows)
    return sched.model_calls
