"""Faults end in one clear line and keep what is done: disk full, a model that fails to load,
an unreachable server; and `synthgen run` exits 2 with that line, no traceback."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from generator.testing.fake import FakeBackend
from generator.core.errors import BackendError, ModelError, RunFolderError
from generator.engine.executors.local import LocalExecutor
from generator.runs import run_spec
from generator.config.spec import load_spec
from helpers import importorskip_ci

ROOT = Path(__file__).resolve().parents[1]
SYNTHGEN = Path(sys.executable).with_name("synthgen")


def _closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_disk_full_keeps_the_first_shard_and_rerun_completes(proj, tmp_path, monkeypatch):
    spec = load_spec(proj / "spec.yaml")
    run = tmp_path / "run"
    real = pl.DataFrame.write_parquet
    shard_writes = {"n": 0}

    def write_parquet(self, file, *args, **kwargs):
        if "generations" in str(file):
            shard_writes["n"] += 1
            if shard_writes["n"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    with pytest.raises(RunFolderError) as err:
        run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: FakeBackend()))
    msg = str(err.value)
    assert "disk full" in msg and "free space and rerun the same command" in msg and "\n" not in msg
    shards = sorted(p.name for p in (run / "generations").iterdir())
    assert shards == ["part-001-00000.parquet"]  # the first shard is kept, no temp file left
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real)

    again = FakeBackend()
    res = run_spec(spec, out=run, executor=LocalExecutor(backend_factory=lambda c, **_: again))
    df = pl.read_parquet(run / "generations" / "*.parquet")
    assert res.generated == 10 and df["id"].n_unique() == 10
    assert len(again.calls) < 10 - 4 + 1  # the landed shard's 4 records were not asked again


def test_unreachable_server_names_the_url():
    from generator.engine.backends.openai_http import OpenAIBackend

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(BackendError) as err:
        OpenAIBackend("m", url, max_retries=2, backoff=0.01)
    msg = str(err.value)
    assert url in msg and "cannot reach" in msg and "after 3 attempts" in msg and "\n" not in msg
    b = OpenAIBackend("m", url, max_retries=1, backoff=0.01, check=False)
    from generator.core.backend import Request

    with pytest.raises(BackendError, match="cannot reach http://127.0.0.1"):
        list(b.generate([Request(id="a#1", messages=({"role": "user", "content": "hi"},))]))


def _cli(tmp_path: Path, spec_text: str, **env: str) -> subprocess.CompletedProcess:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    return subprocess.run([str(SYNTHGEN), "run", str(spec), "--out", str(tmp_path / "run")], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


SPEC = """
name: faults
topics:
  - items: [Fractions, Decimals]
templates:
  - template: math/word_problem
personas: {file: core, sample: 10}
models:
  - MODEL
sampling: {max_tokens: 16}
"""


def test_cli_unreachable_server_exits_2_with_one_line(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    proc = _cli(tmp_path, SPEC.replace("MODEL", f"{{name: m, backend: openai, base_url: '{url}'}}"),
                SYNTHGEN_HTTP_RETRIES="1")
    line = _one_error_line(proc)
    assert url in line and "cannot reach" in line


@pytest.mark.slow
def test_bogus_model_is_one_model_error(tmp_path):
    importorskip_ci("vllm")
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend

    bogus = tmp_path / "no-such-model"
    bogus.mkdir()
    with pytest.raises(ModelError) as err:
        VLLMOfflineBackend(str(bogus))
    assert str(bogus) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_bogus_model_exits_2_with_one_line(tmp_path):
    bogus = tmp_path / "no-such-model"
    bogus.mkdir()
    proc = _cli(tmp_path, SPEC.replace("MODEL", f"{{name: '{bogus}'}}"), HF_HUB_OFFLINE="1")
    line = _one_error_line(proc)
    assert str(bogus) in line and "failed to load" in line
    assert (tmp_path / "run" / "plan.parquet").exists()  # the plan is kept for the rerun
