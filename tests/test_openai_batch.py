"""`backend: openai_batch`: file limits, output parsing, resume against a batch server on 127.0.0.1,
and (slow) the local runner through vLLM's run_batch entrypoint against the offline backend."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from batch_server import BatchServer
from generator.core.backend import Request, Sampling
from generator.engine.backends.openai_batch import OpenAIBatchBackend, parse_output_line, split_lines
from generator.core.errors import BackendError
from helpers import importorskip_ci

ROOT = Path(__file__).resolve().parents[1]


def _spec(proj: Path, model_lines: str, name: str = "batch") -> Path:
    text = (proj / "spec.yaml").read_text()
    head, _, tail = text.partition("models:\n  - name: smollm2-135m\n")
    path = proj / f"{name}.yaml"
    path.write_text(head + "models:\n  - name: smollm2-135m\n" + model_lines + tail)
    return path


def _req(i: int) -> Request:
    return Request(id=f"r{i}#1", messages=({"role": "user", "content": f"hi {i}"},),
                   sampling=Sampling(max_tokens=8, seed=i))


# ---------------------------------------------------------------- fast
def test_split_respects_request_and_byte_limits():
    lines = [b"x" * 10 + b"\n" for _ in range(25)]
    parts = split_lines(lines, max_requests=10, max_bytes=10_000)
    assert [len(p) for p in parts] == [10, 10, 5]
    parts = split_lines(lines, max_requests=100, max_bytes=50)  # 11 bytes a line: 4 lines per file
    assert all(sum(map(len, p)) <= 50 for p in parts) and sum(map(len, parts)) == 25 and len(parts[0]) == 4
    with pytest.raises(BackendError):
        split_lines([b"y" * 100], max_bytes=50)


def test_output_lines_become_results_and_errors():
    ok = parse_output_line(json.dumps({"custom_id": "a#1", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2}}}}))
    assert (ok.id, ok.text, ok.finish_reason, ok.prompt_tokens, ok.completion_tokens) == ("a#1", "hi", "length", 4, 2)
    bad = parse_output_line(json.dumps({"custom_id": "b#1", "response": {"status_code": 400, "body": {
        "error": {"message": "too long"}}}}))
    assert bad.finish_reason == "error" and "HTTP 400" in bad.error and "too long" in bad.error


def test_many_requests_split_into_parts_and_all_come_back(tmp_path):
    server = BatchServer(hold=False)
    try:
        b = OpenAIBatchBackend("m", server.url, run_dir=tmp_path, poll_s=0.05, max_requests=4)
        out = list(b.generate([_req(i) for i in range(10)]))
        assert sorted(r.id for r in out) == sorted(f"r{i}#1" for i in range(10))
        assert all(r.text == f"answer to {r.id}" and r.prompt_tokens == 10 for r in out)
        assert server.creations == 3 and server.uploads == 3
        # asked again (a resumed run whose cache lost the answers): downloaded answers are reused
        again = list(OpenAIBatchBackend("m", server.url, run_dir=tmp_path, poll_s=0.05).generate(
            [_req(i) for i in range(12)]))
        assert len(again) == 12 and server.creations == 4  # only r10, r11 went out
        lines = (tmp_path / "batches" / "m" / "part-00003.input.jsonl").read_text().splitlines()
        assert [json.loads(x)["custom_id"] for x in lines] == ["r10#1", "r11#1"]
    finally:
        server.close()


def test_killed_run_resumes_polling_without_resubmitting(proj, tmp_path):
    server = BatchServer(hold=True)
    spec = _spec(proj, f"    backend: openai_batch\n    base_url: {server.url}\n    batch_poll_s: 0.1\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "generator.cli", "run", str(spec), "--out", str(out), "--set", "run.retries=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while server.polls < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert server.creations == 1 and proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        [state] = list((out / "batches" / "smollm2-135m").glob("*.state.json"))
        assert json.loads(state.read_text())["batch_id"] == "batch-0"
        assert not list((out / "generations").glob("*.parquet"))

        server.release()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert server.creations == 1 and server.uploads == 1  # polled the same batch, paid once
        gens = pl.read_parquet(out / "generations" / "*.parquet")
        plan = pl.read_parquet(out / "plan.parquet")
        assert sorted(gens["id"]) == sorted(plan["id"]) and set(gens["status"]) == {"ok"}
        assert gens["completion_tokens"].sum() == 3 * gens.height
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["models"]["smollm2-135m"]["stats"]["parts_resumed"] == 1
    finally:
        server.close()


def test_failed_batch_gives_error_results_and_a_rerun_resubmits(tmp_path):
    server = BatchServer(hold=False, fail=True)
    try:
        out = list(OpenAIBatchBackend("m", server.url, run_dir=tmp_path, poll_s=0.05).generate([_req(0), _req(1)]))
        assert [r.finish_reason for r in out] == ["error", "error"]
        assert "ended failed" in out[0].error and "model not found" in out[0].error
        server.fail = False
        again = list(OpenAIBatchBackend("m", server.url, run_dir=tmp_path, poll_s=0.05).generate([_req(0), _req(1)]))
        assert [r.text for r in again] == ["answer to r0#1", "answer to r1#1"] and server.creations == 2
    finally:
        server.close()


def test_uploaded_part_without_saved_batch_id_finds_its_batch(tmp_path):
    """Killed between `POST /batches` and saving its answer: the batch is found by its input file."""
    from generator.engine.backends.batch_api import BatchClient

    server = BatchServer(hold=True)
    try:
        b = OpenAIBatchBackend("m", server.url, run_dir=tmp_path, poll_s=0.05)
        [part] = b._new_parts([_req(0)], 0)
        with BatchClient(b) as client:
            client.submit(part)
        assert server.creations == 1
        part.state.pop("batch_id")
        part.save()
        server.release()
        [res] = list(OpenAIBatchBackend("m", server.url, run_dir=tmp_path, poll_s=0.05).generate([_req(0)]))
        assert res.text == "answer to r0#1" and server.creations == 1 and server.uploads == 1
    finally:
        server.close()


def test_missing_api_key_is_one_line(monkeypatch):
    monkeypatch.delenv("SYNTHGEN_TEST_NO_KEY", raising=False)
    with pytest.raises(BackendError, match="SYNTHGEN_TEST_NO_KEY is not set"):
        OpenAIBatchBackend("m", "http://127.0.0.1:9/v1", api_key_env="SYNTHGEN_TEST_NO_KEY")


# ---------------------------------------------------------------- slow: vLLM run_batch
@pytest.mark.slow
def test_local_runner_matches_offline_backend(proj, tmp_path, shared_backend_factory):
    importorskip_ci("vllm")
    from generator.engine.executors.local import LocalExecutor
    from generator.runs import run_spec
    from generator.config.spec import load_spec

    # one shard: vLLM's run_batch loads the model once per batch file (~1 min on 2 cores)
    sets = {"sampling.max_tokens": "24", "run.shard_size": "6"}
    base = load_spec(proj / "spec.yaml", sets)
    offline = run_spec(base, out=tmp_path / "offline", limit=6,
                       executor=LocalExecutor(backend_factory=shared_backend_factory), score=False)
    spec = load_spec(_spec(proj, "    backend: openai_batch\n    batch_runner: local\n"
                                 "    engine: {max_model_len: 2048}\n"), sets)
    batch = run_spec(spec, out=tmp_path / "batch", limit=6, score=False)
    a = pl.read_parquet(tmp_path / "offline" / "generations" / "*.parquet").sort("id")
    b = pl.read_parquet(tmp_path / "batch" / "generations" / "*.parquet").sort("id")
    assert a["id"].to_list() == b["id"].to_list() and a.height == 6
    assert a["status"].to_list() == b["status"].to_list()
    assert (b["prompt_tokens"] > 0).all() and batch.generated == offline.generated == 6
    assert list((tmp_path / "batch" / "batches" / "smollm2-135m").glob("part-*.output.jsonl"))
    # the batch run's usage is the tokens the entrypoint reported, and it exports like any run
    from generator.export import ExportOptions, Filters, compute_usage, export_run

    u = compute_usage(tmp_path / "batch")
    assert u["models"][0]["completion_tokens"] >= b["completion_tokens"].sum() > 0
    res = export_run(tmp_path / "batch", tmp_path / "ds", ExportOptions(filters=Filters(status=()), test_ratio=0.5))
    assert sum(res.splits.values()) == 6 and set(pl.read_parquet(tmp_path / "ds" / "data" / "*.parquet")["id"]) == set(b["id"])
