"""Streaming `synthgen mix`: the same bytes as the reference mixes, and memory bounded by the shard size.

The reference (tests/fixtures/mix/reference.json, see tests/mix_cases.py) was recorded from the
in-memory implementation; every case is rebuilt here with a cold and then a warm token cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mix_cases  # noqa: E402

REF = json.loads(mix_cases.REFERENCE.read_text())
ROOT = Path(__file__).resolve().parents[1]


def need_data() -> None:
    if not (mix_cases.GSM8K / "train.jsonl").is_file():
        msg = f"{mix_cases.GSM8K} not found"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need_data()
    w = tmp_path_factory.mktemp("mixref")
    mix_cases.make_inputs(w / "in")
    return w


def _same_files(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    same_libs = mix_cases.versions() == REF["versions"]
    for name, d in want.items():
        bytes_bound = same_libs or not name.endswith((".parquet", ".zst"))
        key = "sha256" if bytes_bound else "content"
        assert got[name][key] == d[key], f"{name} differs from the reference ({key})"


@pytest.mark.parametrize("name", sorted(REF["cases"]))
def test_reference_output_unchanged(work, name):
    cfg = mix_cases.cases(mix_cases.make_paths(work / "in"))[name]
    want = REF["cases"][name]
    cold = mix_cases.run_case(name, cfg, work, work / "out" / name)
    _same_files(cold["files"], want["files"])
    assert cold["manifest"] == want["manifest"]
    # again from the token cache: same shards, nothing counted
    warm = mix_cases.run_case(name, cfg, work, work / "warm" / name)
    _same_files(warm["files"], want["files"])
    tc, ref_tc = warm["manifest"]["token_count"], want["manifest"]["token_count"]
    assert tc["files_counted"] == 0 and tc["counted_this_run"] == 0
    assert tc["files_from_cache"] == ref_tc["files_counted"] + ref_tc["files_from_cache"]
    for k in ("files_counted", "counted_this_run", "files_from_cache"):
        tc[k] = ref_tc[k]
    assert warm["manifest"] == want["manifest"]
