"""The feedback loop: generate in rounds and move each round's budget toward cells with high yield.

    round r:  allocate (generator.feedback.allocator) -> RUN/rounds/round-NNN.alloc.json
              (per-cell counts, the pool, and the round's template mix: `template_weights`)
              plan: expand(resolved, counts, start=generations so far, round=r, template_weights)
                    (append-stable: the mix only affects the new generation indices)
              generate the pending shards (the normal resume path)
              yields + global scores (generator.feedback.yields) -> RUN/rounds/round-NNN.json   (round finished)

A resumed run skips finished rounds (their JSON exists); an interrupted round re-reads its allocation
file, so it plans exactly the same records and only its missing shards reach the model. Everything an
allocation holds (counts, pool, template weights) is a function of the round files written before it,
so a round re-derived from scratch plans the same records too.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from generator.feedback.allocator import Allocation, Allocator, grow_samples, round_slices
from generator.core.errors import RunFolderError
from generator.core.run_layout import read_rounds, round_file
from generator.library.catalog import load_personas, load_topic_tree, resolve, tree_cells
from generator.engine.planner import Resolved, expand, resolve_spec, validate
from generator.runs import close_run
from generator.engine.runner import (ExecStats, Progress, RunResult, assign_shards, compile_pipeline,
                                     execute_records, run_manifest)
from generator.config.spec import Spec, TreeTopics
from generator.core.files import write_json_atomic
from generator.engine.run_folder import RunFolder
from generator.feedback.yields import compute_yields


def round_path(folder: RunFolder, r: int, kind: str = "") -> Path:
    return round_file(folder.path, r, kind)


def load_rounds(run_dir: Any) -> list[dict]:
    """Finished rounds of a run folder (a local path or an fsspec URL), in order (stops at the first
    missing round)."""
    return read_rounds(run_dir)


# ---------------------------------------------------------------- the pool (topic / persona samples)

def initial_pool(spec: Spec) -> dict[str, Any]:
    """Growable samples: tree sources with `sample:` below their cell count, and `personas.sample`."""
    base = spec.base_dir
    topics: dict[str, list[int]] = {}
    for i, src in enumerate(spec.topics):
        if isinstance(src, TreeTopics) and src.sample is not None:
            tree = load_topic_tree(resolve("topics", src.tree, base))
            n = len(tree_cells(tree, src.under, src.depth, src.weight))
            topics[str(i)] = [min(src.sample, n), n]
    personas = None
    if spec.personas is not None and spec.personas.sample is not None:
        n = len(load_personas(resolve("personas", spec.personas.file, base)))
        personas = [min(spec.personas.sample, n), n]
    return {"topic_samples": topics, "persona_sample": personas}


def spec_with_pool(spec: Spec, pool: dict[str, Any]) -> Spec:
    s = spec.model_copy()
    s.topics = [t.model_copy() for t in spec.topics]
    for i, (k, _) in pool["topic_samples"].items():
        s.topics[int(i)].sample = k
    if pool.get("persona_sample") and s.personas is not None:
        s.personas = spec.personas.model_copy()
        s.personas.sample = pool["persona_sample"][0]
    return s


def grow_pool(pool: dict[str, Any], topics: int, personas: int) -> dict[str, Any]:
    pool = json.loads(json.dumps(pool))
    if topics:
        keys = sorted(pool["topic_samples"], key=int)
        new = grow_samples([tuple(pool["topic_samples"][k]) for k in keys], topics)
        for k, v in zip(keys, new):
            pool["topic_samples"][k][0] = v
    if personas and pool.get("persona_sample"):
        cur, n = pool["persona_sample"]
        pool["persona_sample"] = [min(n, cur + personas), n]
    return pool


def growable(pool: dict[str, Any]) -> tuple[int, int]:
    t = sum(n - k for k, n in pool["topic_samples"].values())
    p = (pool["persona_sample"][1] - pool["persona_sample"][0]) if pool.get("persona_sample") else 0
    return t, p


# ---------------------------------------------------------------- the loop

def _starts(plan: pl.DataFrame | None, before_round: int) -> dict[str, int]:
    if plan is None or plan.is_empty():
        return {}
    prev = plan.filter(pl.col("round") < before_round)
    if prev.is_empty():
        return {}
    return {c: int(g) + 1 for c, g in prev.group_by("topic_id").agg(pl.col("generation").max()).iter_rows()}


def run_rounds(spec: Spec, out: str | Path | None = None, executor=None, progress: Progress | None = None,
               limit: int | None = None, score: bool = True) -> RunResult:
    """Run `spec.rounds` rounds into a run folder (resuming from the last finished round)."""
    rc = spec.rounds
    if rc is None:
        raise ValueError("run_rounds runs a spec with `rounds:`; use generator.run() for any spec")
    t0 = time.time()
    emit = progress or (lambda event, data: None)
    budget = min(rc.budget, limit) if limit is not None else rc.budget
    slices = round_slices(budget, rc.count, rc.first_round_share)
    folder = RunFolder(out or spec.output_dir())
    spec_hash = spec.hash()

    history = load_rounds(folder.path)
    for h in history:
        if h.get("spec_hash") != spec_hash:
            raise RunFolderError(f"{folder.path}: round {h['round']} was run from a different spec (hash "
                                 f"{h.get('spec_hash')} vs {spec_hash}); start a new run with --out NEW_DIR, "
                                 f"or restore the spec")
    folder.create()
    base_resolved = resolve_spec(spec)
    validate(base_resolved)
    pipeline = compile_pipeline(base_resolved)  # stages do not change between rounds
    plan_seconds = time.time() - t0
    pool = history[-1]["pool"] if history else initial_pool(spec)
    resolved = _resolve(spec, pool) if history else base_resolved
    manifest = run_manifest(folder, spec, resolved, limit)
    folder.write_manifest(manifest)  # written first: a run in progress shows its spec, prices and usage
    allocator = Allocator(rc, spec.seed)
    plan = folder.read_plan()

    own_executor = executor is None
    if executor is None:
        from generator.engine.executors.local import LocalExecutor

        executor = LocalExecutor()
    total = ExecStats()
    stop_decisions: list[dict] = []
    spent = sum(sum(h["allocation"].values()) for h in history)
    try:
        for r in range(len(history) + 1, len(slices) + 1):
            alloc_file = round_path(folder, r, "alloc")
            if alloc_file.exists():
                alloc = json.loads(alloc_file.read_text())
            else:
                alloc = _allocate(allocator, r, slices, budget, spent, pool, spec, history)
                if alloc is None or alloc.get("stop"):
                    stop_decisions = (alloc or {}).get("decisions", [])
                    break
                write_json_atomic(alloc_file, alloc)
            pool = alloc["pool"]
            resolved = _resolve(spec, pool)
            emit("round", {"round": r, "rounds": len(slices), "generations": sum(alloc["counts"].values())})
            plan = _plan_round(folder, resolved, plan, alloc, r, emit)
            st = execute_records(folder, resolved, plan, executor, emit, manifest, pipeline)
            total.model_calls += st.model_calls  # both per call: engines reused later cost no load time
            total.load_seconds += st.load_seconds
            total.gen_seconds += st.gen_seconds
            total.pending_records += st.pending_records
            total.completion_tokens += st.completion_tokens
            t_y = time.time()
            y = _measure(folder, spec, r, not pipeline.single)
            scores = y.pop("scores")
            tracked = scores.get("tracked")
            prev = history[-1]["tracked"] if history else 0.0
            gain = None if tracked is None or prev is None else tracked - prev
            spent += sum(alloc["counts"].values())
            result = {"round": r, "spec_hash": spec_hash, "slice": alloc["slice"], "allocation": alloc["counts"],
                      "spent": sum(alloc["counts"].values()), "spent_total": spent, "budget": budget,
                      "active": alloc["active"], "pool": pool, "template_weights": alloc.get("template_weights"),
                      "decisions": alloc["decisions"], "yields": y,
                      "scores": scores, "score_name": rc.score, "tracked": tracked, "gain": gain,
                      "timings": {"generate_s": round(st.gen_seconds, 3), "yields_s": round(time.time() - t_y, 3)}}
            write_json_atomic(round_path(folder, r), result)
            history.append(result)
            emit("round_done", {"round": r, "tracked": tracked, "gain": gain, "spent": spent})
    finally:
        if own_executor:
            executor.close()

    if plan is None:
        from generator.engine.run_folder import PLAN_SCHEMA

        plan = pl.DataFrame(schema={**PLAN_SCHEMA, "shard": pl.Utf8})
    manifest["rounds"] = {"finished": len(history), "planned": len(slices), "budget": budget, "spent": spent,
                          "score": rc.score, "tracked": history[-1]["tracked"] if history else None,
                          "stopped": stop_decisions or None}
    if stop_decisions:
        write_json_atomic(folder.path / "rounds" / "stop.json", {"after_round": len(history),
                                                                 "decisions": stop_decisions})
    return close_run(spec, folder, manifest, resolved, plan.height, total, plan_seconds, score, emit, t0, pipeline)


def _plan_round(folder: RunFolder, resolved: Resolved, plan: pl.DataFrame | None, alloc: dict, r: int,
                emit: Progress) -> pl.DataFrame:
    """Round `r`'s records appended to the plan (rows already planned keep their shard)."""
    t_plan = time.time()
    records = expand(resolved, counts=alloc["counts"], start=_starts(plan, r), round=r,
                     template_weights=alloc.get("template_weights"))
    known = set(plan["id"].to_list()) if plan is not None else set()
    planned_here = set(plan.filter(pl.col("round") == r)["id"].to_list()) if plan is not None else set()
    if planned_here - {x.id for x in records}:
        raise RunFolderError(f"{folder.path}: round {r} no longer plans the records it started with; "
                             f"start a new run with --out NEW_DIR, or restore the spec")
    new = [x for x in records if x.id not in known]
    plan = assign_shards(plan, new, resolved.spec.run.shard_size)
    if new:
        folder.write_plan(plan)
    emit("plan", {"records": plan.height, "new": len(new), "seconds": time.time() - t_plan})
    return plan


def _measure(folder: RunFolder, spec: Spec, r: int, pipeline: bool) -> dict[str, Any]:
    """Round `r`'s yields and the run's global scores (generator.feedback.yields)."""
    rc = spec.rounds
    frame = folder.read_generations()
    if pipeline:  # a record counts once: its final row (rejected ones are flagged)
        frame = frame.filter(pl.col("final"))
    return compute_yields(frame, r, embedder=rc.embedder, metric=rc.allocator.yield_metric, score=rc.score,
                          seed=spec.seed, weight_column=rc.signal_column if rc.signal == "judge" else None)


def _resolve(spec: Spec, pool: dict[str, Any]) -> Resolved:
    return resolve_spec(spec_with_pool(spec, pool))


def _allocate(allocator: Allocator, r: int, slices: list[int], budget: int, spent: int, pool: dict,
              spec: Spec, history: list[dict]) -> dict | None:
    """The allocation record for round `r`, or a record with `stop: true`; None when no budget is left."""
    left = budget - spent - sum(slices[r:])  # this round's slice plus anything earlier rounds left unspent
    if left <= 0 and budget - spent <= 0:
        return None
    resolved = _resolve(spec, pool)
    cells = [(c.id, c.weight) for c in resolved.cells]
    pre = Allocation(r)
    if r > 1:
        gt, gp = growable(pool)
        pre = allocator.before_round(r, history, cells, gt, gp)
        if pre.stop:
            return {"round": r, "stop": True, "decisions": pre.decisions}
        if pre.grow_topics or pre.grow_personas:
            pool = grow_pool(pool, pre.grow_topics, pre.grow_personas)
            cells = [(c.id, c.weight) for c in _resolve(spec, pool).cells]
    p = allocator.allocate(r, max(left, 0), cells, history)
    tw, tdec = allocator.template_weights(r, history, [(t.name, w) for t, w in resolved.templates])
    return {"round": r, "slice": max(left, 0), "counts": p.counts, "active": [c for c, _ in cells], "pool": pool,
            "template_weights": tw, "decisions": pre.decisions + tdec + p.decisions, "stop": False}
