"""reasoning-gym tasks as seed rows and as a verify check (the `reasoning` extra).

reasoning-gym generates problems procedurally (a task name, a size, a seed and the task's own
settings give the same problems every time) and scores an answer with the task's own scorer.
`topics: [{seeds: {reasoning_gym: {task, size, seed, config}}}]` makes each problem a seed row
(`question`, `answer`, `metadata`); `check: reasoning_gym` scores a stage's answer against the
record's problem. The problem is regenerated from its task, seed and index to be scored (the
dataset is built once per source and process), so nothing of it has to survive a run folder.
"""
from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import json
import logging
from dataclasses import dataclass
from typing import Any

from generator.core.errors import SpecError, missing_extra
from generator.library.seed_data import SeedCell, sample_rows

log = logging.getLogger(__name__)
PACKAGE = "reasoning-gym"


def _module() -> Any:
    try:
        import reasoning_gym
    except ModuleNotFoundError as exc:
        raise (missing_extra(exc, "a reasoning_gym seed source or check") or exc) from None
    return reasoning_gym


def version() -> str | None:
    try:
        return md.version(PACKAGE)
    except md.PackageNotFoundError:
        return None


def tasks() -> list[str]:
    """Every task name the installed package offers."""
    _module()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@dataclass(frozen=True)
class GymCell(SeedCell):
    """A seed cell drawn from a reasoning-gym task: where its problem comes from, to score answers."""

    task: str = ""
    key: str = ""   # the source's task, size, seed and config as JSON (`dataset` builds it once)
    index: int = 0  # the problem's position in the dataset


def _key(task: str, size: int, seed: int, config: dict) -> str:
    return json.dumps({"task": task, "size": size, "seed": seed, "config": config}, sort_keys=True)


@functools.lru_cache(maxsize=32)
def dataset(key: str) -> Any:
    """The dataset a source names (its JSON key), built once per process."""
    rg = _module()
    k = json.loads(key)
    return rg.create_dataset(k["task"], size=k["size"], seed=k["seed"], **k["config"])


def check_task(task: str, config: dict) -> None:
    """A ValueError naming the fix when the task or its settings are not reasoning-gym's."""
    names = tasks()
    if task not in names:
        near = difflib.get_close_matches(task, names, n=3)
        hint = f"did you mean {', '.join(near)}?" if near else f"{len(names)} tasks, e.g. {', '.join(names[:6])}"
        raise ValueError(f"reasoning_gym has no task '{task}' ({hint})")
    try:
        dataset(_key(task, 1, 0, config))
    except (TypeError, ValueError, AssertionError) as exc:  # the task's config class refused a setting
        raise ValueError(f"reasoning_gym task '{task}' refuses config {json.dumps(config)}: {exc}") from None


def _plain(value: Any) -> Any:
    """JSON-shaped (some tasks keep tuples or numpy values in their metadata): templates and rows read it."""
    return json.loads(json.dumps(value, default=str))


def gym_cells(src: Any, seed: int, salt: Any) -> list[GymCell]:
    """Cells for one `seeds: {reasoning_gym: ...}` topics source (a `SeedTopics`)."""
    g = src.seeds.reasoning_gym
    task_seed = seed if g.seed is None else g.seed
    check_task(g.task, g.config)
    key = _key(g.task, g.size, task_seed, g.config)
    ds = dataset(key)
    rows: list[tuple[str, dict]] = []
    for i in range(g.size):
        entry = ds[i]
        rows.append((f"{g.task}:{task_seed}:{i}", {"question": entry["question"], "answer": str(entry["answer"]),
                                                   "metadata": _plain(entry.get("metadata") or {}), "index": i}))
    columns = src.columns or ["question", "answer", "metadata"]
    for opt in ([src.stratify] if src.stratify else []) + list(src.columns or []):
        if opt not in rows[0][1]:
            raise SpecError(f"reasoning_gym rows have no column '{opt}' (columns: question, answer, metadata)")
    if src.id_column:
        raise SpecError("reasoning_gym rows are named by task, seed and index; remove `id_column`")
    cells: list[GymCell] = []
    seen: dict[str, int] = {}
    for rid, r in sample_rows(rows, src.sample, src.replace, src.stratify, seed, salt):
        k = seen.get(rid, 0)
        seen[rid] = k + 1
        topic = str(r.get(src.stratify)) if src.stratify else g.task
        cells.append(GymCell(id=f"seed:{rid}" + (f"~{k}" if k else ""), topic=topic, subtopic=rid, keywords=(),
                             level=None, weight=src.weight, source="seeds", seed_id=rid,
                             row=tuple((c, r[c]) for c in columns), task=g.task, key=key, index=r["index"]))
    return cells


@dataclass
class Score:
    score: float
    expected: str
    reason: str = ""


def score(cell: Any, answer: str | None) -> Score:
    """The task's own score (0-1) of `answer` for the cell's problem."""
    if not isinstance(cell, GymCell):
        return Score(0.0, "", "the record's topic cell is no reasoning_gym problem (check: reasoning_gym needs "
                              "`seeds: {reasoning_gym: ...}`)")
    ds = dataset(cell.key)
    entry = ds[cell.index]
    try:
        value = float(ds.score_answer(answer, entry))
    except Exception as exc:  # noqa: BLE001 - a scorer that breaks on an odd answer fails that answer, not the run
        log.debug("reasoning_gym %s scorer raised on %r: %s", cell.task, (answer or "")[:80], exc)
        return Score(0.0, str(entry["answer"]), f"the {cell.task} scorer raised {type(exc).__name__}: {exc}"[:200])
    return Score(value, str(entry["answer"]))


def provenance(src: Any, spec_seed: int) -> dict:
    """The manifest's seed-data entry for a reasoning-gym source."""
    g = src.seeds.reasoning_gym
    seed = spec_seed if g.seed is None else g.seed
    out = {"source": src.label, "reasoning_gym": {"task": g.task, "size": g.size, "seed": seed,
                                                  "config": g.config, "version": version()},
           "sample": src.sample, "license": None}
    try:
        meta = md.metadata(PACKAGE)
        lic = meta.get("License-Expression") or meta.get("License")
        if lic:
            out.update(license=lic.strip().lower(), license_from=f"the {PACKAGE} package's metadata")
    except md.PackageNotFoundError:
        log.warning("%s is not installed: its licence is not recorded", PACKAGE)
    if src.license:
        out.update(license=src.license, license_from="the spec")
    return out


__all__ = ["GymCell", "Score", "check_task", "dataset", "gym_cells", "provenance", "score",
           "tasks", "version"]
