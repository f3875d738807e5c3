"""The feedback loop: generate in rounds and move each round's budget toward cells with high yield.

    once:     resolve the spec (every library file read once; the pool's samples are drawn from it
              with planner.with_samples, never by reading the files again)
    round r:  allocate (generator.feedback.allocator) -> RUN/rounds/round-NNN.alloc.json
              (per-cell counts, the pool, and the round's template mix: `template_weights`)
              one pass of the engine core (runner.run_pass, as `synthgen run` makes one): the
              round's records, expand_stream(resolved with the pool, counts, start=generations so
              far, round=r, template_weights), streamed into the plan and checked against what it
              planned for round r before; then the pending shards are generated
              (append-stable: the mix only affects the new generation indices)
              yields + global scores (generator.feedback.yields) and what each cell and template
              cost in tokens and money (generator.feedback.costs) -> RUN/rounds/round-NNN.json   (round finished)

A resumed run skips finished rounds (their JSON exists), after re-planning their records from their
round files and checking them against the plan, as a single pass does: an edited template, a
changed model or sampling is refused with the same line. An interrupted round re-reads its
allocation file, so it plans exactly the same records and only its missing shards reach the model.
Everything an allocation holds (counts, pool, template weights) is a function of the round files
written before it, so a round re-derived from scratch plans the same records too.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from generator.feedback.allocator import Allocation, Allocator, grow_samples, round_slices
from generator.core.errors import RunFolderError
from generator.core.run_layout import read_rounds, round_file
from generator.engine.planner import Record, Resolved, expand_stream, resolve_spec, validate, with_samples
from generator.runs import close_run
from generator.engine.runner import (ExecStats, Progress, RunResult, compile_pipeline, executor_for, plan_into,
                                     run_manifest, run_pass)
from generator.config.spec import Spec, TreeTopics
from generator.core.files import write_json_atomic
from generator.engine.run_folder import RunFolder
from generator.feedback.costs import round_costs
from generator.feedback.yields import compute_yields
from generator.runs.spend import prices


def round_path(folder: RunFolder, r: int, kind: str = "") -> Path:
    return round_file(folder.path, r, kind)


def load_rounds(run_dir: Any) -> list[dict]:
    """Finished rounds of a run folder (a local path or an fsspec URL), in order (stops at the first
    missing round)."""
    return read_rounds(run_dir)


# ---------------------------------------------------------------- the pool (topic / persona samples)

def initial_pool(resolved: Resolved) -> dict[str, Any]:
    """Growable samples: tree sources with `sample:` below their cell count, and `personas.sample`."""
    spec = resolved.spec
    topics: dict[str, list[int]] = {}
    for i, src in enumerate(spec.topics):
        if isinstance(src, TreeTopics) and src.sample is not None:
            n = len(resolved.source_cells[i])
            topics[str(i)] = [min(src.sample, n), n]
    personas = None
    if spec.personas is not None and spec.personas.sample is not None and resolved.persona_pool is not None:
        n = len(resolved.persona_pool)
        personas = [min(spec.personas.sample, n), n]
    return {"topic_samples": topics, "persona_sample": personas}


def with_pool(resolved: Resolved, pool: dict[str, Any]) -> Resolved:
    """The resolved spec with the pool's samples (drawn from what it loaded: no file is read)."""
    persona = pool.get("persona_sample")
    return with_samples(resolved, {int(i): k for i, (k, _) in pool["topic_samples"].items()},
                        persona[0] if persona else None)


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

def _starts(history: list[dict]) -> dict[str, int]:
    """Each cell's next generation index after the finished rounds: the sum of their allocations."""
    out: dict[str, int] = {}
    for h in history:
        for cell, n in h["allocation"].items():
            out[cell] = out.get(cell, 0) + n
    return out


def round_records(resolved: Resolved, alloc: dict, r: int, history: list[dict]) -> Iterator[Record]:
    """Round `r`'s records, rendered as they are taken: `resolved` already holds the round's pool."""
    return expand_stream(resolved, counts=alloc["counts"], start=_starts(history), round=r,
                         template_weights=alloc.get("template_weights"))


def _finished_records(resolved: Resolved, history: list[dict]) -> Iterator[Record]:
    """The records of every finished round, re-planned from its round file."""
    for i, h in enumerate(history):
        alloc = {"counts": h["allocation"], "template_weights": h.get("template_weights")}
        yield from round_records(with_pool(resolved, h["pool"]), alloc, h["round"], history[:i])


def run_rounds(spec: Spec, out: str | Path | None = None, executor=None, progress: Progress | None = None,
               limit: int | None = None, score: bool = True, budget=None) -> RunResult:
    """Run `spec.rounds` rounds into a run folder (resuming from the last finished round). `budget`
    (config.target.BudgetConfig): `records` caps the generations like `limit`; calls, tokens, cost
    and seconds are checked before each request, and a closed gate ends the loop after its round."""
    rc = spec.rounds
    if rc is None:
        raise ValueError("run_rounds runs a spec with `rounds:`; use generator.run() for any spec")
    t0 = time.time()
    emit = progress or (lambda event, data: None)
    cap = min(x for x in (limit, budget.records if budget is not None else None) if x is not None) \
        if limit is not None or (budget is not None and budget.records is not None) else None
    spend, budget = budget, (min(rc.budget, cap) if cap is not None else rc.budget)
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
    base = resolve_spec(spec)  # the only time library files are read: each round's pool is drawn from it
    validate(base)
    pipeline = compile_pipeline(base)  # stages do not change between rounds
    pool = history[-1]["pool"] if history else initial_pool(base)
    resolved = with_pool(base, pool)
    planned = folder.plan_column("shard").len() if folder.has_plan() else 0
    if history:  # the finished rounds' records, checked against the plan as a single pass checks its own
        planned, _ = plan_into(folder, _finished_records(base, history), spec.run.shard_size,
                               rounds={h["round"] for h in history})
    plan_seconds = time.time() - t0
    manifest = run_manifest(folder, spec, resolved, limit, pipeline)
    allocator = Allocator(rc, spec.seed)
    gate = None
    if spend is not None:
        from generator.runs.spend import open_gate

        gate = open_gate(spec, folder, manifest, spend)

    total = ExecStats()
    stop_decisions: list[dict] = []
    spent = sum(sum(h["allocation"].values()) for h in history)
    with executor_for(executor) as ex:
        for r in range(len(history) + 1, len(slices) + 1):
            alloc_file = round_path(folder, r, "alloc")
            if alloc_file.exists():
                alloc = json.loads(alloc_file.read_text())
            else:
                alloc = _allocate(allocator, r, slices, budget, spent, pool, base, history)
                if alloc is None or alloc.get("stop"):
                    stop_decisions = (alloc or {}).get("decisions", [])
                    break
                write_json_atomic(alloc_file, alloc)
            pool = alloc["pool"]
            resolved = with_pool(base, pool)
            emit("round", {"round": r, "rounds": len(slices), "generations": sum(alloc["counts"].values())})
            done = run_pass(folder, resolved, round_records(resolved, alloc, r, history), ex, emit, manifest,
                            pipeline, rounds={r}, gate=gate)
            planned, st = done.planned, done.stats
            plan_seconds += done.plan_seconds
            total.model_calls += st.model_calls  # both per call: engines reused later cost no load time
            total.load_seconds += st.load_seconds
            total.gen_seconds += st.gen_seconds
            total.pending_records += st.pending_records
            total.completion_tokens += st.completion_tokens
            if gate is not None and gate.closed is not None:
                break  # the budget ended the round: no round file, so a resume runs the rest of it
            t_y = time.time()
            y, costs = _measure(folder, spec, r, not pipeline.single)
            scores = y.pop("scores")
            tracked = scores.get("tracked")
            prev = history[-1]["tracked"] if history else 0.0
            gain = None if tracked is None or prev is None else tracked - prev
            spent += sum(alloc["counts"].values())
            result = {"round": r, "spec_hash": spec_hash, "slice": alloc["slice"], "allocation": alloc["counts"],
                      "spent": sum(alloc["counts"].values()), "spent_total": spent, "budget": budget,
                      "active": alloc["active"], "pool": pool, "template_weights": alloc.get("template_weights"),
                      "decisions": alloc["decisions"], "yields": y, "costs": costs,
                      "scores": scores, "score_name": rc.score, "tracked": tracked, "gain": gain,
                      "timings": {"generate_s": round(st.gen_seconds, 3), "yields_s": round(time.time() - t_y, 3)}}
            write_json_atomic(round_path(folder, r), result)
            history.append(result)
            emit("round_done", {"round": r, "tracked": tracked, "gain": gain, "spent": spent})

    manifest["rounds"] = {"finished": len(history), "planned": len(slices), "budget": budget, "spent": spent,
                          "score": rc.score, "tracked": history[-1]["tracked"] if history else None,
                          "stopped": stop_decisions or None}
    if gate is not None:
        manifest["budget"] = gate.summary()
    if stop_decisions:
        write_json_atomic(folder.path / "rounds" / "stop.json", {"after_round": len(history),
                                                                 "decisions": stop_decisions})
    return close_run(spec, folder, manifest, resolved, planned, total, plan_seconds, score, emit, t0, pipeline)


def _measure(folder: RunFolder, spec: Spec, r: int, pipeline: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Round `r`'s yields with the run's global scores (generator.feedback.yields), and its cost per
    cell and template (generator.feedback.costs: every attempt's tokens, rejected ones included)."""
    rc = spec.rounds
    every = folder.read_generations()
    frame = every.filter(pl.col("final")) if pipeline else every  # a record's yield: its final row
    y = compute_yields(frame, r, embedder=rc.embedder, metric=rc.allocator.yield_metric, score=rc.score,
                       seed=spec.seed, weight_column=rc.signal_column if rc.signal == "judge" else None)
    return y, round_costs(every, r, prices(spec))


def _allocate(allocator: Allocator, r: int, slices: list[int], budget: int, spent: int, pool: dict,
              base: Resolved, history: list[dict]) -> dict | None:
    """The allocation record for round `r`, or a record with `stop: true`; None when no budget is left."""
    left = budget - spent - sum(slices[r:])  # this round's slice plus anything earlier rounds left unspent
    if left <= 0 and budget - spent <= 0:
        return None
    resolved = with_pool(base, pool)
    cells = [(c.id, c.weight) for c in resolved.cells]
    pre = Allocation(r)
    if r > 1:
        gt, gp = growable(pool)
        pre = allocator.before_round(r, history, cells, gt, gp)
        if pre.stop:
            return {"round": r, "stop": True, "decisions": pre.decisions}
        if pre.grow_topics or pre.grow_personas:
            pool = grow_pool(pool, pre.grow_topics, pre.grow_personas)
            cells = [(c.id, c.weight) for c in with_pool(base, pool).cells]
    p = allocator.allocate(r, max(left, 0), cells, history)
    tw, tdec = allocator.template_weights(r, history, [(t.name, w) for t, w in resolved.templates])
    return {"round": r, "slice": max(left, 0), "counts": p.counts, "active": [c for c, _ in cells], "pool": pool,
            "template_weights": tw, "decisions": pre.decisions + tdec + p.decisions, "stop": False}
