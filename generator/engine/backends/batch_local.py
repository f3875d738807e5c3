"""`batch_runner: local`: batch files through vLLM's own entrypoint, with the offline backend's settings.

`python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model PATH` loads the model once per
file and answers every line; the engine gets the same defaults as `vllm_offline` (on CPU: KV-cache
bytes, eager mode, chunked prefill off with a token budget of at least max_model_len, so seeded
requests are safe; compact JSON for structured output), so a run matches the offline backend's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from generator.core.errors import BackendError
from generator.core.model_aliases import resolve_model
from generator.engine.backends.vllm_args import ENGINE_SEED


def engine_args(engine: dict[str, Any]) -> list[str]:
    """vLLM CLI flags for the offline backend's engine keyword arguments."""
    from generator.engine.backends.vllm_args import cli_flags, engine_kwargs
    from generator.engine.backends.vllm_offline import cpu_dtype, on_gpu

    gpu = on_gpu()
    return cli_flags(engine_kwargs(engine, gpu, "auto" if gpu else cpu_dtype()))


def command(model: str, engine: dict[str, Any], inp: Path, out: Path) -> list[str]:
    path = resolve_model(model)
    return [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(inp), "-o", str(out),
            "--model", path, "--served-model-name", model, "--seed", str(ENGINE_SEED), *engine_args(engine)]


def run_local(model: str, engine: dict[str, Any], inp: Path, out: Path) -> None:
    """Answer every request of `inp` into `out` (written whole, or not at all)."""
    tmp = out.with_name(f".{out.name}.tmp")
    log = out.with_suffix(".log")
    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
           "TQDM_DISABLE": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command(model, engine, inp, tmp), stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait()
        except BaseException:  # interrupted: do not leave an engine running
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0 or not tmp.exists():
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise BackendError(f"backend openai_batch (local): vLLM run_batch exited with {rc} on {inp.name}: "
                           f"{tail[0][:300]}; full log: {log}")
    tmp.replace(out)
