"""Writes tests/fixtures/golden_rows/<spec>.parquet: the rows each shipped single-stage spec gives
on `golden_backend.GoldenBackend` (limit LIMIT). Run only when the row contract changes on purpose:
`python tests/make_golden_rows.py`."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_backend import LIMIT, SPECS, GoldenBackend  # noqa: E402


def golden_rows(name: str, out: Path):
    import polars as pl

    from generator import load_spec
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec

    base, _, retries = name.partition("@r")  # "math@r0": the spec with `run.retries` 0
    spec = load_spec(HERE.parent / "specs" / f"{base}.yaml", overrides={"run.retries": retries} if retries else None)
    run_spec(spec, out=out, limit=LIMIT, executor=LocalExecutor(backend_factory=lambda c, **_: GoldenBackend(c.name)),
             score=False)
    return pl.read_parquet(sorted((out / "generations").glob("*.parquet"))).sort("id")


if __name__ == "__main__":
    dst = HERE / "fixtures" / "golden_rows"
    dst.mkdir(parents=True, exist_ok=True)
    for name in SPECS:
        with tempfile.TemporaryDirectory() as tmp:
            frame = golden_rows(name, Path(tmp) / name)
        frame.write_parquet(dst / f"{name}.parquet")
        print(name, frame.height, dict(frame.group_by("status").len().iter_rows()))
