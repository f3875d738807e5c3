"""`synthgen run` end to end: the engine's run (plan, generate, count) and its close-out (usage in
the manifest, the dataset card, the spec's scores)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from generator.config.spec import Spec
from generator.core.errors import missing_extra
from generator.core.run_layout import SCORES
from generator.engine.planner import Resolved, plan_stream
from generator.engine.run_folder import RunFolder
from generator.engine.runner import (ExecStats, Progress, RunResult, compile_pipeline, executor_for, record_counts,
                                     run_manifest, run_pass)
from scoring import api as scoring_api

log = logging.getLogger(__name__)


def run_spec(spec: Spec, out: str | Path | None = None, limit: int | None = None, executor=None,
             progress: Progress | None = None, score: bool = True, budget=None) -> RunResult:
    """Generate everything `spec` plans into a run folder (resuming one that exists). `budget`
    (config.target.BudgetConfig): `records` caps the plan like `limit`; the rest is the gate's."""
    if spec.rounds is not None:
        # rounds live a layer above the engine: `generator.run` hands such specs to the feedback loop
        raise ValueError("run_spec runs a single-pass spec; use generator.run() for a spec with `rounds:`")
    t0 = time.time()
    emit = progress or (lambda event, data: None)
    if budget is not None and budget.records is not None:
        limit = budget.records if limit is None else min(limit, budget.records)
    resolved, records = plan_stream(spec, limit=limit)
    pipeline = compile_pipeline(resolved)
    folder = RunFolder(out or spec.output_dir())
    folder.create()
    manifest = run_manifest(folder, spec, resolved, limit, pipeline)
    gate = None
    if budget is not None:
        from generator.runs.spend import open_gate

        gate = open_gate(spec, folder, manifest, budget)
    with executor_for(executor) as ex:
        done = run_pass(folder, resolved, records, ex, emit, manifest, pipeline, since=t0, gate=gate)
    if gate is not None:
        manifest["budget"] = gate.summary()
    return close_run(spec, folder, manifest, resolved, done.planned, done.stats, done.plan_seconds, score, emit,
                     t0, pipeline)


def close_run(spec: Spec, folder: RunFolder, manifest: dict, resolved: Resolved, planned: int,
              stats: "ExecStats", plan_seconds: float, score: bool, emit: Progress, t0: float,
              pipeline=None) -> RunResult:
    """The end of every run (single or rounds): manifest and card, the spec's scores, the result."""
    generated, statuses = record_counts(folder, manifest, planned, stats, plan_seconds, pipeline)
    manifest["usage"] = run_usage(folder.path, manifest)
    folder.write_manifest(manifest)
    _card(folder, manifest, resolved)
    scores = None
    if score and spec.scoring is not None and generated:
        scores = score_run(folder, spec)
    emit("done", {"seconds": time.time() - t0})
    log.info("done: %d of %d records generated in %.1fs; statuses %s", generated, planned, time.time() - t0,
             dict(sorted(statuses.items())))
    bad = {k: v for k, v in statuses.items() if k != "ok"}
    if bad:  # after "done": the live display has stopped, so the line stands on its own
        log.warning("%d records were flagged (%s); they stay in the run with their status and are skipped by "
                    "exports.", sum(bad.values()), dict(sorted(bad.items())), extra={"label": "note"})
    return RunResult(run_dir=folder.path, manifest=manifest, planned=planned, generated=generated,
                     model_calls=stats.model_calls, statuses=statuses, scores=scores)


def run_usage(run_dir: str | Path, manifest: dict) -> dict:
    """The manifest's `usage`: per model over every session (resumes summed), and this session's."""
    from generator.export.usage import compute_usage

    u = compute_usage(run_dir, manifest)
    this = next((x for x in u["sessions"] if x["session"] == manifest.get("session")), None)
    return {"source": u["source"], "models": u["models"], "stages": u["by"].get("stage", []), "total": u["total"],
            "sessions": len(u["sessions"]), "this_session": this}


def _card(folder: RunFolder, manifest: dict, resolved: Resolved) -> None:
    from generator.export.card import write_run_card

    write_run_card(folder.path, manifest, personas=len(resolved.personas) if resolved.personas else 0,
                   before=folder.check_lock)


def score_run(folder: RunFolder, spec: Spec) -> dict | None:
    """The spec's chosen metrics on the run's `ok` rows, stored as `scores.json`. A metric whose
    library is missing is one line naming the extra to install (the generated records are kept:
    rerunning the command after installing it only scores)."""
    try:
        return _score(folder, spec)
    except ModuleNotFoundError as exc:
        err = missing_extra(exc, f"scoring ({', '.join(spec.scoring.metrics)})")
        if err is None:
            raise  # not an optional package: a bug, shown as it is
        raise err from None


def _score(folder: RunFolder, spec: Spec) -> dict:
    cfg = spec.scoring
    by = list(dict.fromkeys(cfg.by)) or [None]
    # one pass per grouping: the first fills `per_group`; every one is kept under `per_by`
    scores = scoring_api.score([folder.path], metrics=cfg.metrics, by=by[0], sample=cfg.sample,
                               seed=spec.seed, embedder=cfg.embedder)
    if by[0] is not None:
        scores["per_by"] = {}
        for b in by:
            res = scores if b == by[0] else scoring_api.score(
                [folder.path], metrics=cfg.metrics, by=b, sample=cfg.sample, seed=spec.seed, embedder=cfg.embedder)
            scores["per_by"][b] = {p: {n: m.get("per_group") for n, m in ds["metrics"].items()}
                                   for p, ds in res["datasets"].items()}
    folder.write_text(SCORES, json.dumps(scores, indent=2, sort_keys=True, default=str) + "\n")
    return scores
