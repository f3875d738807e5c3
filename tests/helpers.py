"""Small spec texts shared by tests that run a real engine, server or cluster."""
from __future__ import annotations

S3_BUCKET = "synthgen-test-bucket"  # the `s3` fixture's bucket ("bucket" in the name: a missing file is not a missing bucket)

SMALL_TOPICS = """\
topics:
  - items:
      - {topic: Arithmetic, subtopic: Adding two-digit numbers, keywords: [carrying, tens], level: grade 2}
      - {topic: Money, subtopic: Making change, keywords: [coins, change], level: grade 3}
      - {topic: Measurement, subtopic: Telling time, keywords: [hours, minutes], level: grade 2}
"""


def small_spec(name: str, seed: int, max_tokens: int, run: str, models: str = "",
               generations_per_topic: int = 4) -> str:
    """Three inline math topics x `generations_per_topic`, one persona template (12 records).

    The template writes free text, so even the tiny `max_tokens` these tests use give every record
    a completion to compare; the structured templates' answers would all be cut off."""
    return (f"name: {name}\nseed: {seed}\n" + SMALL_TOPICS +
            f"generations_per_topic: {generations_per_topic}\n"
            "personas: {file: core, sample: 10}\n"
            "templates:\n  - template: pipeline/math_problem\n"
            + (f"models:\n  - {models}\n" if models else "")
            + f"sampling: {{temperature: 0.8, top_p: 0.95, max_tokens: {max_tokens}}}\n"
            f"run: {run}\n")


def skip_or_fail(reason: str, module_level: bool = False) -> None:
    """Skip locally; under CI=true fail instead, so CI cannot pass without running the test."""
    import os

    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing dependency or data set is a failure)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def importorskip_ci(name: str):
    """`pytest.importorskip`, except that under CI=true a missing module fails the test."""
    import importlib
    import os

    import pytest

    if os.environ.get("CI") == "true":
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"{name} is not importable ({exc}); CI=true needs every dependency", pytrace=False)
    return pytest.importorskip(name)


def salvaged_keys(run_dir) -> set[str]:
    """Keys a resume salvaged from a killed process's local copy (answered before the kill, but
    not yet published then): `answers/*-salvage*.parquet`, published by the next opener."""
    from generator.core.run_layout import answer_files, read_answer_file
    from generator.core.storage import name_of

    return {k for f in answer_files(run_dir) if "-salvage" in name_of(f)
            for k in read_answer_file(f, ["key"])["key"].to_list()}


def cache_keys(run_dir) -> set[str]:
    """Keys of the answers published into a run folder (empty before the first publish)."""
    from generator.core.run_layout import read_answers

    frame = read_answers(run_dir, ["key"])
    return set() if frame is None else set(frame["key"].to_list())


def kill_when(proc, ready, log_path, timeout: float, poll: float = 0.05) -> None:
    """Wait until `ready()` holds while `proc` (started with start_new_session=True) still runs, then
    SIGKILL its whole process group: a run killed mid-way, at a point the test chose."""
    import os
    import signal
    import time
    from pathlib import Path

    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(poll)
        assert proc.poll() is None, f"the run ended before it was killed:\n{Path(log_path).read_text()[-2000:]}"
        assert time.time() < deadline, f"not ready to be killed in {timeout:.0f}s:\n{Path(log_path).read_text()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
