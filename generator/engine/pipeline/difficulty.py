"""A `kind: difficulty` stage compiled into the stages it stands for, and its manifest section.

`difficulty: NAME` with one solver becomes
- `NAME_solve`: a generate stage of the solve template with `n: k` (the solver's tries),
- `NAME`: a verify stage checking every try (`keep: all_correct, min_correct: 0`: each verdict,
  the problem's `pass_rate`, the correct tries as rows; no record is rejected here),
- `NAME_band`: a filter keeping the problem when `NAME.pass_rate` lies in the band (the stage's
  `on_reject` is the filter's).
With `solvers: [strong, weak]` the weak solver's tries are `NAME_weak_solve`, checked by `NAME_weak`,
and the band filter keeps a problem when the strong solver's pass rate reaches `strong_min` and the
weak one's lies in the band (Autodata's rule: the strong solves it, the weak does not, at k = 1).
Every compiled stage keeps the difficulty stage's position in the spec, so errors name its line.
"""
from __future__ import annotations

from typing import Any

import polars as pl

from generator.config.stages import DifficultyStage, FilterStage, GenerateStage, Stage, VerifyStage


def names(d: DifficultyStage) -> dict[str, str]:
    """Role -> compiled stage name."""
    out = {"solve": f"{d.name}_solve", "check": d.name, "band": f"{d.name}_band"}
    if d.solvers:
        out.update(weak_solve=f"{d.name}_weak_solve", weak_check=f"{d.name}_weak")
    return out


def band_expr(d: DifficultyStage) -> str:
    lo, hi = d.keep
    n = names(d)
    rate = f"{n['weak_check']}.pass_rate" if d.solvers else f"{n['check']}.pass_rate"
    expr = f"{rate} >= {lo!r} and {rate} <= {hi!r}"
    return f"{n['check']}.pass_rate >= {d.strong_min!r} and {expr}" if d.solvers else expr


def expand(d: DifficultyStage) -> list[Stage]:
    """The stages a difficulty stage stands for (module docstring), in run order."""
    n = names(d)

    def tries(name: str, model: str | None, after: list[str]) -> GenerateStage:
        return GenerateStage(kind="generate", name=name, template=d.template, model=model, n=d.k,
                             sampling=d.sampling, max_reasoning_tokens=d.max_reasoning_tokens, after=after)

    def check(name: str, target: str) -> VerifyStage:
        fields: dict[str, Any] = {"extract": d.extract}
        if d.check == "reference":
            fields["reference"] = d.reference
        else:
            fields["min_score"] = d.min_score
        return VerifyStage(kind="verify", name=name, check=d.check, target=target, keep="all_correct",
                           min_correct=0, **fields)

    out: list[Stage] = [tries(n["solve"], d.model, list(d.after)), check(n["check"], n["solve"])]
    if d.solvers:
        out += [tries(n["weak_solve"], d.solvers[1], list(d.after)), check(n["weak_check"], n["weak_solve"])]
    out.append(FilterStage(kind="filter", name=n["band"], expr=band_expr(d), on_reject=d.on_reject))
    return out


def summary(frame: pl.DataFrame, origins: dict[str, DifficultyStage]) -> dict[str, Any]:
    """The manifest's `difficulty` section: per difficulty stage its band, solvers and k, and per
    solver how many problems (records, their final row) had each pass rate, and how many were kept."""
    final = frame.filter(pl.col("final")) if "final" in frame.columns else frame
    out: dict[str, Any] = {}
    for name, d in origins.items():
        n = names(d)
        checks = {n["check"]: d.model, **({n["weak_check"]: d.solvers[1]} if d.solvers else {})}
        entry: dict[str, Any] = {"band": list(d.keep), "k": d.k, "check": d.check, "filter": n["band"],
                                 "solvers": {c: m or "(the record's model)" for c, m in checks.items()}}
        if d.solvers:
            entry["strong_min"] = d.strong_min
        rates: dict[str, dict[str, int]] = {}
        for c in checks:
            col = f"{c}.pass_rate"
            if col in final.columns:
                counts = final.select(pl.col(col).drop_nulls()).group_by(col).len().sort(col)
                rates[c] = {f"{r:g}": int(k) for r, k in counts.iter_rows()}
        entry["pass_rates"] = rates
        passed = f"{n['band']}.passed"
        entry["problems"] = sum(rates.get(n["check"], {}).values())
        entry["in_band"] = int(final[passed].fill_null(False).sum()) if passed in final.columns else 0
        out[name] = entry
    return out
