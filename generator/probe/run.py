"""`run_probe`: every arm x every seed, trained and evaluated alike; probe.json kept current as it goes.

Layout of the out folder:

    probe.json                  the results (schema in docs/probe.md); rewritten after every (arm, seed)
    probe.png                   metric against synthetic fraction and against diversity
    base.json                   the base model's evaluation (step 0), done once
    arms/<arm>/seed-<s>/        checkpoints/ while training, final/ after, result.json when evaluated

Rerunning the same command skips finished (arm, seed) pairs and resumes a killed one from its last
checkpoint. A rerun with different settings into the same folder is refused.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

from generator import __version__
from generator.core.errors import SynthgenError
from generator.probe.config import PROBE_NAME, PROBE_SCHEMA_VERSION, ProbeSettings
from generator.probe.data import (Arm, discover_arms, gsm8k_problems, held_out_synthetic, real_eval_items,
                   synthetic_eval_items)
from generator.probe.report import arm_summary, differences, flat_metrics, plot, write_probe

RESULT_NAME = "result.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _diversity(arms: list[Arm], metrics: list[str], seed: int) -> dict:
    """Cheap diversity scores of each arm's synthetic part, at one whitespace-token budget for all."""
    from scoring import score_texts

    texts = {a.name: a.synthetic_texts() for a in arms}
    sizes = [sum(len(t.split()) for t in ts) for ts in texts.values() if ts]
    budget = min(sizes) if sizes else None
    per_arm = {}
    for a in arms:
        if not texts[a.name] or not metrics:
            per_arm[a.name] = None
            continue
        res = score_texts(texts[a.name], metrics, seed=seed, token_budget=budget)
        per_arm[a.name] = {k: r.value for k, r in res.items()}
    return {"metrics": list(metrics), "x_metric": metrics[0] if metrics else None, "token_budget": budget,
            "rule": "scoring.score_texts on the synthetic documents of each mix, lexical metrics on a seeded "
                    "sample of token_budget whitespace tokens (the smallest synthetic part)",
            "per_arm": per_arm}


def _versions() -> dict:
    import importlib.metadata as md

    v = {"synthgen": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "accelerate"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


def _check_out(out: Path, settings: ProbeSettings, arm_names: list[str]) -> None:
    path = out / PROBE_NAME
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return
    if old.get("fingerprint") != settings.fingerprint():
        changed = sorted(k for k, v in settings.resolved().items()
                         if k != "keep_models" and old.get("settings", {}).get(k) != v)
        raise SynthgenError(f"{path}: this folder holds a probe with other settings ({', '.join(changed) or 'version'} "
                            f"differ); choose another --out, or rerun with the same settings to resume")
    if [a["name"] for a in old.get("arms", [])] != arm_names:
        raise SynthgenError(f"{path}: this folder holds a probe of other mixes ({', '.join(a['name'] for a in old.get('arms', []))}); "
                            f"choose another --out")


def _eval_sets(arms: list[Arm], s: ProbeSettings) -> tuple[list, list, list, dict]:
    layout = arms[0].layout
    before = {a.name: sum(r.get("kind") == "synthetic" for r in a.rows) for a in arms}
    rows, held = held_out_synthetic(arms, s.eval_synthetic_docs, s.seeds[0])
    emptied = [a.name for a in arms if before[a.name] and not any(r.get("kind") == "synthetic" for r in a.rows)]
    if emptied:  # the arm would train on real text only: its ratio would be a label, not a fact
        raise SynthgenError(
            f"holding out {held['docs']} synthetic documents for evaluation leaves no synthetic training data in "
            f"{', '.join(emptied)} ({held['unused_rows']} came from rows no mix selected, {held['removed_from_training']} "
            f"had to be taken out of every arm); lower --eval-synthetic-docs, mix fewer tokens, or generate more records")
    held["removed_from_arms"] = {a.name: before[a.name] - sum(r.get("kind") == "synthetic" for r in a.rows) for a in arms}
    syn_items = synthetic_eval_items(rows, layout)
    real_items = real_eval_items(s.eval_real, layout, s.eval_docs, s.eval_text_field, s.eval_text_template,
                                 s.eval_user_template, s.eval_assistant_template) if s.eval_real else []
    problems = gsm8k_problems(s.gsm8k, s.gsm8k_n) if s.gsm8k else []
    info = {"real": {"path": str(s.eval_real) if s.eval_real else None, "docs": len(real_items)},
            "synthetic": {**held, "items": len(syn_items)},
            "gsm8k": {"path": str(s.gsm8k) if s.gsm8k else None, "problems": len(problems),
                      "prompt": s.gsm8k_prompt if layout == "text" else "chat template, user = question",
                      "decoding": f"greedy, max_new_tokens {s.gsm8k_max_new_tokens}"},
            "lm_eval": {"tasks": s.lm_eval_tasks, "limit": s.lm_eval_limit, "backend": "vllm"}
            if s.lm_eval_tasks else None,
            "perplexity": f"exp(mean NLL per target token), each item cut to {s.eval_len()} tokens"}
    return real_items, syn_items, problems, info


def run_probe(mixes: list[Path], settings: ProbeSettings, out: Path, log: Callable[[str], None] = print,
              progress: bool = True) -> dict:
    """Train and evaluate every arm with every seed; returns the probe.json content."""
    from generator.probe.evaluate import evaluate_model, lm_eval_available
    from generator.probe.train import resolve_base

    if settings.lm_eval_tasks and not lm_eval_available():
        raise SynthgenError("--lm-eval-task needs lm-evaluation-harness with its vLLM backend; install it with "
                            "`pip install \"lm_eval[vllm]\"`, or drop --lm-eval-task")
    out = Path(out)
    arms = discover_arms(mixes)
    _check_out(out, settings, [a.name for a in arms])
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_base(settings.model)
    real_items, syn_items, problems, eval_info = _eval_sets(arms, settings)
    layout = arms[0].layout
    log(f"{len(arms)} arm(s) x {len(settings.seeds)} seed(s), {settings.steps()} steps each "
        f"({settings.tokens_per_step():,} tokens/step); eval: {len(real_items)} real, {len(syn_items)} synthetic "
        f"item(s), {len(problems)} GSM8K problem(s)")
    probe = {"kind": "synthgen-probe", "probe_version": PROBE_SCHEMA_VERSION, "status": "running",
             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions(),
             "fingerprint": settings.fingerprint(), "settings": settings.resolved(),
             "base_model": {"name": settings.model, "path": str(base)}, "layout": layout, "eval": eval_info,
             "diversity": _diversity(arms, settings.diversity_metrics, settings.seeds[0]),
             "base": None, "arms": [], "differences": [], "plot": None}
    div = probe["diversity"].pop("per_arm")
    for a in arms:
        probe["arms"].append({"name": a.name, "ratio": a.ratio, "mix_dir": str(a.mix_dir),
                              "folder": str(a.folder), "synthetic_fraction": a.synthetic_fraction,
                              "tokens": a.tokens, "docs": len(a.rows), "diversity": div[a.name],
                              "runs": [{"seed": s, "status": "pending"} for s in settings.seeds], "summary": {}})
    base_file = out / "base.json"
    if base_file.is_file() and json.loads(base_file.read_text()).get("fingerprint") == settings.fingerprint():
        probe["base"] = json.loads(base_file.read_text())["base"]
    else:
        log("evaluating the base model")
        ev = evaluate_model(base, settings, layout, real_items, syn_items, problems, settings.seeds[0])
        probe["base"] = {"eval": ev, "metrics": flat_metrics({}, ev)}
        base_file.write_text(json.dumps({"fingerprint": settings.fingerprint(), "base": probe["base"]}, indent=2))
    write_probe(out, probe)
    total = len(arms) * len(settings.seeds)
    k = 0
    for i, seed in enumerate(settings.seeds):  # seed-major: an interrupted probe has every arm at seed 0 first
        for a, entry in zip(arms, probe["arms"]):
            k += 1
            d = out / "arms" / _safe(a.name) / f"seed-{seed}"
            entry["runs"][i] = _one(a, seed, d, settings, base, layout, real_items, syn_items, problems,
                                    f"[{k}/{total}] {a.name} seed {seed}", log, progress)
            entry["summary"] = arm_summary(entry["runs"])
            probe["differences"] = differences(probe["arms"])
            write_probe(out, probe)
    probe["status"] = "complete"
    probe["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    png = plot(probe, out / "probe.png")
    probe["plot"] = png.name if png else None
    write_probe(out, probe)
    return probe


def _one(a: Arm, seed: int, d: Path, settings: ProbeSettings, base: Path, layout: str, real_items, syn_items,
         problems, label: str, log, progress: bool) -> dict:
    from generator.probe.evaluate import evaluate_model
    from generator.probe.train import train_arm

    res_file = d / RESULT_NAME
    if res_file.is_file():
        res = json.loads(res_file.read_text())
        if res.get("fingerprint") == settings.fingerprint():
            log(f"{label}: done earlier")
            return res["run"]
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = train_arm(a.rows, layout, settings, seed, base, d, label=label, progress=progress)
    t1 = time.perf_counter()
    if train.get("resumed_from_step"):
        log(f"{label}: resumed from checkpoint-{train['resumed_from_step']}")
    ev = evaluate_model(d / "final", settings, layout, real_items, syn_items, problems, seed)
    t2 = time.perf_counter()
    if not settings.keep_models:
        shutil.rmtree(d / "final", ignore_errors=True)
    run = {"seed": seed, "status": "done", "metrics": flat_metrics(train, ev), "train": train, "eval": ev,
           "wall_s": {"train": round(t1 - t0, 3), "eval": round(t2 - t1, 3), "total": round(t2 - t0, 3)},
           "model_dir": str(d / "final") if settings.keep_models else None}
    res_file.write_text(json.dumps({"fingerprint": settings.fingerprint(), "run": run}, indent=2))
    m = run["metrics"]
    log(f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()) + f" ({run['wall_s']['total']:.0f} s)")
    return run
