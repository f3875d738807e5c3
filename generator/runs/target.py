"""A run toward a target: N accepted records (`target:` / `--target N`), within a budget.

The records are the spec's topic cells round-robin by generation index (cell 1 g0, cell 2 g0, ...,
cell 1 g1, ...) with no end: the first K of that order are the same records (ids, seeds, prompts)
whatever K is, so planning more appends to the plan exactly as raising a count does. The loop:

    plan the first K records (K = the target at first; on a resume, what the folder planned)
    one pass of the engine core (runner.run_pass): every planned record not written yet is run,
        with the budget gate asked before each request
    count, in plan order, the records accepted (final status `ok`, and `where:` when given)
    reached: stop; else K grows by what the acceptance so far says the rest needs (at most doubling)

Which records count is decided in plan order, never in the order they finish: the first N
accepted of the plan. A pass finishes every record it planned, so the last pass may accept more
than the target needs; those records are kept (they are paid for) with status `beyond_target`,
which exports skip, and a later, larger target counts them again. Each pass's size is a function of
the passes before it, so a rerun, or a resume after a kill, plans the same records and ends with
the same N.

While records end, the acceptance seen so far is compared with what is left to spend (records,
calls, tokens, cost): when even its upper confidence bound cannot reach the target, one line says
so, naming the stage that rejects most, and `on_hopeless: stop` closes the gate.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl

from generator.config.spec import Spec
from generator.config.target import BudgetConfig, TargetConfig
from generator.core.errors import SpecError
from generator.core.run_layout import scan_generation_files
from generator.engine.budget import Gate
from generator.engine.planner import Record, Resolved, render_pairs, resolve_spec, spec_error, validate
from generator.engine.run_folder import RunFolder
from generator.engine.runner import (ExecStats, Progress, RunResult, compile_pipeline, executor_for, run_manifest,
                                     run_pass)
from generator.engine.tally import OK, Tally, wilson
from generator.runs.closeout import close_run
from generator.runs.spend import open_gate

log = logging.getLogger(__name__)

PLAN_FACTOR = 20  # without budget.records, a target plans at most this many records per accepted one
MIN_SEEN = 10  # records ended before the acceptance is judged hopeless
BEYOND = "beyond_target"


def target_records(resolved: Resolved, k: int) -> Iterator[Record]:
    """The first `k` records of the target order: round-robin over cells by generation index."""
    pairs = itertools.islice(((cell, g) for g in itertools.count() for cell in resolved.cells), k)
    return render_pairs(resolved, pairs, [t for t, _ in resolved.templates], [w for _, w in resolved.templates])


def row_env(row: dict) -> dict[str, Any]:
    """A final row as a `where:` expression sees it: `text`, `status`, and a stage's columns as
    `stage.column` (JSON answers as `stage.json.field`)."""
    import json

    env: dict[str, Any] = {}
    for key, value in row.items():
        head, dot, rest = key.partition(".")
        if not dot:
            env.setdefault(key, value)
            continue
        if rest == "json" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        env.setdefault(head, {})
        if isinstance(env[head], dict):
            env[head][rest] = value
    return env


def acceptor(spec: Spec, target: TargetConfig) -> Callable[[dict], bool] | None:
    if target.where is None:
        return None
    from generator.engine.pipeline.expressions import ExpressionError, parse

    try:
        expr = parse(target.where)
    except ExpressionError as exc:
        raise spec_error(spec, ("target", "where"), f"{exc}; write e.g. `judge.score >= 4`") from None
    return lambda row: expr.passes(row_env(row))


def settle(folder: RunFolder, ids: list[str], accepts: Callable[[dict], bool] | None
           ) -> tuple[list[str], int, dict[str, str]]:
    """(accepted ids in plan order, records ended, id -> status) over the planned `ids`."""
    lf = scan_generation_files(folder.path)
    if lf is None:
        return [], 0, {}
    if "final" in lf.collect_schema().names():
        lf = lf.filter(pl.col("final"))
    rows = {r["id"]: r for r in lf.collect().iter_rows(named=True)}
    accepted = [i for i in ids if i in rows and rows[i]["status"] in OK and (accepts is None or accepts(rows[i]))]
    return accepted, sum(1 for i in ids if i in rows), {i: rows[i]["status"] for i in ids if i in rows}


def mark(folder: RunFolder, status: dict[str, str], want: dict[str, str]) -> int:
    """Rewrite the final rows whose status must change (`want`: id -> new status); returns how many."""
    change = {i: s for i, s in want.items() if status.get(i) != s}
    if not change:
        return 0
    shards: dict[str, list[str]] = {}
    for frame in folder.plan_batches(["id", "shard"]):
        for rid, shard in frame.iter_rows():
            if rid in change:
                shards.setdefault(shard, []).append(rid)
    for shard, rids in shards.items():
        def edit(frame: pl.DataFrame, rids=rids) -> pl.DataFrame:
            hit = pl.col("id").is_in(rids)
            if "final" in frame.columns:
                hit = hit & pl.col("final")
            new = pl.col("id").replace({i: change[i] for i in rids})
            return frame.with_columns(pl.when(hit).then(new).otherwise(pl.col("status")).alias("status"))
        folder.rewrite_shard(shard, edit)
    return len(change)


def next_size(k: int, need: int, accepted: int, ended: int) -> int:
    """Records to plan next: what the acceptance so far (Laplace-smoothed) says `need` more takes,
    at least `need`, at most the plan so far again (a plan doubles at most per pass)."""
    p = (accepted + 1) / (ended + 2)
    return max(need, min(math.ceil(need / p), max(k, need)))


class Watch:
    """The progress callback between the engine and the display: counts rows as they end (the live
    tally), tells the display where the target stands, and judges the target hopeless."""

    def __init__(self, emit: Progress, target: TargetConfig, tally: Tally, gate: Gate, cap: int, cap_why: str):
        self.emit, self.target, self.tally, self.gate = emit, target, tally, gate
        self.cap, self.cap_why = cap, cap_why
        self.base_ended = tally.ended  # ended before this invocation: costs per record count from here
        self.warned: str | None = None

    def __call__(self, event: str, data: dict) -> None:
        if event in ("record", "attempt"):
            self.tally.add(data)
        self.emit(event, data)
        if event == "record":
            self.emit("target", self.view())
            if self.warned is None:
                self._judge()

    def view(self) -> dict[str, Any]:
        t = self.tally
        return {"accepted": t.accepted, "target": self.target.accepted, "ended": t.ended, "attempts": t.attempts,
                "steps": t.steps, "rejected": t.rejections(), "estimate": self.estimate()}

    def estimate(self) -> dict[str, float] | None:
        """What the rest of the target should cost at the acceptance and spending seen so far."""
        t, g = self.tally, self.gate
        need = self.target.accepted - t.accepted
        now = t.ended - self.base_ended
        if need <= 0 or now <= 0 or not t.ended:
            return None
        p = (t.accepted + 0.5) / (t.ended + 1)
        more = need / p
        per = {k: (g.spent[k] - g.before[k]) / now for k in ("calls", "tokens", "cost")}
        return {"records": round(more), **{k: round(more * v, 6) for k, v in per.items()}}

    def _judge(self) -> None:
        t, g = self.tally, self.gate
        now = t.ended - self.base_ended
        if t.ended < MIN_SEEN or now <= 0:
            return
        need = self.target.accepted - t.accepted
        if need <= 0:
            return
        _, hi = wilson(t.accepted, t.ended, self.target.confidence)
        more = need / hi  # records still to end, at the most the acceptance could plausibly be
        short = None
        if more > self.cap - t.ended:
            short = f"{self.cap - t.ended:,} more records may be planned ({self.cap_why})"
        for key in ("calls", "tokens", "cost"):
            limit = g.limits.get(key)
            if short is None and limit is not None:
                per = (g.spent[key] - g.before[key]) / now
                left = limit - g.spent[key]
                if more * per > left:
                    short = f"about {more * per:,.{2 if key == 'cost' else 0}f} {key} needed, {left:,.{2 if key == 'cost' else 0}f} left"
        if short is None:
            return
        line = (f"target {self.target.accepted} out of reach: {t.accepted} of {t.ended} records accepted (at most "
                f"{hi:.0%} at {self.target.confidence:.0%} confidence), so at least {more:,.0f} more records; "
                f"{short}; {t.worst_stage() or 'no stage ran'}")
        self.warned = line
        log.warning("%s", line)
        self.emit("warning", {"line": line, "stop": self.target.on_hopeless == "stop"})
        if self.target.on_hopeless == "stop":
            g.close("hopeless", line)


def seed_tally(folder: RunFolder, stages: list[str], accepts) -> Tally:
    """The tally of the rows already written (a resume counts what earlier sessions ended)."""
    tally = Tally(stages, accepts)
    lf = scan_generation_files(folder.path)
    if lf is not None:
        for row in lf.collect().iter_rows(named=True):
            tally.add(row)
    return tally


def run_target(spec: Spec, target: TargetConfig, budget: BudgetConfig | None, out: str | Path | None = None,
               executor=None, progress: Progress | None = None, score: bool = True) -> RunResult:
    """Run `spec` until `target.accepted` records are accepted, the budget ends it, or it is hopeless."""
    t0 = time.time()
    emit = progress or (lambda event, data: None)
    resolved = resolve_spec(spec)
    validate(resolved)
    accepts = acceptor(spec, target)
    pipeline = compile_pipeline(resolved)
    folder = RunFolder(out or spec.output_dir())
    folder.create()
    manifest = run_manifest(folder, spec, resolved, None, pipeline)
    gate = open_gate(spec, folder, manifest, budget)
    n = target.accepted
    if budget is not None and budget.records is not None:
        cap, cap_why = budget.records, "budget.records"
    else:
        cap, cap_why = PLAN_FACTOR * n, f"{PLAN_FACTOR} x the target without budget.records"
    cap = min(cap, spec.run.max_records)
    planned = folder.plan_column("shard").len() if folder.has_plan() else 0
    if planned > cap:
        raise SpecError(f"{folder.path} already plans {planned} records, more than this target may ({cap}, "
                        f"{cap_why}); raise budget.records, or start a new run with --out NEW_DIR")
    k = planned or min(n, cap)
    watch = Watch(emit, target, seed_tally(folder, pipeline.order, accepts), gate, cap, cap_why)
    total, plan_seconds, passes = ExecStats(), 0.0, 0
    accepted: list[str] = []
    status: dict[str, str] = {}
    ids: list[str] = []
    stopped = None
    with executor_for(executor) as ex:
        while True:
            ids = []
            records = (ids.append(r.id) or r for r in target_records(resolved, k))
            emit("target", {**watch.view(), "planning": k})
            done = run_pass(folder, resolved, records, ex, watch, manifest, pipeline, since=t0 if not passes else None,
                            gate=gate)
            passes += 1
            plan_seconds += done.plan_seconds
            st = done.stats
            for f in ("model_calls", "load_seconds", "gen_seconds", "pending_records", "completion_tokens", "parked"):
                setattr(total, f, getattr(total, f) + getattr(st, f))
            accepted, ended, status = settle(folder, ids, accepts)
            log.info("target pass %d: %d records planned, %d ended, %d accepted of %d", passes, k, ended,
                     len(accepted), n)
            if len(accepted) >= n:
                break
            if gate.closed is not None:
                stopped = gate.closed
                break
            if k >= cap:
                stopped = "records"
                break
            k = min(k + next_size(k, n - len(accepted), len(accepted), ended), cap)
    chosen, beyond = accepted[:n], accepted[n:]
    moved = mark(folder, status, {**{i: "ok" for i in chosen}, **{i: BEYOND for i in beyond}})
    manifest["target"] = {"accepted": n, "where": target.where, "reached": len(chosen) >= n,
                          "accepted_so_far": len(chosen), "beyond_target": len(beyond), "planned": k,
                          "passes": passes, "stopped_by": stopped, "hopeless": watch.warned,
                          "last_accepted": chosen[-1] if chosen else None, "statuses_rewritten": moved}
    manifest["budget"] = gate.summary()
    if stopped and gate.closed is None:
        manifest["budget"]["stopped_by"] = stopped
    return close_run(spec, folder, manifest, resolved, k, total, plan_seconds, score, emit, t0, pipeline)
