"""synthgen: declarative generation of diverse synthetic training data.

The Python API mirrors the CLI::

    from generator import load_spec, plan, run
    spec = load_spec("specs/math.yaml")
    records = plan(spec)            # list of Record, no model needed
    result = run(spec, limit=20)    # generates into spec.output (runs/<name>)
"""
from __future__ import annotations

from generator.core.version import __version__


def load_spec(path, overrides=None):
    from generator.config.spec import load_spec as _load

    return _load(path, overrides)


def plan(spec, limit=None):
    from generator.engine.planner import plan_spec

    return plan_spec(spec, limit=limit)[1]


def validate(spec):
    """Load every file the spec names and check every template; returns the resolved spec."""
    from generator.engine.planner import resolve_spec, validate as _validate
    from generator.engine.runner import compile_pipeline

    resolved = resolve_spec(spec)
    _validate(resolved)
    compile_pipeline(resolved)
    return resolved


def run(spec, out=None, limit=None, executor=None, progress=None, score=True, target=None, budget=None):
    """Generate what `spec` plans: one pass, the feedback loop when the spec has `rounds:`, or
    passes until a target is accepted when it has `target:` (or `target=N` is given).

    `budget`: limits on top of the spec's `budget:` (records, calls, tokens, cost, seconds).
    The run folder is locked for the whole run: a second run on it fails at once. What the run
    logs (its warnings, and INFO lines of its milestones) is appended to the folder's run.log."""
    from generator.core.errors import RunFolderError
    from generator.core.logs import run_log
    from generator.core.storage import is_url
    from generator.engine.run_folder import RunFolder

    if spec.rounds is not None and is_url(out):
        raise RunFolderError(f"--out {out}: a spec with `rounds:` runs into a local folder only; give a local "
                             f"--out, or drop `rounds:` to run one pass into the bucket")
    from generator.runs.spend import budget_of

    goal = spec.target
    if target is not None:
        from generator.config.target import TargetConfig

        goal = (goal or TargetConfig(accepted=target)).model_copy(update={"accepted": target})
    if goal is not None and spec.rounds is not None:
        raise RunFolderError("--target and `rounds:` do not combine yet: drop --target, or run a spec without "
                             "`rounds:`")
    if goal is not None and limit is not None:
        raise RunFolderError("--limit and a target do not combine: a target plans its own records; use "
                             "budget.records (or --budget-records) to cap them")
    spent = budget_of(spec, budget)
    folder = RunFolder(out or spec.output_dir())
    with folder.lock(), run_log(folder.path, before=folder.check_lock):
        if goal is not None:
            from generator.runs.target import run_target

            return run_target(spec, goal, spent, out=out, executor=executor, progress=progress, score=score)
        if spec.rounds is not None:
            from generator.feedback.rounds import run_rounds

            return run_rounds(spec, out=out, executor=executor, progress=progress, limit=limit, score=score,
                              budget=spent)
        from generator.runs import run_spec

        return run_spec(spec, out=out, limit=limit, executor=executor, progress=progress, score=score,
                        budget=spent)


__all__ = ["__version__", "load_spec", "plan", "validate", "run"]
