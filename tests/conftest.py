"""Shared fixtures. One real vLLM engine per test session (it takes ~30 s to start on 2 cores)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import S3_BUCKET, importorskip_ci, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A writable copy of the small test project (spec, templates, topics, personas)."""
    dst = tmp_path / "proj"
    shutil.copytree(FIXTURES / "proj", dst)
    return dst


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        skip_or_fail("../shared/data is not beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vllm_backend():
    """The embedded model in a real offline vLLM engine, shared by every slow test."""
    importorskip_ci("vllm")
    from generator.engine.backends.vllm_offline import VLLMOfflineBackend

    backend = VLLMOfflineBackend("smollm2-135m", engine={"max_model_len": 2048})
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def shared_backend_factory(vllm_backend):
    """A backend factory for executors that hands out the session's engine (never closes it)."""
    from generator.core.backend import Borrowed

    def factory(model_cfg, **_):
        assert model_cfg.name == vllm_backend.model, f"tests share one engine ({vllm_backend.model})"
        return Borrowed(vllm_backend)

    return factory


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the session's Ray tests (each start costs 10-20 s on 2 cores).

    A RayExecutor finds it initialized and leaves it running. Each actor it starts gets the
    forwarded environment (SYNTHGEN_*, VLLM_*, ...) as it is when the actor starts, so a test may
    set variables for its actors after the cluster is up."""
    ray = importorskip_ci("ray")
    from generator.engine.executors.ray import forwarded_env

    env = forwarded_env()
    ray.init(num_cpus=max(os.cpu_count() or 1, 4), include_dashboard=False,
             runtime_env={"env_vars": env} if env else None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """Base URL (…/v1) of the embedded model behind vLLM's OpenAI server, default flags."""
    if os.environ.get("SYNTHGEN_TEST_OPENAI_URL"):
        yield os.environ["SYNTHGEN_TEST_OPENAI_URL"].rstrip("/")
        return
    importorskip_ci("vllm")
    from vllm_server import free_port, start_vllm_server, stop_server, wait_healthy

    port = free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    proc = start_vllm_server(port, log)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_server(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server with one bucket; the AWS_* variables point this process (and the CLI
    subprocesses, which inherit them) at it, with dummy credentials."""
    importorskip_ci("s3fs")
    importorskip_ci("moto")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "moto server did not start"
                time.sleep(0.1)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(S3_BUCKET)
        try:
            yield fs
        finally:
            proc.terminate()
            proc.wait(10)
