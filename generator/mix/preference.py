"""`synthgen mix --layout preference`: DPO-style rows (prompt, chosen, rejected) from pipeline runs
whose judge compared two answers (`kind: judge` with `compare: [A, B]`, docs/pipelines.md)."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from generator.core.errors import SynthgenError
from generator.core.files import write_json_atomic, write_parquet_atomic, write_text_atomic
from generator.core.run_layout import read_generation_files, read_manifest, require_generation_files


def _compare_judge(run: Path) -> tuple[str, list[str]]:
    manifest = read_manifest(run)
    stages = (manifest.get("spec") or {}).get("stages") or []
    judges = [s for s in stages if s.get("kind") == "judge" and s.get("compare")]
    if len(judges) != 1:
        raise SynthgenError(f"{run}: --layout preference needs a run whose spec has exactly one judge stage with "
                            f"`compare: [A, B]` (found {len(judges)}); see specs/preference.yaml")
    kinds = {s.get("name"): s.get("kind") for s in stages}
    dialogue = [c for c in judges[0]["compare"] if kinds.get(c) in ("conversation", "agent")]
    if dialogue:
        raise SynthgenError(f"{run}: judge '{judges[0]['name']}' compares conversations ({', '.join(dialogue)}); "
                            f"--layout preference writes single answers: read its `chosen`/`rejected` columns "
                            f"(the conversations, JSON) from the run")
    return judges[0]["name"], list(judges[0]["compare"])


def preference_rows(run: Path) -> tuple[pl.DataFrame, dict[str, int]]:
    """The run's final `ok` records with a verdict, and how many rows were skipped, by reason."""
    judge, (first, _) = _compare_judge(run)
    require_generation_files(run)
    df = read_generation_files(run)
    final = df.filter(pl.col("final"))
    skipped = {"not final (a rejected attempt)": df.height - final.height}
    ok = final.filter(pl.col("status") == "ok")
    skipped["status not ok"] = final.height - ok.height
    have = ok.filter(pl.col(f"{judge}.chosen").is_not_null() & pl.col(f"{judge}.rejected").is_not_null())
    skipped["no verdict"] = ok.height - have.height
    rows = have.select(pl.col("id"), pl.col(f"{first}.prompt").alias("prompt"),
                       pl.col(f"{judge}.chosen").alias("chosen"), pl.col(f"{judge}.rejected").alias("rejected"))
    return rows.with_columns(pl.lit(run.name).alias("run")), {k: v for k, v in skipped.items() if v}


def write_preference(runs: list[Path], out: Path, fmt: str = "jsonl") -> dict:
    """Write `preference.jsonl` (or .parquet) and `preference_manifest.json` into `out`."""
    if fmt not in ("jsonl", "parquet"):
        raise SynthgenError(f"--layout preference writes jsonl or parquet, not {fmt}")
    frames, sources = [], []
    for run in runs:
        rows, skipped = preference_rows(run)
        frames.append(rows)
        sources.append({"run": str(run), "rows": rows.height, "skipped": skipped})
    frame = pl.concat(frames) if frames else pl.DataFrame()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"preference.{fmt}"
    if fmt == "parquet":
        write_parquet_atomic(frame, path)
    else:
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in frame.to_dicts()))
    manifest = {"layout": "preference", "file": path.name, "rows": frame.height, "sources": sources}
    write_json_atomic(out / "preference_manifest.json", manifest)
    return manifest
